"""The suite's forked children (``cli_fork``) are the programs they stand for: a run written by a
forked writer holds the same records and files as one written by ``python write_run.py``, and
the forked agent CLI answers as the installed one does."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

from cli_fork import ForkedPopen, ForkedWandbSync, ForkedWriter, popen
from conftest import REPO

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
