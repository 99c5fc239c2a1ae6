"Saliency and detection: resume after a crash (a killed subprocess), bad input, and a real model."
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from leaf_nb.world import is_correct
from leaf_nb.saliency import (DetectConfig, ThresholdRule, detect, input_saliency, load_detections, saliency_batch,
                              saliency_encoding)

WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from leaf_nb.world import is_correct, load_world
    from leaf_nb.saliency import detect, DetectConfig
    w = load_world()
    rows = list(w.splits["math"]["test"])[:36]
    detect(w.teacher, w.student, w.tokenizer, rows, sys.argv[1], DetectConfig(shard_size=4), check=is_correct, progress=False)
""")


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    from leaf_nb.world import load_world
    return load_world()


def _run(out_dir, kill_after_shards=None, timeout=300):
    "Run the worker; with `kill_after_shards`, SIGKILL it once that many shards exist (None: let it finish)."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", WORKER, str(out_dir)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None:
        if kill_after_shards is not None and len(list(out_dir.glob("shard-*.jsonl"))) >= kill_after_shards:
            p.send_signal(signal.SIGKILL); p.wait(); return "killed"
        if time.time() - t0 > timeout: p.kill(); raise TimeoutError("worker did not finish")
        time.sleep(0.02)
    assert p.returncode == 0, f"worker failed with {p.returncode}"
    return "finished"


def test_detect_resumes_after_kill(tmp_path, world):
    "A run killed at several points and restarted ends with exactly the rows of an uninterrupted run."
    ref = tmp_path / "ref"
    assert _run(ref) == "finished"
    expected = load_detections(ref).to_list()
    ids = [r["id"] for r in list(world.splits["math"]["test"])[:36]]
    assert [r["id"] for r in expected] == ids
    killed = tmp_path / "killed"
    outcomes = [_run(killed, kill_after_shards=k) for k in (0, 2, 5)]  # 0: killed while loading
    assert "killed" in outcomes
    n_before = len(list(killed.glob("shard-*.jsonl")))
    assert n_before < 9
    assert _run(killed) == "finished"
    got = load_detections(killed).to_list()
    assert [r["id"] for r in got] == ids  # no duplicated or missing rows
    assert got == expected


def test_partial_shard_file_is_ignored(tmp_path, world):
    "A temporary file left by a crash during a write is neither read nor trusted."
    rows = list(world.splits["math"]["test"])[:6]
    cfg = DetectConfig(shard_size=3, select=False)
    full = detect(world.teacher, world.student, world.tokenizer, rows, tmp_path / "a", cfg, check=is_correct, progress=False)
    (tmp_path / "a" / "shard-00001.jsonl").rename(tmp_path / "a" / ".shard-00001.jsonl.tmp")
    (tmp_path / "a" / ".shard-00001.jsonl.tmp").write_text('{"id": "half')
    assert len(load_detections(tmp_path / "a")) == 3
    again = detect(world.teacher, world.student, world.tokenizer, rows, tmp_path / "a", cfg, check=is_correct, progress=False)
    assert again.to_list() == full.to_list()


def test_rerun_with_other_data_is_refused(tmp_path, world):
    rows = list(world.splits["math"]["test"])
    cfg = DetectConfig(shard_size=3, select=False)
    detect(world.teacher, world.student, world.tokenizer, rows[:3], tmp_path, cfg, check=is_correct, progress=False)
    with pytest.raises(ValueError, match="other ids, n_rows|other n_rows"):
        detect(world.teacher, world.student, world.tokenizer, rows[:4], tmp_path, cfg, check=is_correct, progress=False)


def test_bad_input_is_named(world):
    tok, row = world.tokenizer, dict(world.splits["math"]["test"][0])
    with pytest.raises(ValueError, match="math-test-0-0.*instruction.*empty"):
        saliency_encoding({**row, "instruction": "\n"}, tok)
    with pytest.raises(ValueError, match="math-test-0-0.*exceed"):
        saliency_encoding(row, tok, max_length=8)
    with pytest.raises(ValueError, match="tau must lie in"):
        DetectConfig(threshold=ThresholdRule(tau=1.2))
    with pytest.raises(ValueError, match="reference"):
        DetectConfig(reference="gold")
    with pytest.raises(ValueError, match="row .a.*instruction"):
        detect(world.teacher, world.student, tok, [{"id": "a", "instruction": "", "response": "x"}], "/nonexistent", check=is_correct, progress=False)


def test_vocabulary_mismatch_is_refused_before_work(tmp_path, world):
    from leaf_nb.core import toy_model, toy_tokenizer
    other = toy_tokenizer("chatml")
    with pytest.raises(ValueError, match="output layer|vocabular"):
        detect(toy_model(other, vocab_size=50), world.student, world.tokenizer,
               list(world.splits["math"]["test"])[:2], tmp_path, check=is_correct, progress=False)
    assert not list(tmp_path.glob("shard-*"))


def test_nonfinite_rows_are_counted_not_written_as_nan(tmp_path, world, caplog):
    "A model whose gradients overflow on some rows: those rows get status 'nonfinite', no NaN anywhere."
    rows = list(world.splits["math"]["test"])[:4]
    emb = world.student.get_input_embeddings()
    bad = world.tokenizer.convert_tokens_to_ids(rows[0]["instruction"].split()[0])

    class NaNEmb(torch.nn.Module):
        def __init__(self): super().__init__(); self.emb = emb
        def forward(self, ids): return torch.where((ids == bad).unsqueeze(-1), torch.full_like(self.emb(ids), float("nan")), self.emb(ids))

    world.student.set_input_embeddings(NaNEmb())
    try:
        ds = detect(world.teacher, world.student, world.tokenizer, rows, tmp_path, DetectConfig(select=False), progress=False)
    finally: world.student.set_input_embeddings(emb)
    expect = ["nonfinite" if r["instruction"].split()[0] == rows[0]["instruction"].split()[0] else "flagged" for r in rows]
    assert ds["status"] == expect and "non-finite" in caplog.text
    for r in ds:
        for k in ("g_teacher", "g_student", "delta", "surprisal"): assert np.isfinite(r[k]).all()


@pytest.mark.slow
def test_smollm2_batched_equals_per_example(smol):
    "On the real model (chat template, 49k vocabulary): a batch of prompts equals one pass per prompt."
    model, tok = smol
    rows = [{"id": f"r{i}", "instruction": f"Tom has {i + 3} apples and buys {i + 2} more. His dog is {i + 5} years old. How many apples?",
             "response": f"Tom has {2 * i + 5} apples."} for i in range(4)]
    rows[1]["instruction"] += " Answer briefly."
    batched = input_saliency(model, tok, rows, batch_size=4)
    for r, b in zip(rows, batched):
        (one,) = input_saliency(model, tok, [r], batch_size=1)
        assert one.context == b.context
        np.testing.assert_allclose(b.scores, one.scores, rtol=1e-4, atol=1e-5 * one.scores.max())
        assert abs(b.nll - one.nll) < 1e-3 * abs(one.nll)
    enc = saliency_encoding(rows[0], tok)
    assert all(enc["source"][i] == 1 for i in enc["context"])


def test_clause_rule_flags_whole_clauses_and_baselines_match_its_budget():
    from leaf_nb.saliency import SOURCE_INSTRUCTION, apply_rule
    text = "Tom has 5 pens . His friend has 8 hats . How many pens ?"
    offsets = [[m.start(), m.end()] for m in re.finditer(r"\S+", text)]
    clause = [0] * 5 + [1] * 6 + [2] * 4
    delta = [0.6] * len(offsets)
    delta[text.split().index("8")] = 0.0
    res = {"id": "t", "status": "flagged", "context_source": [SOURCE_INSTRUCTION] * len(offsets), "context_offsets": offsets,
           "context_clause": clause, "delta": delta, "surprisal": list(range(len(offsets)))}
    out = apply_rule(res, ThresholdRule("quantile", quantile=0.1, unit="clause"))
    assert out["flags"] == [c == 1 for c in clause]
    assert text[slice(*out["spans"]["instruction"][0])] == "His friend has 8 hats ."
    for key in ("random_flags", "ppl_flags"):  # as many clauses, each flagged whole
        assert len({c for c, f in zip(clause, out[key]) if f}) == 1
        assert all(out[key][i] == out[key][j] for i in range(len(clause)) for j in range(len(clause)) if clause[i] == clause[j])
    assert out["ppl_flags"] == [c == 2 for c in clause]  # the clause holding the most surprising token
    with pytest.raises(ValueError, match="needs 'context_clause'"):
        apply_rule({k: v for k, v in res.items() if k != "context_clause"}, ThresholdRule(unit="clause"))
