"""Stage 1 (detection, then the teacher cache) on the shipped world with 1 process and with 2 processes under
`accelerate launch`, side by side in one run: rows per second and their ratio.

Each process uses one thread, so the 2-process run uses the 2 cores by running two shards at once, where the
1-process run uses them through torch's intra-op threads (set to 2). Run it alone: `python benchmarks/bench_stage1_parallel.py`.
"""
import argparse, json, os, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

WORKER = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(int(sys.argv[3]))
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    from leaf_nb.world import load_world, is_correct
    from leaf_nb.saliency import DetectConfig, detect
    from leaf_nb.distill import teacher_cache
    out, n = sys.argv[1], int(sys.argv[2])
    w = load_world()
    rows = [r for f in ("math", "code") for r in w.splits[f]["distill"]][:n]
    detect(w.teacher, w.student, w.tokenizer, rows, out + "/detect", DetectConfig(shard_size=64), check=is_correct, progress=False)
    teacher_cache(w.teacher, w.tokenizer, rows, out + "/cache", k=64, shard_size=64, progress=False)
''')


def run(script: Path, out: Path, n: int, procs: int) -> float:
    "Wall seconds of stage 1 over `n` rows with `procs` processes (model loading included)."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1" if procs > 1 else "2", "TOKENIZERS_PARALLELISM": "false"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={procs}", "--num_machines=1",
              "--mixed_precision=no", "--dynamo_backend=no"] if procs > 1 else [sys.executable]
    t0 = time.perf_counter()
    subprocess.run([*launch, str(script), str(out), str(n), "1" if procs > 1 else "2"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000, help="distillation rows of the world (both families; default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each setting (default: %(default)s)")
    args = p.parse_args()
    d = Path(tempfile.mkdtemp())
    (d / "worker.py").write_text(WORKER)
    times = {1: [], 2: []}
    for r in range(args.repeats):
        for procs in (1, 2):
            times[procs].append(run(d / "worker.py", d / f"p{procs}-r{r}", args.rows, procs))
            print(f"{procs} process(es), run {r}: {times[procs][-1]:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({"bench": "stage1_parallel", "rows": args.rows, "seconds_1proc": round(best[1], 1), "seconds_2proc": round(best[2], 1),
                      "rows_per_s_1proc": round(args.rows / best[1], 1), "rows_per_s_2proc": round(args.rows / best[2], 1),
                      "speedup_2_over_1": round(best[1] / best[2], 3)}))


if __name__ == "__main__":
    main()
