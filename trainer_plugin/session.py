"""`init()`: one call that makes a training run offline-safe and resumable.

A process has one session: the wandb run, where its checkpoints live, which steps earlier parts
of the same run already wrote, and the `tfwb` config block the agent reads.
"""
from __future__ import annotations

import copy
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import fingerprint, history
from .journal import Journal
from .volume import RunsDir, point_wandb_at, prepare_runs_dir

CONFIG_KEY = "tfwb"  # the agent reads config[tfwb][sensitive]; keep this location
_ID_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Session:
    run: Any
    runs: RunsDir
    run_id: str
    checkpoint_dir: Path
    prior_last_step: int  # highest step an earlier part of this run has on disk; -1 if none
    journal: Journal
    tfwb: dict[str, Any]
    last_step: int = -1  # highest step this process sent to wandb
    _replayed: bool = field(default=False, repr=False)

    # -- logging -----------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` may still be logged: earlier parts did not already write it."""
        return step > self.prior_last_step

    def log(self, row: dict[str, Any], step: int, journal: bool = True) -> bool:
        """Log ``row`` at ``step`` unless an earlier part of the run already wrote that step."""
        if not self.due(step):
            return False
        if journal:
            self.journal.append(step, _jsonable(row))
        self.run.log(row, step=step)
        self.last_step = max(self.last_step, step)
        return True

    def log_media(self, row: dict[str, Any]) -> None:
        """Media at the run's current step (never behind it: wandb drops such rows)."""
        step = max(self.last_step, self.prior_last_step + 1, 0)
        self.run.log(row, step=step)
        self.last_step = step

    def resume_from(self, step: int) -> None:
        """Training restarts after ``step``: replay the journal rows lost with the killed part."""
        kept = self.journal.truncate_after(step)
        if self._replayed:
            return
        self._replayed = True
        for s, row in kept:
            if self.due(s):
                self.run.log(row, step=s)
                self.last_step = max(self.last_step, s)

    # -- config ------------------------------------------------------------------------------
    def declare_sensitive(self, *globs: str) -> None:
        new = [g for g in globs if g not in self.tfwb["sensitive"]]
        if new:
            self.tfwb["sensitive"].extend(new)
            self.publish_tfwb()

    def update_tfwb(self, path: Iterable[str], value: Any) -> None:
        node = self.tfwb
        *parents, leaf = list(path)
        for p in parents:
            node = node.setdefault(p, {})
        if node.get(leaf) != value:
            node[leaf] = value
            self.publish_tfwb()

    def publish_tfwb(self) -> None:
        # The whole block is rewritten: wandb replaces a top-level config value, it does not merge.
        self.run.config.update({CONFIG_KEY: copy.deepcopy(self.tfwb)}, allow_val_change=True)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, (bool, int, str)) or v is None:
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else str(v)
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                continue  # media and other objects are not journaled
    return out


_session: Session | None = None


def current() -> Session:
    if _session is None:
        raise RuntimeError("tfwb_trainer.init() has not been called in this process")
    return _session


def _resolve_run_id(explicit: str | None, ckpt_dir: Path | None) -> tuple[str, str]:
    if explicit:
        return explicit, "argument"
    if os.environ.get("TFWB_RUN_ID"):
        return os.environ["TFWB_RUN_ID"], "env:TFWB_RUN_ID"
    if ckpt_dir is not None and (ckpt_dir / "run_id").is_file():
        return (ckpt_dir / "run_id").read_text().strip(), "checkpoint_dir"
    # wandb's own generator moved between versions; same alphabet and length.
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8)), "new"


def init(
    project: str | None = None,
    config: dict[str, Any] | None = None,
    sensitive: Iterable[str] = (),
    *,
    runs_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_wait: float = 60.0,
    **wandb_kwargs: Any,
) -> Any:
    """Start (or resume) the wandb run for this training process; return the wandb run.

    wandb runs offline with every directory on the shared volume (``TFWB_RUNS_DIR``, default
    ``/runs``); ``mode="online"`` in ``wandb_kwargs`` is the explicit override. The run id comes
    from ``id=``, ``TFWB_RUN_ID``, or the ``run_id`` file of an explicit checkpoint directory,
    so a restarted job continues the same run. Raises ``RunsDirError`` before anything else
    when the volume is missing or not writable.
    """
    global _session
    import wandb

    runs = prepare_runs_dir(runs_dir)  # first: refuse before any import-heavy or training work
    point_wandb_at(runs)
    explicit_ckpt = checkpoint_dir or os.environ.get("TFWB_CHECKPOINT_DIR")
    run_id, id_source = _resolve_run_id(wandb_kwargs.pop("id", None), Path(explicit_ckpt) if explicit_ckpt else None)
    if not _ID_OK.match(run_id):
        raise ValueError(f"run id {run_id!r}: use 1-64 letters, digits, '-' or '_'")
    ckpt = Path(explicit_ckpt) if explicit_ckpt else runs.checkpoints_dir / (project or "uncategorized") / run_id
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "run_id").write_text(run_id + "\n")

    prior = history.prior_last_step(runs.wandb_dir, run_id, wait=resume_wait)
    tfwb: dict[str, Any] = {
        "schema": 1,
        "sensitive": list(dict.fromkeys(sensitive)),
        "run": {"id_source": id_source, "resumed": prior >= 0 or (ckpt / "last").exists(),
                "prior_last_step": prior, "checkpoint_dir": str(ckpt)},
    }
    tfwb.update(fingerprint.collect())
    cfg = dict(config or {})
    cfg[CONFIG_KEY] = tfwb
    wandb_kwargs.setdefault("mode", "offline")
    wandb_kwargs.setdefault("resume", "allow")
    wandb_kwargs.setdefault("dir", str(runs.root))
    run = wandb.init(project=project, config=cfg, id=run_id, **wandb_kwargs)
    if _session is not None:
        _session.journal.close()
    _session = Session(run=run, runs=runs, run_id=run_id, checkpoint_dir=ckpt, prior_last_step=prior,
                       journal=Journal(ckpt / "metrics-journal.jsonl"), tfwb=tfwb)
    return run


def finish(exit_code: int | None = None) -> None:
    global _session
    import wandb

    if _session is not None:
        _session.journal.close()
        _session = None
    wandb.finish(exit_code=exit_code)
