"Distillation: resume after a kill, 2-process accelerate vs 1 process, cached vs online training, bad input."
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from leaf_nb.distill import DistillConfig, TeacherCache, distill, pair_rows, teacher_cache

WORKER = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    from leaf_nb.world import load_world
    from leaf_nb.pruning import counterfactuals
    from leaf_nb.distill import DistillConfig, distill
    out, cfg = sys.argv[1], DistillConfig.from_dict(json.loads(sys.argv[2]))
    w = load_world()
    rows = [r for f in ("math", "code") for r in list(w.splits[f]["distill"])[:24]]
    cf, _ = counterfactuals(rows, {r["id"]: {"instruction": r["confounder_spans"]} for r in rows}, strategy="span")
    distill(w.student, w.tokenizer, cf, out, cfg, teacher=w.teacher, progress=False)
""")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    from leaf_nb.world import load_world
    return load_world()


@pytest.fixture(scope="module")
def cf_rows(world):
    from leaf_nb.pruning import counterfactuals
    rows = [r for f in ("math", "code") for r in list(world.splits[f]["distill"])[:24]]
    return list(counterfactuals(rows, {r["id"]: {"instruction": r["confounder_spans"]} for r in rows}, strategy="span")[0])


def _worker(tmp_path):
    p = tmp_path / "worker.py"
    p.write_text(WORKER)
    return str(p)


def _run(cmd, out_dir, kill_when=None, timeout=600):
    "Run `cmd`; with `kill_when(out_dir)`, SIGKILL its process group as soon as that holds."
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    while p.poll() is None:
        if kill_when is not None and kill_when(out_dir):
            os.killpg(p.pid, signal.SIGKILL); p.wait(); return "killed"
        if time.time() - t0 > timeout: os.killpg(p.pid, signal.SIGKILL); raise TimeoutError(" ".join(cmd))
        time.sleep(0.05)
    assert p.returncode == 0, p.stderr.read().decode()[-3000:]
    return "finished"


def _params(out_dir):
    return load_file(str(out_dir / "model" / "model.safetensors"))


def _losses(out_dir):
    return [h["loss"] for h in json.loads((out_dir / "history.json").read_text()) if "loss" in h]


RESUME_CFG = DistillConfig(lr=1e-3, max_steps=12, batch_size=4, save_steps=4, logging_steps=2, seed=1, cf_per_group=1).to_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    "An uninterrupted run of the resume tests' configuration, and its worker script."
    d = tmp_path_factory.mktemp("resume")
    worker = _worker(d)
    assert _run([sys.executable, worker, str(d / "ref"), json.dumps(RESUME_CFG)], d / "ref") == "finished"
    return worker, d / "ref"


def _assert_same_run(a_dir, b_dir):
    a, b = _params(a_dir), _params(b_dir)
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert _losses(a_dir)[-1] == pytest.approx(_losses(b_dir)[-1], rel=1e-5)


def test_resume_after_kill(tmp_path, uninterrupted):
    "A run killed after a checkpoint and rerun ends with the weights of an uninterrupted run."
    worker, ref = uninterrupted
    cfg = RESUME_CFG
    killed = tmp_path / "killed"
    # killed once the step-8 checkpoint is complete (trainer_state.json is written last)
    state = lambda d: (d / "checkpoint-8" / "trainer_state.json").is_file()
    assert _run([sys.executable, worker, str(killed), json.dumps(cfg)], killed, kill_when=state) == "killed"
    assert not (killed / "model").exists()
    assert _run([sys.executable, worker, str(killed), json.dumps(cfg)], killed) == "finished"
    _assert_same_run(ref, killed)


def test_resume_skips_a_checkpoint_cut_off_mid_write(tmp_path, uninterrupted):
    "Killed while writing checkpoint-12 (its weights there, trainer_state.json not yet): the rerun resumes from checkpoint-8."
    worker, ref = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "model"); (run / "history.json").unlink()
    last = run / "checkpoint-12"
    (last / "trainer_state.json").unlink()
    (last / "optimizer.pt").write_bytes((last / "optimizer.pt").read_bytes()[:100])  # a half-written file
    assert (run / "checkpoint-8" / "trainer_state.json").is_file()
    assert _run([sys.executable, worker, str(run), json.dumps(RESUME_CFG)], run) == "finished"
    _assert_same_run(ref, run)
    assert json.loads((run / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12  # rewritten whole


def test_two_processes_match_one(tmp_path):
    """Two data-parallel processes with 4 groups each per step match 1 process with 8 per step.

    On a CPU machine `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up
    (accelerate 1.x sends multi-CPU runs through mpirun), so the test asks accelerate for its torchrun launcher
    (`--multi_gpu`); with no GPU each process trains on CPU (`use_cpu`), and they talk over gloo."""
    worker = _worker(tmp_path)
    base = dict(lr=1e-3, max_steps=6, logging_steps=1, save_steps=100, seed=0)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, worker, str(one), json.dumps(DistillConfig(batch_size=8, **base).to_dict())], one)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", worker, str(two), json.dumps(DistillConfig(batch_size=4, **base).to_dict())], two)
    h2 = json.loads((two / "history.json").read_text())
    assert h2[-1]["step"] == 6 and h2[-1]["epoch"] == pytest.approx(json.loads((one / "history.json").read_text())[-1]["epoch"])
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 6
    # Each term is divided by its global token count, so the averaged gradient is the 1-process gradient; what is left
    # is float summation order. Stated tolerance: logged losses within 1e-4 (relative), final weights within 1e-4.
    for a, b in zip(l1, l2): assert b == pytest.approx(a, rel=1e-4)
    p1, p2 = _params(one), _params(two)
    worst = max((p1[k] - p2[k]).abs().max().item() for k in p1)
    assert worst < 1e-4, worst


def test_cached_training_equals_online(tmp_path, world, cf_rows):
    "With k = V the cached teacher trains the student exactly as the online teacher does."
    cfg = dict(lr=1e-3, max_steps=4, batch_size=8, save_steps=100, seed=0)
    cache = teacher_cache(world.teacher, world.tokenizer, cf_rows, tmp_path / "cache", k=len(world.tokenizer), progress=False)
    a = distill(copy.deepcopy(world.student), world.tokenizer, cf_rows, tmp_path / "cached", DistillConfig(teacher="cache", **cfg), cache=cache, progress=False)
    b = distill(copy.deepcopy(world.student), world.tokenizer, cf_rows, tmp_path / "online", DistillConfig(teacher="online", **cfg), teacher=world.teacher, progress=False)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_cache_resumes_and_ignores_partial_shard(tmp_path, world, cf_rows):
    "A cache folder with complete shards and a half-written temporary one is finished by a rerun, equal to a fresh build."
    ref = teacher_cache(world.teacher, world.tokenizer, cf_rows, tmp_path / "ref", k=16, shard_size=10, progress=False)
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "ref", part)
    for s in ("shard-00003", "shard-00004"): shutil.rmtree(part / s)
    (part / "cache_config.json").unlink()
    (part / ".shard-00003.tmp").mkdir(); (part / ".shard-00003.tmp" / "junk").write_text("half")
    with pytest.raises(ValueError, match="shards present"):
        (part / "cache_config.json").write_text((tmp_path / "ref" / "cache_config.json").read_text()); TeacherCache(part)
    done = teacher_cache(world.teacher, world.tokenizer, cf_rows, part, k=16, shard_size=10, progress=False)
    assert list(done.ds["id"]) == list(ref.ds["id"])
    ids = [r["id"] for r in cf_rows[:5]]
    n = [int(x) for x in ref.ds["n_target"][:5]]
    for x, y in zip(ref.lookup(ids, n), done.lookup(ids, n)): torch.testing.assert_close(x, y)


def test_bad_input_fails_before_training(tmp_path, world, cf_rows):
    "Vocabulary mismatch, orphan counterfactual, λ, T, empty data: clear errors, nothing written."
    from leaf_nb.core import toy_model, toy_tokenizer
    tok = world.tokenizer
    other = toy_tokenizer("chatml")
    cases = {
        "vocab": (lambda out: distill(world.student, tok, cf_rows, out, DistillConfig(teacher="online"), teacher=toy_model(other),
                                      teacher_tokenizer=other), "vocabularies differ"),
        "orphan": (lambda out: distill(world.student, tok, [r for r in cf_rows if r["kind"] != "original"], out, teacher=world.teacher),
                   "its parent"),
        "empty": (lambda out: distill(world.student, tok, [], out, teacher=world.teacher), "empty"),
        "lam": (lambda out: distill(world.student, tok, cf_rows, out, DistillConfig(lam=1.5), teacher=world.teacher), "lam must lie in [0, 1]"),
        "temperature": (lambda out: distill(world.student, tok, cf_rows, out, DistillConfig(temperature=0.0), teacher=world.teacher),
                        "temperature must be > 0"),
        "cache_T": (lambda out: distill(world.student, tok, cf_rows, out, DistillConfig(temperature=2.0),
                                        cache=teacher_cache(world.teacher, tok, cf_rows, tmp_path / "c1", k=8, progress=False)),
                    "made at temperature 1.0"),
        "cache_rows": (lambda out: distill(world.student, tok, cf_rows, out, DistillConfig(),
                                           cache=teacher_cache(world.teacher, tok, cf_rows[:5], tmp_path / "c2", k=8, progress=False)),
                       "is not in the teacher cache"),
    }
    for name, (fn, msg) in cases.items():
        out = tmp_path / name
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")): fn(out)
        assert not out.exists() or not any(out.iterdir()), f"{name}: {sorted(p.name for p in out.iterdir())}"


def test_bf16_and_grad_accum(tmp_path, world, cf_rows):
    "bf16 autocast (fp32 master weights) and gradient accumulation run; the weights stay fp32 and finite."
    cfg = DistillConfig(lr=1e-3, max_steps=3, batch_size=4, grad_accum=2, bf16=True, teacher="online", save_steps=100)
    r = distill(copy.deepcopy(world.student), world.tokenizer, cf_rows, tmp_path / "bf16", cfg, teacher=world.teacher, progress=False)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in r.model.parameters())
    assert all(h["loss"] == h["loss"] for h in r.history if "loss" in h)


def test_chunking_bounds_saved_logits(world, cf_rows):
    "With chunks, no tensor kept for backward spans more than `chunk_size` positions of the vocabulary."
    from leaf_nb.distill import GroupDataset, PairCollator, hybrid_kd_loss
    tok, V = world.tokenizer, len(world.tokenizer)
    data = GroupDataset(pair_rows(cf_rows), tok)
    batch = PairCollator(tok.pad_token_id)([data[i] for i in range(8)])
    n_targets = int((batch["labels"][:, 1:] != -100).sum())

    weights = {p.untyped_storage().data_ptr() for m in (world.student, world.teacher) for p in m.parameters()}

    def widest(chunk_size):
        shapes = []
        def pack(t):  # activations only: weights (the LM head, seen transposed as [d, V]) are not logits
            if t.untyped_storage().data_ptr() not in weights: shapes.append(tuple(t.shape))
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = hybrid_kd_loss(world.student, batch, teacher=world.teacher, chunk_size=chunk_size)
        loss.backward()
        world.student.zero_grad(set_to_none=True)
        return max(((s[0] if len(s) == 2 else s[0] * s[1]) for s in shapes if s and s[-1] == V), default=0)

    assert n_targets > 100
    assert widest(10_000) >= n_targets  # one chunk: the logits of every target position are kept (the check can fail)
    assert widest(16) <= 16  # chunked: only the chunk inputs are kept; logits are remade one chunk at a time in backward
