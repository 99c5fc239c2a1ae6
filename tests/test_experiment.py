"End to end: run_experiment resumes after a kill at any stage, the console script's errors, the paper recipe's configs."
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    from leaf_nb.distill import DistillConfig
    from leaf_nb.demo import world_inputs
    from leaf_nb.experiment import ExperimentConfig, run_experiment
    cfg = ExperimentConfig(n_distill=24, n_eval=12, seeds=(0, 1), answer_kind="world",
                           distill=DistillConfig(lr=3e-3, max_steps=6, batch_size=8, logging_steps=2, save_steps=3))
    run_experiment(cfg, sys.argv[1], *world_inputs(cfg), progress=False)
""")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(script, out_dir, kill_when=None, timeout=900):
    "Run the worker; with `kill_when(out_dir)`, SIGKILL its process group as soon as that holds. True if it was killed."
    p = subprocess.Popen([sys.executable, str(script), str(out_dir)], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    while p.poll() is None:
        if kill_when is not None and kill_when(out_dir):
            os.killpg(p.pid, signal.SIGKILL); p.wait(); return True
        if time.time() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL); raise TimeoutError("worker ran too long")
        time.sleep(0.05)
    assert p.returncode == 0, p.stderr.read().decode()[-3000:]
    return False


def _results(out_dir):
    res = json.loads((out_dir / "results.json").read_text())
    evals = {p.name: [json.loads(l) for l in p.read_text().splitlines()] for p in sorted((out_dir / "eval").glob("*.jsonl"))}
    return res["results"], res["counts"], evals


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    script = d / "worker.py"
    script.write_text(WORKER)
    _run(script, d / "uninterrupted")
    return script, _results(d / "uninterrupted")


def _stage_done(name):
    return lambda out: (out / "stages" / f"{name}.json").is_file()


def _inside(glob):
    return lambda out: any(out.glob(glob))


@pytest.mark.slow
@pytest.mark.parametrize("when", [
    "detect-code",                       # killed after a detection stage, before its response-level one
    "cache-instr-quantile0.1-0.5-clause",  # after a teacher cache
    "inside distill/leaf-instr-s0/checkpoint-3/trainer_state.json",  # inside a distillation, after its first checkpoint (written last)
    "evaluate-leaf-instr-s1",            # after an evaluation, with one more variant to go
])
def test_resume_after_kill(reference, tmp_path, when):
    script, expected = reference
    out = tmp_path / "run"
    cond = _inside(when.split(" ", 1)[1]) if when.startswith("inside ") else _stage_done(when)
    assert _run(script, out, kill_when=cond), "the worker finished before it could be killed"
    assert not (out / "results.json").is_file()
    _run(script, out)
    results, counts, evals = _results(out)
    assert counts == expected[1]
    assert results == expected[0]
    assert evals.keys() == expected[2].keys()
    for k in evals:
        assert [r["id"] for r in evals[k]] == [r["id"] for r in expected[2][k]]  # no duplicated or missing rows
        assert [r["correct"] for r in evals[k]] == [r["correct"] for r in expected[2][k]], k


def test_console_script_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"config": "PruneJob", "detections": "d", "out": "o", "strategy": "everything"}')
    for args, needle in [(["prune", str(bad)], "PruneJob.strategy must be one of"),
                         (["detect", str(tmp_path / "nope.json")], "does not exist"),
                         (["distill", str(bad), "--check"], "holds a PruneJob, not a DistillJob")]:
        p = subprocess.run([str(Path(sys.executable).parent / "leaf_nb"), *args], env=ENV, capture_output=True, text=True, timeout=300)
        assert p.returncode == 1, (args, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_paper_recipe_configs(tmp_path):
    from leaf_nb.cli import main
    from leaf_nb.jobs import DistillJob, effective_batch
    lines = []
    assert main(["template", "paper", "--out", str(tmp_path)], out=lines.append) == 0
    job = DistillJob.load(tmp_path / "distill.json")
    assert effective_batch(job, 8) == 64 and job.distill.lr == 1e-5 and job.distill.epochs == 3 and job.distill.bf16
    assert job.teacher.name_or_path == "meta-llama/Llama-3.3-70B-Instruct"
    assert job.student.name_or_path == "meta-llama/Llama-3.2-1B-Instruct"
    assert job.data == ("runs/leaf-llama/prune-instr", "runs/leaf-llama/prune-resp")
    cmds = (tmp_path / "commands.sh").read_text()  # the commands that run it, stage 1 data-parallel over groups of GPUs
    assert f'--num_processes 2 "$(which leaf_nb)" detect {tmp_path}/detect-instr.json' in cmds and "141 GB" in cmds
    for name in ("detect-instr", "detect-resp", "prune-instr", "prune-resp", "distill", "evaluate"):
        out = []
        assert main([name.split("-")[0], str(tmp_path / f"{name}.json"), "--check"], out=out.append) == 0, name
        assert "a valid" in out[0]
    out = []
    main(["distill", str(tmp_path / "distill.json"), "--check", "--num-processes", "8"], out=out.append)
    assert "64 originals per step on 8 process(es)" in out[0]


def test_demo_bars(tmp_path):
    "`leaf_nb demo` draws its own bars (an overall one naming the stage, one per long stage) and none of transformers'; --quiet draws none."
    cfg = {"config": "ExperimentConfig", "n_distill": 16, "n_eval": 8, "answer_kind": "world", "families": ["math"],
           "distill": {"lr": 3e-3, "max_steps": 4, "batch_size": 8, "logging_steps": 2, "save_steps": 100}}
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    def demo(*extra):
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "leaf_nb"), "demo", "--config", str(tmp_path / "tiny.json"), *extra],
                           env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout + p.stderr
    loud = demo("--out", str(tmp_path / "loud"))
    for bar in ("experiment:", "detect:", "teacher cache:", "distill:", "generate:"): assert bar in loud, bar
    assert "step/s" in loud or "s/step" in loud  # the distillation bar shows its rate
    assert "Loading weights" not in loud and "GGUF" not in loud
    quiet = demo("--out", str(tmp_path / "quiet"), "--quiet")
    assert "experiment:" not in quiet and "distill:" not in quiet and "[distill-kd-w-o-mask-s0]" in quiet
