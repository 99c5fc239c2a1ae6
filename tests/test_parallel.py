"""Stage 1 data-parallel under `accelerate launch` on CPU: `detect` and `teacher_cache` with 2 processes write what one
process writes, and after one process is killed a rerun finishes the folder without duplicated or missing rows."""
import json, os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import datasets
import pytest

pytestmark = pytest.mark.slow
N_ROWS, SHARD = 160, 8
WORKER = textwrap.dedent(f"""
    import sys, time, torch
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    from leaf_nb.world import load_world, is_correct
    from leaf_nb.saliency import DetectConfig, detect
    from leaf_nb.distill import teacher_cache
    out, slow = sys.argv[1], len(sys.argv) > 2
    w = load_world()
    rows = list(w.splits["math"]["distill"])[:{N_ROWS}]
    if slow:  # time to kill a process between shards
        import leaf_nb.saliency as S
        inner = S._detect_shard
        S._detect_shard = lambda *a, **k: (time.sleep(0.3), inner(*a, **k))[1]
    detect(w.teacher, w.student, w.tokenizer, rows, out + "/detect", DetectConfig(shard_size={SHARD}), check=is_correct, progress=False)
    teacher_cache(w.teacher, w.tokenizer, rows, out + "/cache", k=16, shard_size={SHARD}, progress=False)
    from leaf_nb.core import processes
    p = processes(); open(f"{{out}}/process-{{p.index}}-of-{{p.count}}", "w").close()
""")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch(script, out, n, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={n}", "--num_machines=1",
           "--mixed_precision=no", "--dynamo_backend=no", str(script), str(out), *extra] if n > 1 else [sys.executable, str(script), str(out), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _finish(p, timeout=900):
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()[-3000:]


def _contents(out: Path) -> dict:
    "Every detection row and every cached row, by shard, as plain values."
    det = {s.name: s.read_text() for s in sorted((out / "detect").glob("shard-*.jsonl"))}
    cache = {s.name: datasets.load_from_disk(str(s)).to_dict() for s in sorted((out / "cache").glob("shard-*[0-9]"))}
    return dict(detect=det, cache=cache, manifests=[json.loads((out / f).read_text()) for f in ("detect/config.json", "cache/cache_config.json")])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("accelerate")
    d = tmp_path_factory.mktemp("par")
    (d / "worker.py").write_text(WORKER)
    _finish(_launch(d / "worker.py", d / "one", 1))
    return d, _contents(d / "one")


def test_two_processes_write_what_one_writes(setup):
    d, one = setup
    _finish(_launch(d / "worker.py", d / "two", 2))
    two = _contents(d / "two")
    assert sorted(p.name for p in (d / "two").glob("process-*")) == ["process-0-of-2", "process-1-of-2"]  # the work was shared
    assert len(one["detect"]) == len(one["cache"]) == N_ROWS // SHARD
    assert sum(len(t.splitlines()) for t in two["detect"].values()) == N_ROWS
    assert two == one


def test_kill_one_process_and_resume(setup):
    import psutil
    d, one = setup
    out = d / "killed"
    p = _launch(d / "worker.py", out, 2, "slow")
    t0 = time.time()
    while len(list((out / "detect").glob("shard-*.jsonl"))) < 4:
        assert p.poll() is None and time.time() - t0 < 600, "the launched run ended before it could be killed"
        time.sleep(0.05)
    workers = [c for c in psutil.Process(p.pid).children(recursive=True) if "worker.py" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in workers]
    workers[1].send_signal(signal.SIGKILL)  # one process dies mid-run; the launcher takes the other down
    try: p.wait(timeout=120)
    except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode != 0
    done = len(list((out / "detect").glob("shard-*.jsonl")))
    assert 4 <= done < N_ROWS // SHARD  # a partial folder, no half-written shard
    _finish(_launch(d / "worker.py", out, 2))
    assert _contents(out) == one
