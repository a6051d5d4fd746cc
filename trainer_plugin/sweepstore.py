"""A sweep's state on the shared volume: trials handed out exactly once, leases, results.

No server and no lock daemon: every decision is a file created with ``os.link`` (which fails if
the name exists, atomically, also on NFS), so many containers on many nodes can draw from one
sweep at once. Layout under ``<runs>/sweeps/<sweep id>/``::

    sweep.json             the sweep: id, name, project, config (W&B's format), created
    trials/000007.json     trial 7: params, run id, and the first lease (its creator holds it)
    claims/000007.2.json   the lease of attempt 2 (created by whoever takes the trial over;
                           renewed by its holder by replacing it)
    done/000007.1.json     how attempt 1 ended: state, exit code, the metric, timings

A trial whose attempt's lease ran out with no ``done`` file (its container died) is taken over
once (``MAX_ATTEMPTS``); a trial whose last attempt died too is ``crashed`` for good.
This module imports nothing heavy: a trial process only reads its trial file.
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

MAX_ATTEMPTS = 2
SWEEPS_SUBDIR = "sweeps"
ENV_DIR, ENV_TRIAL, ENV_ATTEMPT = "TFWB_SWEEP_DIR", "TFWB_SWEEP_TRIAL", "TFWB_SWEEP_ATTEMPT"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SweepError(RuntimeError):
    """A sweep cannot be used as asked (bad name, a different sweep under the same name…)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
        raise SweepError(f"sweep name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit")
    return name


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _write_new(path: Path, data: dict) -> bool:
    """Create ``path`` with ``data`` whole, or return False if it exists. Readers never see it
    half-written: it is written under a temporary name and linked into place."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _replace(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=str(path.parent))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@dataclass
class Trial:
    number: int
    params: Dict[str, Any]
    run_id: str
    first_lease: Dict[str, Any]
    claims: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # attempt -> lease
    done: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # attempt -> outcome

    @property
    def attempts(self) -> int:
        return max([1, *self.claims])

    def lease(self, attempt: int) -> Dict[str, Any]:
        return self.claims.get(attempt) or (self.first_lease if attempt == 1 else {})

    def outcome(self) -> Optional[Dict[str, Any]]:
        """The final outcome, if the trial has one."""
        if self.attempts in self.done:
            return self.done[self.attempts]
        return None

    def state(self, now: Optional[float] = None) -> str:
        """finished / failed / crashed / stopped (final), running, or expired (can be re-run)."""
        out = self.outcome()
        if out is not None:
            return out["state"]
        now = time.time() if now is None else now
        if self.lease(self.attempts).get("lease_until", 0) > now:
            return "running"
        return "expired" if self.attempts < MAX_ATTEMPTS else "crashed"


class SweepStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.trials_dir, self.claims_dir, self.done_dir = (self.dir / "trials", self.dir / "claims",
                                                           self.dir / "done")

    # -- a running trial's metric, as it is logged -------------------------------------------
    # The runner decides early termination from it: the run's `.wandb` file shows a value only
    # once wandb has flushed it (wandb 0.31 writes in 32 KiB blocks), often after a short trial
    # has ended. One JSON line per logged value, written and flushed by the trial itself.
    def live_path(self, number: int, attempt: int) -> Path:
        return self.dir / "live" / f"{number:06d}.{attempt}.jsonl"

    def append_live(self, number: int, attempt: int, step: int, value: float) -> None:
        path = self.live_path(number, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "value": value}) + "\n")

    def live_values(self, number: int, attempt: int) -> List[float]:
        """The values logged so far, in step order; a torn last line (being written) is left out."""
        try:
            lines = self.live_path(number, attempt).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        return [float(r["value"]) for r in sorted(rows, key=lambda r: r["step"])]

    @classmethod
    def locate(cls, runs_root: Path, name: str) -> "SweepStore":
        return cls(Path(runs_root) / SWEEPS_SUBDIR / check_name(name))

    # -- the sweep ---------------------------------------------------------------------------
    def create_or_join(self, record: Dict[str, Any]) -> Dict[str, Any]:
        """Create the sweep, or join the one already there if it has the same config."""
        for d in (self.trials_dir, self.claims_dir, self.done_dir):
            d.mkdir(parents=True, exist_ok=True)
        _write_new(self.dir / "sweep.json", record)
        have = self.sweep()
        if have["config"] != record["config"] or have.get("project") != record.get("project"):
            raise SweepError(
                f"a sweep named {have['name']!r} with another config or project already exists in "
                f"{self.dir}; give this one another name (--name) or remove that directory")
        return have

    def sweep(self) -> Dict[str, Any]:
        rec = _read(self.dir / "sweep.json")
        if rec is None:
            raise SweepError(f"no sweep at {self.dir} (sweep.json is missing)")
        return rec

    # -- trials ------------------------------------------------------------------------------
    def trials(self) -> List[Trial]:
        out: Dict[int, Trial] = {}
        for f in sorted(self.trials_dir.glob("[0-9]*.json")):
            rec = _read(f)
            if rec is not None:
                out[rec["number"]] = Trial(rec["number"], rec["params"], rec["run_id"], rec["lease"])
        for sub, attr in ((self.claims_dir, "claims"), (self.done_dir, "done")):
            for f in sub.glob("[0-9]*.[0-9]*.json"):
                n, a = (int(x) for x in f.name[:-5].split("."))
                rec = _read(f)
                if rec is not None and n in out:
                    getattr(out[n], attr)[a] = rec
        return [out[n] for n in sorted(out)]

    def trial(self, number: int) -> Trial:
        for t in self.trials():
            if t.number == number:
                return t
        raise SweepError(f"sweep {self.dir.name}: no trial {number}")

    def _lease(self, lease_s: float, attempt: int) -> Dict[str, Any]:
        now = time.time()
        return {"holder": holder_id(), "attempt": attempt, "claimed_at": now, "lease_until": now + lease_s}

    def create_trial(self, number: int, params: Dict[str, Any], run_id: str, lease_s: float) -> bool:
        """Trial ``number`` with ``params``, held by this process; False if another took the number."""
        rec = {"number": number, "params": params, "run_id": run_id, "created_at": time.time(),
               "lease": self._lease(lease_s, 1)}
        return _write_new(self.trials_dir / f"{number:06d}.json", rec)

    def take_over(self, trial: Trial, lease_s: float) -> Optional[int]:
        """Claim the next attempt of an expired trial; the attempt number, or None if lost."""
        attempt = trial.attempts + 1
        if attempt > MAX_ATTEMPTS:
            return None
        ok = _write_new(self.claims_dir / f"{trial.number:06d}.{attempt}.json", self._lease(lease_s, attempt))
        return attempt if ok else None

    def renew(self, number: int, attempt: int, lease_s: float) -> bool:
        """Extend our lease; False if the trial was taken over (our attempt is not the last)."""
        if (self.claims_dir / f"{number:06d}.{attempt + 1}.json").exists():
            return False
        rec = self._lease(lease_s, attempt)
        _replace(self.claims_dir / f"{number:06d}.{attempt}.json", rec)
        return True

    def finish(self, number: int, attempt: int, outcome: Dict[str, Any]) -> None:
        _write_new(self.done_dir / f"{number:06d}.{attempt}.json", outcome)


_in_process: Optional[Dict[str, str]] = None  # set by tfwb_trainer.sweep() around each trial


def active_dir() -> Optional[str]:
    """The directory of the sweep whose trial this process runs; None outside a sweep."""
    return (_in_process or os.environ).get(ENV_DIR) or None


def active_trial() -> Optional[Dict[str, Any]]:
    """The trial this process runs (set by ``tfwb_trainer.sweep()`` in this process, or by the
    sweep command in the environment of the trial's process); None outside a sweep."""
    env = _in_process or os.environ
    d = active_dir()
    if not d:
        return None
    store = SweepStore(Path(d))
    t = store.trial(int(env[ENV_TRIAL]))
    return {"sweep": store.sweep(), "trial": t, "attempt": int(env.get(ENV_ATTEMPT, "1"))}
