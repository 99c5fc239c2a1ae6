"""Time the causal world: `build_world()` for both families from scratch (target <= 300 s on a 2-core CPU)
and `load_world()` of the shipped world (target <= 5 s; reported with and without the one-time import of
torch and transformers, which a notebook pays anyway), measured in one run.

    python benchmarks/bench_world.py [--seed 0] [--out DIR] [--threads 2]

With --out, the built world is saved there (this is how leaf_nb/data/world is made: --seed 0 --out leaf_nb/data/world).
The last line printed is JSON."""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-build", action="store_true")
    a = p.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from leaf_nb.world import WorldConfig, build_world, load_world
    res = {"threads": a.threads, "seed": a.seed}
    if not a.skip_build:
        t = time.perf_counter()
        w = build_world(WorldConfig(seed=a.seed), out_dir=a.out, progress=False, evaluate=False)
        res["build_s"] = round(time.perf_counter() - t, 1)
        res["build_target_s"] = 300
        t = time.perf_counter()
        from leaf_nb.world import evaluate_world
        w.metrics = evaluate_world(w)
        res["evaluate_s"] = round(time.perf_counter() - t, 1)
        if a.out:
            from leaf_nb.world import save_world
            save_world(w, a.out)
        res["metrics"] = w.metrics
    # loading, in a fresh process: imports (torch, transformers) and the load itself, timed apart
    import subprocess, sys
    code = ("import time; t = time.perf_counter(); import torch; torch.set_num_threads(%d); "
            "from leaf_nb.world import load_world; t1 = time.perf_counter(); load_world(); t2 = time.perf_counter(); "
            "print(round(t1 - t, 2), round(t2 - t1, 2))" % a.threads)
    imp, load = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    res.update(import_s=imp, load_s=load, load_with_imports_s=round(imp + load, 2), load_target_s=5)
    if "build_s" in res: res["build_ratio_to_target"] = round(res["build_s"] / 300, 2)
    res["load_ratio_to_target"] = round(res["load_s"] / 5, 2)
    res["load_with_imports_ratio_to_target"] = round((imp + load) / 5, 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
