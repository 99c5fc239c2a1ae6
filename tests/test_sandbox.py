"""The code sandbox against hostile programs: infinite loops, fork bombs, memory bombs, writes outside the working
directory, outgoing sockets, signals to host processes; each kernel layer also alone (audit hooks off); and the host
stays fine afterwards (it can start processes and allocate, the files outside were not touched, nothing is left running)."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from leaf_nb.sandbox import (SandboxConfig, SandboxResult, run_sandboxed, run_sandboxed_many, sandbox_read_paths)

torch.set_num_threads(1)
LINUX = sys.platform.startswith("linux")
ALL_OFF = dict(audit_hooks=False, landlock=False, network_namespace=False, drop_privileges=False)


@pytest.fixture(scope="module")
def layers():
    "What the child reports as active on this machine."
    r = run_sandboxed("pass")
    assert r.passed, r
    return r.layers


def only(layer):
    "Settings with the audit hooks and every kernel layer off but `layer`."
    return {**ALL_OFF, layer: True}


def need(layers, key):
    if not layers.get(key): pytest.skip(f"this machine lacks the sandbox layer {key!r}")


def sandbox_pids() -> list[int]:
    "Processes still running the sandbox bootstrap (their command line carries it)."
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if b"_leaf_sandbox" in (p / "cmdline").read_bytes(): pids.append(int(p.name))
            except OSError: pass
    return pids


def host_ok():
    "Nothing of the sandbox still runs, and the host can start processes and allocate memory."
    if LINUX: assert sandbox_pids() == []
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "42\n"
    block = bytearray(256 << 20); block[-1] = 1
    del block


# ---------------------------------------------------------------- plain results

def test_results_and_tails():
    r = run_sandboxed("import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint(input()[::-1])", stdin="abc")
    assert (r.status, r.reason, r.returncode, r.stdout, r.stderr) == ("passed", "exit code 0", 0, "out\ncba\n", "err\n")
    assert isinstance(r, SandboxResult) and r.passed and r.seconds > 0
    r = run_sandboxed("import sys\nsys.exit(4)")
    assert (r.status, r.reason, r.returncode) == ("failed", "exit code 4", 4)
    r = run_sandboxed("raise KeyError('k')")
    assert r.status == "failed" and r.reason == "exit code 1: KeyError: 'k'" and "Traceback" in r.stderr
    r = run_sandboxed("print('x' * 5000)", tail=100)
    assert r.stdout == "x" * 99 + "\n"
    r = run_sandboxed("def f(:\n  pass")
    assert r.status == "error" and r.reason.startswith("SyntaxError") and "main.py, line 1" in r.reason


def test_program_may_use_its_directory_and_the_standard_library():
    prog = ("import os, json, tempfile, numpy\nos.mkdir('d')\nopen('d/a.json', 'w').write(json.dumps([1, 2]))\n"
            "os.rename('d/a.json', 'd/b.json')\nwith tempfile.NamedTemporaryFile('w') as f: f.write('t')\n"
            "print(json.load(open('d/b.json')), os.getcwd() == os.environ['HOME'], numpy.arange(3).sum())\n"
            "open(os.devnull, 'w').write('nothing')")
    r = run_sandboxed(prog)
    assert (r.status, r.stdout) == ("passed", "[1, 2] True 3\n"), r


def test_bad_settings():
    with pytest.raises(ValueError, match="timeout must be in"): run_sandboxed("pass", timeout=-1)
    with pytest.raises(ValueError, match="memory_mb must be an int >= 64"): run_sandboxed("pass", memory_mb=8)
    with pytest.raises(ValueError, match=r"unknown sandbox setting\(s\) \['cpus'\]"): run_sandboxed("pass", cpus=4)
    with pytest.raises(ValueError, match="program must be a string"): run_sandboxed(None)
    with pytest.raises(ValueError, match="stdin must be a string"): run_sandboxed("pass", stdin=b"x")
    with pytest.raises(ValueError, match="read_paths must be a tuple"): SandboxConfig(read_paths="/data")
    with pytest.raises(ValueError, match="same length, got 2 and 1"): run_sandboxed_many(["pass", "pass"], [""])


def test_no_temporary_directories_are_left():
    before = set(Path(tempfile.gettempdir()).glob("leaf_nb_sandbox_*"))
    run_sandboxed("open('f', 'w').write('x')"); run_sandboxed("while True: pass", timeout=0.5)
    assert set(Path(tempfile.gettempdir()).glob("leaf_nb_sandbox_*")) == before


@pytest.mark.skipif(not LINUX, reason="the kernel layers are Linux only")
def test_layers_on_this_machine(layers):
    "On Linux as root with Landlock (this machine, CI) every layer is on."
    assert layers["audit_hooks"] is True
    if os.geteuid() == 0:
        assert layers["uid"] != 0 and layers["nproc_limit"] and layers["network_namespace"]
    if Path("/sys/kernel/security/landlock").exists() or layers["landlock"]: assert layers["landlock"] >= 1
    assert all(Path(p).exists() for p in sandbox_read_paths())


# ---------------------------------------------------------------- programs that never end

@pytest.mark.parametrize("prog", ["while True: pass", "import time\ntime.sleep(10**6)",
                                  "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n"
                                  "    try: pass\n    except BaseException: pass"])
def test_never_ending_programs_time_out(prog):
    t0 = time.monotonic()
    r = run_sandboxed(prog, timeout=1)
    assert (r.status, r.reason, r.returncode) == ("timeout", "wall-clock timeout (1 s)", -signal.SIGKILL)
    assert time.monotonic() - t0 < 5
    host_ok()


def test_many_timeouts_run_side_by_side():
    t0 = time.monotonic()
    rs = run_sandboxed_many(["while True: pass"] * 4, timeout=1, max_workers=4)
    assert [r.status for r in rs] == ["timeout"] * 4 and time.monotonic() - t0 < 6
    host_ok()


# ---------------------------------------------------------------- fork bombs and other processes

FORKS = {
    "os.fork": "import os\nwhile True: os.fork()",
    "multiprocessing": "import multiprocessing as mp\nwhile True: mp.Process(target=print).start()",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '100'])",
    "os.system": "import os\nos.system('sleep 100 &')",
    "os.posix_spawn": "import os\nos.posix_spawn('/bin/sleep', ['sleep', '100'], {})",
    "os.execv": "import os\nos.execv('/bin/sh', ['sh', '-c', 'sleep 100'])",
    "pty": "import pty\npty.fork()",
}


@pytest.mark.parametrize("name", FORKS)
def test_process_creation_is_blocked(name):
    r = run_sandboxed(FORKS[name])
    assert r.status == "error" and r.reason.startswith("blocked"), r
    host_ok()


@pytest.mark.skipif(not LINUX, reason="RLIMIT_NPROC with a dropped uid, Landlock: Linux")
def test_fork_bomb_meets_the_kernel_without_audit_hooks(layers):
    "With the hooks off, fork fails (RLIMIT_NPROC binds for the dropped uid) and exec fails (Landlock)."
    need(layers, "nproc_limit")
    bomb = ("import os\nn = 0\nfor _ in range(2000):\n    try: os.fork(); n += 1\n    except OSError: pass\n"
            "import threading\ntry: threading.Thread(target=print).start(); print('thread')\nexcept RuntimeError: print('no thread')\n"
            "print(n)")
    r = run_sandboxed(bomb, audit_hooks=False)
    assert (r.status, r.stdout) == ("passed", "no thread\n0\n"), r
    r = run_sandboxed("import subprocess\nsubprocess.run(['true'])", audit_hooks=False)
    assert r.status == "failed" and ("BlockingIOError" in r.reason or "PermissionError" in r.reason), r
    r = run_sandboxed("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", audit_hooks=False, timeout=1)
    assert r.status == "timeout"
    host_ok()


def test_exec_meets_landlock_alone(layers):
    need(layers, "landlock")
    r = run_sandboxed("import os\nos.execv('/bin/true', ['true'])", **only("landlock"))
    assert r.status == "failed" and "PermissionError" in r.reason, r


# ---------------------------------------------------------------- memory bombs

@pytest.mark.parametrize("prog", ["x = bytearray(8 * 1024**3)", "x = []\nwhile True: x.append(bytearray(10**7))",
                                  "s = 'x' * (4 * 1024**3)"])
@pytest.mark.parametrize("hooks", [True, False])
def test_memory_bomb(prog, hooks):
    r = run_sandboxed(prog, memory_mb=256, audit_hooks=hooks)
    assert (r.status, r.reason) == ("error", "memory limit (256 MiB)"), r
    host_ok()


def test_memory_limit_is_the_setting():
    assert run_sandboxed("x = bytearray(100 << 20)", memory_mb=512).passed
    assert run_sandboxed("x = bytearray(600 << 20)", memory_mb=512).reason == "memory limit (512 MiB)"


def test_output_flood_is_capped():
    r = run_sandboxed("while True: print('x' * 1000)", output_kb=256)
    assert (r.status, r.reason) == ("error", "output limit (256 KiB)") and len(r.stdout) <= 2000
    r = run_sandboxed("open('big', 'wb').write(b'0' * (2 << 20))", output_kb=1024)
    assert r.status in ("error", "failed") and "File too large" in r.stderr + r.reason
    host_ok()


# ---------------------------------------------------------------- writes outside the working directory

@pytest.fixture
def outside(tmp_path):
    "A directory outside the sandbox (root-owned when run as root) with one existing file."
    (tmp_path / "keep.txt").write_text("keep")
    os.chmod(tmp_path / "keep.txt", 0o644)
    return tmp_path


def writes(d: Path) -> dict[str, str]:
    return {
        "open w": f"open({str(d / 'new.txt')!r}, 'w').write('pwned')",
        "open a": f"open({str(d / 'keep.txt')!r}, 'a').write('pwned')",
        "os.open": f"import os\nos.open({str(d / 'new.txt')!r}, os.O_CREAT | os.O_WRONLY)",
        "pathlib": f"import pathlib\npathlib.Path({str(d)!r}, 'new.txt').write_text('pwned')",
        "relative": "import os\nopen(os.path.relpath(" + repr(str(d / 'new.txt')) + "), 'w').write('pwned')",
        "chdir": f"import os\nos.chdir({str(d)!r})\nopen('new.txt', 'w').write('pwned')",
        "dir_fd": f"import os\nfd = os.open({str(d)!r}, os.O_RDONLY)\nos.open('new.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
        "mkdir": f"import os\nos.mkdir({str(d / 'new.txt')!r})",
        "rename": f"open('f', 'w').write('pwned')\nimport os\nos.rename('f', {str(d / 'new.txt')!r})",
        "shutil.copy": f"import shutil\nopen('f', 'w').write('pwned')\nshutil.copy('f', {str(d / 'new.txt')!r})",
        "symlink": f"import os\nos.symlink({str(d)!r}, 'link')\nopen('link/new.txt', 'w').write('pwned')",
        "remove": f"import os\nos.remove({str(d / 'keep.txt')!r})",
        "truncate": f"import os\nos.truncate({str(d / 'keep.txt')!r}, 0)",
        "chmod": f"import os\nos.chmod({str(d / 'keep.txt')!r}, 0o777)",
        "tempfile": f"import tempfile\ntempfile.NamedTemporaryFile(dir={str(d)!r}, delete=False).write(b'pwned')",
    }


def untouched(d: Path):
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]
    assert (d / "keep.txt").read_text() == "keep" and (d / "keep.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", list(writes(Path("/x"))))
def test_writes_outside_are_blocked(outside, name):
    r = run_sandboxed(writes(outside)[name])
    assert r.status == "error" and r.reason.startswith("blocked"), r
    untouched(outside)
    host_ok()


@pytest.mark.parametrize("layer", ["landlock", "drop_privileges"])
@pytest.mark.parametrize("name", list(writes(Path("/x"))))
def test_writes_outside_meet_each_kernel_layer_alone(outside, layer, name, layers):
    need(layers, {"landlock": "landlock", "drop_privileges": "nproc_limit"}[layer])
    if layer == "drop_privileges" and os.geteuid() != 0: pytest.skip("dropping privileges needs root")
    r = run_sandboxed(writes(outside)[name], **only(layer))
    if layer == "landlock" and name == "chmod" and os.geteuid() == 0:
        # a known gap: Landlock does not cover metadata (chmod, chown, utime); the hooks and dropping root do (above)
        assert r.passed and (outside / "keep.txt").stat().st_mode & 0o777 == 0o777
        return
    assert r.status == "failed" and ("PermissionError" in r.reason or "OSError" in r.reason), r
    untouched(outside)


def test_landlock_also_guards_world_writable_directories(outside, layers):
    "Dropping root cannot protect a directory anyone may write to; Landlock can."
    need(layers, "landlock")
    os.chmod(outside, 0o777)
    r = run_sandboxed(writes(outside)["open w"], **only("landlock"))
    assert r.status == "failed" and "PermissionError" in r.reason
    untouched(outside)


def test_reads_are_limited_to_the_allowed_paths(outside, layers):
    need(layers, "landlock")
    (outside / "secret.txt").write_text("secret")
    for prog in [f"print(open({str(outside / 'secret.txt')!r}).read())", "print(open('/etc/shadow').read())",
                 "print(open('/proc/1/environ').read())", f"import os\nprint(os.listdir({str(outside)!r}))"]:
        r = run_sandboxed(prog)
        assert r.status == "failed" and "PermissionError" in r.reason and "secret" not in r.stdout, (prog, r)
    r = run_sandboxed(f"print(open({str(outside / 'secret.txt')!r}).read())", read_paths=(str(outside),))
    assert (r.status, r.stdout) == ("passed", "secret\n")


# ---------------------------------------------------------------- network

@pytest.fixture
def listener():
    "A TCP server and a UDP socket on the host's loopback that record whatever reaches them."
    tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp.bind(("127.0.0.1", 0)); tcp.listen(8); tcp.settimeout(0.2)
    udp.bind(("127.0.0.1", 0)); udp.settimeout(0.2)
    got = []
    def serve():
        end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < end:
            for s in (tcp, udp):
                try: got.append(s.accept() if s is tcp else s.recvfrom(100))
                except (socket.timeout, OSError): pass
    stop = threading.Event()
    th = threading.Thread(target=serve, daemon=True); th.start()
    yield tcp.getsockname()[1], udp.getsockname()[1], got
    stop.set(); th.join(); tcp.close(); udp.close()


def nets(tcp_port, udp_port):
    return {"tcp": f"import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=2).sendall(b'x')",
            "udp": f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))",
            "dns": "import socket\nsocket.getaddrinfo('localhost', 80)",
            "server": "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()"}


@pytest.mark.parametrize("name", ["tcp", "udp", "dns", "server"])
def test_sockets_are_blocked(listener, name):
    tcp_port, udp_port, got = listener
    r = run_sandboxed(nets(tcp_port, udp_port)[name])
    assert r.status == "error" and r.reason.startswith("blocked socket."), r
    time.sleep(0.3)
    assert got == []


@pytest.mark.parametrize("name", ["tcp", "udp"])
def test_network_namespace_alone(listener, name, layers):
    need(layers, "network_namespace")
    tcp_port, udp_port, got = listener
    r = run_sandboxed(nets(tcp_port, udp_port)[name], **only("network_namespace"))
    assert r.status == "failed" and "OSError" in r.reason, r  # [Errno 101] Network is unreachable
    time.sleep(0.3)
    assert got == []


def test_landlock_alone_stops_tcp(listener, layers):
    if layers.get("landlock", 0) < 4: pytest.skip("TCP rules need Landlock ABI 4")
    tcp_port, udp_port, got = listener
    r = run_sandboxed(nets(tcp_port, udp_port)["tcp"], **only("landlock"))
    assert r.status == "failed" and "PermissionError" in r.reason, r
    time.sleep(0.3)
    assert got == []


# ---------------------------------------------------------------- signals to host processes

@pytest.fixture
def victim():
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL  # it was still alive: we killed it, not the sandbox


@pytest.mark.parametrize("settings", [{}, "landlock", "drop_privileges"])
def test_host_processes_cannot_be_signalled(victim, settings, layers):
    if settings:
        need(layers, {"landlock": "landlock", "drop_privileges": "nproc_limit"}[settings])
        if settings == "landlock" and layers["landlock"] < 6: pytest.skip("signal scoping needs Landlock ABI 6")
        if settings == "drop_privileges" and os.geteuid() != 0: pytest.skip("needs root")
    r = run_sandboxed(f"import os, signal\nos.kill({victim}, signal.SIGKILL)", **(only(settings) if settings else {}))
    assert r.status in ("error", "failed") and ("blocked os.kill" in r.reason or "PermissionError" in r.reason), r
    time.sleep(0.1)
    os.kill(victim, 0)  # still there


# ---------------------------------------------------------------- native escape hatches

@pytest.mark.parametrize("mod", ["ctypes", "_posixsubprocess", "_xxsubinterpreters", "sqlite3", "_testcapi"])
def test_native_escape_hatches_cannot_be_imported(mod):
    r = run_sandboxed(f"import {mod}")
    assert (r.status, r.reason) == ("error", f"blocked import of {mod!r}"), r


def test_loading_a_native_module_by_path_is_caught_and_would_not_help():
    evade = ("import glob, importlib.util, os, sys\n"
             "so = [p for d in sys.path for p in glob.glob(os.path.join(d, '_posixsubprocess*.so'))][0]\n"
             "spec = importlib.util.spec_from_file_location('_posixsubprocess', so)\n"
             "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
             "import subprocess\nsubprocess.run(['/bin/echo', 'escaped'])")
    r = run_sandboxed(evade)
    assert r.status == "error" and r.reason == "blocked import of '_posixsubprocess'", r
    if LINUX and run_sandboxed("pass").layers.get("nproc_limit"):  # the hooks off: the kernel still says no
        r = run_sandboxed(evade, audit_hooks=False)
        assert r.status == "failed" and "escaped" not in r.stdout and "BlockingIOError" in r.reason, r
    host_ok()
