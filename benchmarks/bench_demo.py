"""`leaf_nb demo` as a user runs it: a fresh process, a fresh output folder, default settings.

Measures three things in one run:
- the wall time, against the target of <= 600 s on a 2-core CPU (a ratio <= 1 meets it);
- how often the progress bars move: every update of the terminal output (a bar redraws with a carriage return)
  is timestamped, and the longest silences are listed with the stage they fell in (target: none over 5 s);
- whether a bar that is not leaf_nb's own leaks in (transformers' "Loading weights", the GGUF converter).
Prints the per-stage seconds the demo logs, then a JSON line last. Run it alone: `python benchmarks/bench_demo.py`.
"""
import argparse, json, os, re, subprocess, sys, tempfile, time


def run_demo(out: str) -> tuple[float, list[tuple[float, str]]]:
    "Run the demo; return its wall time and every output update (seconds since start, text)."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "160"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "leaf_nb"), "demo", "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    events, buf = [], b""
    while chunk := os.read(proc.stdout.fileno(), 4096):
        now = time.perf_counter() - t0
        parts = re.split(rb"[\r\n]", buf + chunk)
        buf = parts.pop()
        events += [(now, s.decode("utf-8", "replace")) for s in parts if s.strip()]
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0: sys.exit("leaf_nb demo failed:\n" + "\n".join(t for _, t in events[-30:]))
    return wall, events


def silences(events, wall):
    "(seconds without an update, the stage it fell in, the last text before it), longest first."
    stage, out, last, before = "start", [], 0.0, "(start)"
    for t, text in events:
        out.append((t - last, stage, before[:90])); last, before = t, text
        m = re.search(r"experiment:.*\d+/\d+ \[[^\]]*?, ([^\],]+)\]", text)
        if m: stage = m[1].strip()
    out.append((wall - last, stage, before[:90]))
    return sorted(out, reverse=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="write the demo's folder here instead of a temporary one")
    p.add_argument("--limit", type=float, default=5.0, help="longest allowed silence, seconds (default: %(default)s)")
    args = p.parse_args()
    wall, events = run_demo(args.keep or os.path.join(tempfile.mkdtemp(), "demo"))
    stages = {m[1]: int(m[2]) for _, t in events if (m := re.match(r"^\[([\w.-]+)\] (\d+) s$", t))}
    groups = {}
    for name, s in stages.items(): groups[name.split("-")[0]] = groups.get(name.split("-")[0], 0) + s
    quiet = silences(events, wall)
    leaks = sorted({k for _, t in events for k in ("Loading weights", "GGUF", "de-quantizing") if k in t})
    print("seconds per stage kind:", groups)
    print("longest silences (s, stage, last output before it):")
    for g, s, line in quiet[:8]: print(f"  {g:6.1f}  {s:40s} {line!r}")
    over = [q for q in quiet if q[0] > args.limit]
    print(json.dumps({"wall_s": round(wall, 1), "ratio_to_600s": round(wall / 600, 3), "updates": len(events),
                      "longest_silence_s": round(quiet[0][0], 1), f"silences_over_{args.limit:g}s": len(over), "foreign_bars": leaks}))


if __name__ == "__main__":
    main()
