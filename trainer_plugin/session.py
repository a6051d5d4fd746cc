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
from typing import Any, Iterable, Optional

from . import fingerprint, history, service_connect, sweepstore
from .journal import Journal
from .shipper import Shipper
from .values import to_host
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
    shipper: Optional[Shipper] = field(default=None, repr=False)
    # A sweep trial under early termination: (its sweep, trial number, attempt, the sweep's
    # metric); each value of that metric also goes to the sweep's live file (SweepStore).
    live: Optional[tuple] = field(default=None, repr=False)

    # -- logging -----------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` may still be logged: earlier parts did not already write it."""
        return step > self.prior_last_step

    def log(self, row: dict[str, Any], step: int, journal: bool = True) -> bool:
        """Log ``row`` at ``step`` unless an earlier part of the run already wrote that step.

        Values may be tensors, variables or zero-arg callables: they are read to the host, and
        the row journaled and handed to wandb, by the logging thread (see ``shipper``)."""
        if not self.due(step):
            return False
        if self.shipper is not None:
            self.shipper.put(row, step, journal)
        else:
            self._write({k: to_host(v) for k, v in row.items()}, step, journal)
        self.last_step = max(self.last_step, step)
        return True

    def _write(self, row: dict[str, Any], step: int, journal: bool) -> None:
        row = {k: v for k, v in row.items() if v is not None}
        if journal:
            self.journal.append(step, _jsonable(row))
        self.run.log(row, step=step)
        if self.live is not None:
            store, number, attempt, metric = self.live
            value = row.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                store.append_live(number, attempt, step, float(value))

    def drain(self) -> None:
        """Wait until every row logged so far has reached wandb and the journal."""
        if self.shipper is not None:
            self.shipper.drain()

    def log_media(self, row: dict[str, Any]) -> None:
        """Media at the run's current step (never behind it: wandb drops such rows)."""
        self.drain()
        step = max(self.last_step, self.prior_last_step + 1, 0)
        self.run.log(row, step=step)
        self.last_step = step

    def resume_from(self, step: int) -> None:
        """Training restarts after ``step``: replay the journal rows lost with the killed part."""
        self.drain()
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

    def note_tensorflow(self) -> None:
        """Add TensorFlow's part of the fingerprint (build, GPUs, XLA, precision) once the
        process has imported it and the fingerprint lacks it; called where training with it
        begins (the Keras callback, the step logger) and when the run is closed."""
        if "tf_build" not in self.tfwb and fingerprint.tensorflow_loaded():
            for key, value in fingerprint.tf_info().items():
                self.tfwb.setdefault(key, value)  # what the run already said stays
            self.publish_tfwb()

    def publish_tfwb(self) -> None:
        # The whole block is rewritten: wandb replaces a top-level config value, it does not merge.
        self.drain()
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
    trial = sweepstore.active_trial()
    if trial is not None:  # a sweep's trial: its run id, so a re-run attempt resumes the same run
        wandb_kwargs["id"] = trial["trial"].run_id
        project = project or trial["sweep"].get("project")
    run_id, id_source = _resolve_run_id(wandb_kwargs.pop("id", None), Path(explicit_ckpt) if explicit_ckpt else None)
    if trial is not None:
        id_source = "sweep"
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
    if trial is not None:
        _join_trial(trial, cfg, tfwb, wandb_kwargs)
    cfg[CONFIG_KEY] = tfwb
    wandb_kwargs.setdefault("mode", "offline")
    wandb_kwargs.setdefault("resume", "allow")
    wandb_kwargs.setdefault("dir", str(runs.root))
    service_connect.tolerate_late_listen()
    run = wandb.init(project=project, config=cfg, id=run_id, **wandb_kwargs)
    if _session is not None:
        _close(_session)
    _session = Session(run=run, runs=runs, run_id=run_id, checkpoint_dir=ckpt, prior_last_step=prior,
                       journal=Journal(ckpt / "metrics-journal.jsonl"), tfwb=tfwb)
    _session.shipper = Shipper(_session._write)
    if trial is not None:
        scfg = trial["sweep"]["config"]
        metric = (scfg.get("metric") or {}).get("name") if isinstance(scfg.get("metric"), dict) else None
        if scfg.get("early_terminate") and metric:
            store = sweepstore.SweepStore(sweepstore.active_dir())
            _session.live = (store, trial["trial"].number, trial["attempt"], metric)
    _register_exit_drain()
    return run


def _close(s: Session) -> None:
    try:
        try:
            s.note_tensorflow()
        except Exception:  # noqa: BLE001 - informative only: closing the run matters more
            pass
        if s.shipper is not None:
            s.shipper.close()
    finally:
        s.journal.close()


_exit_hook = False


def _register_exit_drain() -> None:
    # A script that ends without finish(): wandb finishes the run at exit, and rows still queued
    # must reach it first. atexit runs the last registered first, so this precedes wandb's hook.
    global _exit_hook
    if not _exit_hook:
        import atexit

        atexit.register(lambda: _session is not None and _session.shipper is not None and _session.shipper.close())
        _exit_hook = True


def _join_trial(trial: dict[str, Any], cfg: dict[str, Any], tfwb: dict[str, Any],
                wandb_kwargs: dict[str, Any]) -> None:
    """A sweep trial: its parameters override the config's defaults (as in a W&B sweep), the
    sweep's name is the run's group, and the sweep is recorded in the config and a tag."""
    sweep, t = trial["sweep"], trial["trial"]
    cfg.update(t.params)
    wandb_kwargs.setdefault("group", sweep["name"])
    tags = list(wandb_kwargs.get("tags") or ())
    wandb_kwargs["tags"] = tags + [f"sweep:{sweep['id']}"] if f"sweep:{sweep['id']}" not in tags else tags
    tfwb["sweep"] = {"id": sweep["id"], "name": sweep["name"], "trial": t.number,
                     "attempt": trial["attempt"], "params": sorted(t.params), "config": sweep["config"]}


def finish(exit_code: int | None = None) -> None:
    global _session
    import wandb

    if _session is not None:
        s, _session = _session, None
        _close(s)
    wandb.finish(exit_code=exit_code)
