"""What earlier parts of a run left on the volume: the last step each wrote to its `.wandb` file.

A resumed run must not log a step the killed part already wrote (a duplicate once both parts
are delivered), and must re-log what the killed part logged but never got to disk (a gap).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def prior_run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """`.wandb` files of earlier parts of ``run_id``; symlinks (``latest-run``) are skipped."""
    found = []
    if not wandb_dir.is_dir():
        return found
    for entry in sorted(wandb_dir.iterdir()):
        if entry.is_symlink() or not entry.is_dir() or not entry.name.endswith(f"-{run_id}"):
            continue
        f = entry / f"run-{run_id}.wandb"
        if f.is_file() and not f.is_symlink():
            found.append(f)
    return found


def _step_of(rec) -> int | None:
    h = rec.history
    if h.HasField("step"):
        return int(h.step.num)
    for item in h.item:
        if item.key == "_step" or list(item.nested_key) == ["_step"]:
            return int(json.loads(item.value_json))
    return None


def last_step_in(path: Path) -> int:
    """Highest history step whole on disk in ``path``; -1 if none. A torn tail is expected."""
    from ._wandb_log import LogError, read_records

    last = -1
    try:
        for _, rec in read_records(path):
            if rec.WhichOneof("record_type") == "history":
                s = _step_of(rec)
                if s is not None and s > last:
                    last = s
    except LogError:
        # Damage mid-file: what came before it is still what the server will get.
        pass
    return last


def _holders(path: Path) -> list[int]:
    """Pids (other than ours) with ``path`` open: a still-running writer of a killed trainer."""
    target = str(path.resolve())
    me = os.getpid()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    pids.append(int(proc.name))
                    break
        except OSError:  # the process went away or is not ours to inspect
            continue
    return pids


def wait_for_writers(files: list[Path], timeout: float) -> list[int]:
    """Wait until no other process holds any of ``files`` open; return pids still holding.

    When only the trainer was SIGKILLed, wandb's writer process may still flush the killed
    part's buffered records; reading the last step before it is done would re-log them.
    """
    deadline = time.monotonic() + timeout
    while True:
        holders = [p for f in files for p in _holders(f)]
        if not holders or time.monotonic() >= deadline:
            return holders
        time.sleep(0.2)  # polling a foreign process's exit: there is no event to wait on


def prior_last_step(wandb_dir: Path, run_id: str, wait: float = 60.0) -> int:
    files = prior_run_files(wandb_dir, run_id)
    if files:
        wait_for_writers(files, wait)
    return max((last_step_in(f) for f in files), default=-1)
