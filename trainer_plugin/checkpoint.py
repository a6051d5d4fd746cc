"""Resumable training state: model, optimizer, step and epoch in one TF checkpoint.

`tf.train.Checkpoint` works the same with Keras 2 (TF 2.13) and Keras 3 (TF 2.21), which
Keras' own file formats do not; the step and epoch ride along so a restart knows where it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import session as _session


@dataclass
class Restored:
    step: int  # training steps completed
    epoch: int  # epochs completed (pass as initial_epoch to fit)
    path: str | None


class TrainingCheckpoint:
    def __init__(self, model: Any, optimizer: Any | None = None, directory: str | Path | None = None,
                 max_to_keep: int = 2) -> None:
        import tensorflow as tf

        self.model = model
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self.directory = Path(directory) if directory else _session.current().checkpoint_dir / "last"
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="tfwb_step")
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="tfwb_epoch")
        parts: dict[str, Any] = {"model": model, "tfwb_step": self._step, "tfwb_epoch": self._epoch}
        if self.optimizer is not None:
            parts["optimizer"] = self.optimizer
        self._ckpt = tf.train.Checkpoint(**parts)
        self._manager = tf.train.CheckpointManager(self._ckpt, str(self.directory), max_to_keep=max_to_keep)
        self.step = 0
        self.epoch = 0

    def _build_optimizer(self) -> None:
        # Optimizer slots are created lazily on the first step; restoring into an unbuilt
        # optimizer would silently drop its state, so build it against the model first.
        opt = self.optimizer
        if opt is None or not hasattr(opt, "build"):
            return
        if len(getattr(opt, "variables", ())) > 1:  # more than `iterations`: already built
            return
        opt.build(self.model.trainable_variables)

    def restore(self) -> Restored:
        """Load the newest checkpoint if there is one; tell the session where training resumes."""
        path = self._manager.latest_checkpoint
        if path:
            self._build_optimizer()
            status = self._ckpt.restore(path)
            status.assert_existing_objects_matched()
            self.step, self.epoch = int(self._step.numpy()), int(self._epoch.numpy())
        try:
            _session.current().resume_from(self.step)
        except RuntimeError:
            pass  # used without init(): nothing to replay
        return Restored(self.step, self.epoch, path)

    def save(self, step: int, epoch: int) -> str:
        try:
            # The journal must cover every row up to this checkpoint before the checkpoint exists.
            s = _session.current()
            s.drain()
            s.journal.sync()
        except RuntimeError:
            pass
        self._step.assign(step)
        self._epoch.assign(epoch)
        self.step, self.epoch = step, epoch
        return self._manager.save(checkpoint_number=step)
