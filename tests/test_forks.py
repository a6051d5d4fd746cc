"""The suite's forked children (``cli_fork``, ``tf_forkserver``) are the programs they stand for: a
run written by a forked writer holds the same records and files as one written by ``python
write_run.py``, the forked agent CLI answers as the installed one does, and a fork server's child
runs its script as ``python script.py`` would, as a process of its own."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_fork import ForkedPopen, ForkedWandbSync, ForkedWriter, popen
from conftest import REPO
import tf_forkserver
from tf_forkserver import ForkServerPopen

from tfwb_agent.runlog import find_log
from tfwb_agent.wandb_log import LogReader

WRITER = REPO / "tests" / "writers" / "write_run.py"


def _written(root: Path, forked: bool) -> tuple[collections.Counter, list[str], str]:
    argv = [sys.executable, str(WRITER), str(root), "hold", "5"]
    proc = (popen if forked else subprocess.Popen)(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)
    assert isinstance(proc, ForkedWriter) == forked
    out, err = proc.communicate("\n", timeout=120)
    assert proc.returncode == 0, err[-2000:]
    from wandb.proto import wandb_internal_pb2 as pb

    (run_dir,) = (root / "wandb").glob("offline-run-*")
    kinds: collections.Counter = collections.Counter()
    console = []
    with open(find_log(run_dir), "rb") as f:
        for _offset, payload in LogReader(f):
            rec = pb.Record()
            rec.ParseFromString(payload)
            kinds[rec.WhichOneof("record_type")] += 1
            if rec.WhichOneof("record_type") == "output_raw":
                console.append(rec.output_raw.line)
    files = sorted(p.name for p in (run_dir / "files").iterdir())
    return kinds, files, "".join(console)


def test_a_forked_writer_writes_the_run_a_fresh_one_does(tmp_path):
    forked = _written(tmp_path / "forked", True)
    fresh = _written(tmp_path / "fresh", False)
    assert forked[0] == fresh[0] and forked[1] == fresh[1]
    # The console the run captured is the child's own (wandb patched the worker's streams on import).
    assert "READY 5" in forked[2] and "READY 5" in fresh[2]


def test_the_forked_cli_answers_as_the_installed_one(tmp_path):
    argv = [sys.executable, "-m", "tfwb_agent", "config", "--help"]
    forked = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert isinstance(forked, ForkedPopen)
    out, err = forked.communicate(timeout=60)
    fresh = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (forked.returncode, out) == (fresh.returncode, fresh.stdout) and forked.returncode == 0
    bad = [sys.executable, "-m", "tfwb_agent", "no-such-command"]
    forked = popen(bad, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = forked.communicate(timeout=60)
    fresh = subprocess.run(bad, capture_output=True, text=True, timeout=60)
    assert (forked.returncode, err) == (fresh.returncode, fresh.stderr) and forked.returncode == 2


def test_a_wandb_sync_whose_path_finds_another_wandb_starts_that_one(tmp_path):
    """The fork stands only for the wandb beside this interpreter: a PATH that finds another
    (another interpreter's venv first) runs that one, for real."""
    other = tmp_path / "bin"
    other.mkdir()
    (other / "wandb").write_text("#!/bin/sh\necho other wandb \"$@\"\n")
    (other / "wandb").chmod(0o755)
    env = dict(os.environ, PATH=f"{other}:{os.environ['PATH']}")
    proc = popen(["wandb", "sync", "--help"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert not isinstance(proc, ForkedWandbSync) and out.strip() == "other wandb sync --help"
    mine = popen(["wandb", "sync", "--help"], stdout=subprocess.PIPE, text=True)
    out, _ = mine.communicate(timeout=120)
    assert isinstance(mine, ForkedWandbSync) == ForkedWandbSync.accepts(["wandb", "sync"]) and "Usage" in out


PROBE = r'''
import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE_VALUE"), "path0", sys.path[0])
print("tensorflow", "tensorflow" in sys.modules, "session", os.getsid(0) == os.getpid())
print("open", sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
line = sys.stdin.readline()
if line.startswith("hold"):
    print("HOLD", flush=True)
    sys.stdin.readline()
sys.exit(int(line.split()[-1]) if line.strip() else 0)
'''


def test_a_fork_server_child_is_a_process_of_its_own(tmp_path):
    """``tf_forkserver``: the script runs as ``python script.py`` would (argv, cwd, environment,
    its own directory first on sys.path, descriptors 0-2 only) in a new session, with TensorFlow
    imported before it starts; its exit code and its death by a signal come back; a timeout is one."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ, PROBE_VALUE="x y")

    def start() -> ForkServerPopen:
        return ForkServerPopen([sys.executable, str(script), "a", "b c"], env=env, cwd=str(tmp_path), text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    proc = start()
    out, err = proc.communicate("exit 7\n", timeout=120)
    fresh = subprocess.run([sys.executable, str(script), "a", "b c"], env=env, cwd=str(tmp_path), text=True,
                           input="exit 7\n", capture_output=True, start_new_session=True, timeout=60)
    assert proc.returncode == fresh.returncode == 7, err
    assert out.replace("tensorflow True", "tensorflow False") == fresh.stdout
    assert f"argv ['a', 'b c'] cwd {tmp_path} env x y path0 {tmp_path}" in out
    assert "tensorflow True session True" in out
    assert proc.pid != os.getpid() and not os.path.exists(f"/proc/{proc.pid}")  # reaped by the server

    proc = start()
    proc.stdin.write("hold\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("argv")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)  # holding: still running
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close(), proc.stderr.close(), proc.stdin.close()


def test_a_fork_server_runs_code_given_with_c_as_python_c_does(tmp_path):
    code = "import sys, os; print(sys.argv, __name__, repr(sys.path[0]), os.getcwd()); sys.exit(3)"
    argv = [sys.executable, "-c", code, "a", "-b"]
    forked = tf_forkserver.run(argv, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    fresh = subprocess.run(argv, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout) == (3, fresh.stdout)
    assert fresh.stdout.startswith("['-c', 'a', '-b'] __main__ ''")


def test_a_fork_server_that_cannot_start_says_why(tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no tensorflow here' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="(?s)did not start.*exit 3.*no tensorflow here"):
        ForkServerPopen([str(broken), str(tmp_path / "x.py")], stdout=subprocess.DEVNULL)
