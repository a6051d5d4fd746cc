"""Best-only checkpoint: one file that is always the best so far, its path and metric in summary."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from . import session as _session

SUMMARY_KEY = "best_checkpoint"


class BestKeeper:
    """Saves through ``save(path)`` only when ``monitor`` improves; survives restarts.

    The record of the best value sits next to the file, so a resumed run does not overwrite a
    better checkpoint from before the kill with a worse one.
    """

    def __init__(self, save: Callable[[str], Any], monitor: str = "val_loss", mode: str = "auto",
                 directory: str | Path | None = None, filename: str = "best.keras",
                 log_artifact: bool = False) -> None:
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "auc", "precision", "recall", "f1")) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', not {mode!r}")
        self.save_fn, self.monitor, self.mode = save, monitor, mode
        self.directory = Path(directory) if directory else _session.current().checkpoint_dir / "best"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / filename
        self.log_artifact = log_artifact
        self.record_path = self.directory / "best.json"
        self.best: dict[str, Any] | None = None
        if self.record_path.is_file():
            self.best = json.loads(self.record_path.read_text())
            self._publish()

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best["value"] if self.mode == "min" else value > self.best["value"]

    def update(self, value: float, epoch: int, step: int) -> bool:
        """Offer a new value; save and record it if it is the best so far."""
        value = float(value)
        if not self._better(value):
            return False
        tmp = self.directory / (".tmp-" + self.path.name)
        self.save_fn(str(tmp))
        os.replace(tmp, self.path)  # never leave a half-written "best" behind
        self.best = {"path": str(self.path), "monitor": self.monitor, "mode": self.mode,
                     "value": value, "epoch": epoch, "step": step}
        tmp_rec = self.record_path.with_suffix(".tmp")
        tmp_rec.write_text(json.dumps(self.best))
        os.replace(tmp_rec, self.record_path)
        self._publish()
        if self.log_artifact:
            self._artifact()
        return True

    def _publish(self) -> None:
        try:
            run = _session.current().run
        except RuntimeError:
            return
        _session.current().drain()  # wandb calls stay in order with the logging thread's
        run.summary[SUMMARY_KEY] = dict(self.best or {})

    def _artifact(self) -> None:
        import wandb

        s = _session.current()
        art = wandb.Artifact(f"run_{s.run_id}_best", type="model",
                             metadata={k: self.best[k] for k in ("monitor", "value", "epoch", "step")})
        if self.path.is_dir():
            art.add_dir(str(self.path))
        else:
            art.add_file(str(self.path))
        s.run.log_artifact(art, aliases=["best", f"epoch_{self.best['epoch']}"])
