"""The state directory's layout: every path under ``state_dir`` is built here, and only here.

    ledger.sqlite3        the ledger (SQLite, WAL)
    audit.log             the hash-chained audit log
    daemon.lock           held by the one daemon of this state directory, for its life
    state.lock            held by whichever process writes state now (see ``statelock``)
    outbox/               sealed bundles: <run_id>-<segment>.tar.zst.age (+ .minisig)
    work/p<pid>-<start>/  one process's private redaction copies; a dead process's is swept
    deliver/<target>/     runs rebuilt for upload to one target (under that target's lock)
    staging/<bundle_id>/  imported bundles (gateway)
    quarantine/           refused bundles with their reason.json

Every name built from an identifier goes through ``ids.check`` first, so a hostile id can
never name anything but a plain child of its directory.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import ids
from .procs import alive, process_start_time

if TYPE_CHECKING:
    from .config import Config

LEDGER = "ledger.sqlite3"
AUDIT_LOG = "audit.log"
DAEMON_LOCK = "daemon.lock"
STATE_LOCK = "state.lock"
BUNDLE_SUFFIX = ".tar.zst.age"
MAX_NAME = 255  # bytes in one file name on every filesystem we meet


def ledger(state_dir: Path) -> Path:
    return state_dir / LEDGER


def audit_log(cfg: "Config") -> Path:
    return cfg.state_dir / AUDIT_LOG


def lock_file(state_dir: Path, name: str) -> Path:
    assert name in (DAEMON_LOCK, STATE_LOCK), name
    return state_dir / name


def outbox(cfg: "Config") -> Path:
    return cfg.state_dir / "outbox"


def bundle_name(run_id: str, segment: int) -> str:
    return f"{ids.check('run id', run_id)}-{int(segment)}{BUNDLE_SUFFIX}"


def staging(cfg: "Config") -> Path:
    return cfg.state_dir / "staging"


def staged(cfg: "Config", bundle_id: str) -> Path:
    """Where an imported bundle's content lives: ``staging/<bundle_id>``."""
    return staging(cfg) / ids.check("bundle id", bundle_id)


def quarantine(cfg: "Config") -> Path:
    return cfg.state_dir / "quarantine"


def quarantine_entry(cfg: "Config", medium_name: str) -> Path:
    """A fresh directory name in the quarantine for a bundle called ``medium_name`` on its
    medium (any name a directory listing gives; shortened so the whole fits in a name)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    shown = medium_name.encode("utf-8", "replace")[:MAX_NAME - 40].decode("utf-8", "ignore")
    root, n = quarantine(cfg), 1
    entry = root / f"{stamp}-{shown}"
    while entry.exists():
        n += 1
        entry = root / f"{stamp}-{n}-{shown}"
    return entry


def deliver_root(cfg: "Config") -> Path:
    return cfg.state_dir / "deliver"


def deliver_target(cfg: "Config", target: str) -> Path:
    return deliver_root(cfg) / ids.check("target name", target)


def deliver_work(cfg: "Config", target: str, run_id: str, segment: int) -> Path:
    return deliver_target(cfg, target) / f"{ids.check('run id', run_id)}-{int(segment)}"


# --- per-process work directories ----------------------------------------------------------

def work_root(cfg: "Config") -> Path:
    return cfg.state_dir / "work"


def _own_work_name() -> str:
    return f"p{os.getpid()}-{process_start_time(os.getpid()) or 0}"


def process_work(cfg: "Config") -> Path:
    """This process's own work directory (created on first use): nothing else writes there,
    and another process removes it only once this one is gone (``sweep_work``)."""
    d = work_root(cfg) / _own_work_name()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def work_for(cfg: "Config", name: str) -> Path:
    """A fresh, empty directory ``name`` (a run directory's name) in this process's work."""
    d = process_work(cfg) / ids.check("run directory", name)
    shutil.rmtree(d, ignore_errors=True)  # ours alone: a leftover of an earlier failure in this process
    d.mkdir(mode=0o700)
    return d


def release_work(d: Path) -> None:
    """Remove a directory made by ``work_for``, and this process's work directory once empty."""
    shutil.rmtree(d, ignore_errors=True)
    try:
        os.rmdir(d.parent)
    except OSError:
        pass  # something else of ours is still there


def sweep_work(cfg: "Config") -> list[str]:
    """Remove the work directories of processes that are gone (killed mid-redaction, or during
    their own cleanup), and anything in ``work/`` that is not a process's directory (an older
    agent's layout). Returns what was removed."""
    root = work_root(cfg)
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for e in entries:
        owner = _owner(e.name)
        if owner is not None and (owner[0] == os.getpid() or alive(*owner)):
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            Path(e.path).unlink(missing_ok=True)
        removed.append(e.name)
    return removed


def _owner(name: str) -> tuple[int, int | None] | None:
    if not name.startswith("p"):
        return None
    pid, _, start = name[1:].partition("-")
    try:
        return int(pid), (int(start) or None)
    except ValueError:
        return None
