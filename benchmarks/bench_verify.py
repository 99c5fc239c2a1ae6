"""Time stage 1 on the shipped world: detection alone, and detection followed by verification of its counterfactuals.

Target (issue 17): verification adds at most 1x the detection time (a ratio verify / detect <= 1 meets it).
Detection is `detect` with the demo's settings (selection, saliency under both models, Δĝ, baselines) on every
distillation prompt of both families; verification builds the instruction-level span counterfactuals of the
selected rows (flags snapped to clauses) and re-asks both models on each (`verify_counterfactuals`, mode 'both').
The two are timed in interleaved rounds in one process, each detection into a fresh folder, so the machine's load
affects both alike. Prints per-round seconds, then a JSON line last. Run it alone: `python benchmarks/bench_verify.py`.
"""
import argparse
import json
import statistics
import tempfile
import time

import datasets
import torch
from transformers.utils import logging as hf_logging

from leaf_nb.demo import world_config
from leaf_nb.pruning import counterfactuals, verify_counterfactuals
from leaf_nb.saliency import detect
from leaf_nb.world import is_correct, load_world


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar(); hf_logging.set_verbosity_error(); datasets.disable_progress_bars()
    world = load_world()
    tok, teacher, student = world.tokenizer, world.teacher, world.student
    cfg, n_new = world_config(), world.config.max_new_tokens
    rows = {f: list(world.splits[f]["distill"]) for f in world.splits}
    times = {"detect": [], "verify": []}
    n_cands = 0
    for r in range(args.rounds):
        tmp = tempfile.mkdtemp()
        t0 = time.perf_counter()
        dets = {f: detect(teacher, student, tok, rows[f], f"{tmp}/{f}", cfg.detect, check=is_correct, progress=False) for f in rows}
        t1 = time.perf_counter()
        n_cands = 0
        for f in rows:
            chosen = [x for x, d in zip(rows[f], dets[f]) if d["status"] == "flagged"]
            cands, _ = counterfactuals(chosen, dets[f], "span", unit=cfg.unit)
            n_cands += len(cands) - len(chosen)
            verify_counterfactuals(teacher, student, tok, cands, is_correct, cfg.verify, n_new, cfg.gen_batch_size)
        t2 = time.perf_counter()
        times["detect"].append(t1 - t0); times["verify"].append(t2 - t1)
        print(f"round {r}: detect {t1 - t0:.2f} s, verify {t2 - t1:.2f} s ({n_cands} candidates), ratio {(t2 - t1) / (t1 - t0):.3f}")
    ratios = [v / d for d, v in zip(times["detect"], times["verify"])]
    med = statistics.median(ratios)
    print(json.dumps({"bench": "verify", "rows": sum(map(len, rows.values())), "candidates": n_cands,
                      "detect_s_median": round(statistics.median(times["detect"]), 2),
                      "verify_s_median": round(statistics.median(times["verify"]), 2),
                      "ratio_verify_to_detect_median": round(med, 3), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                      "meets_target_1x": med <= 1.0}))


if __name__ == "__main__":
    main()
