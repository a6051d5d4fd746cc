"""`model.fit` logging built on wandb's own `WandbMetricsLogger`.

What it adds: one step axis shared by batch and epoch rows (the global training step, so a
resumed run continues it), throughput, resume-safe logging through the session, checkpoints
for restarts, and the end-of-training evaluation.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from wandb.integration.keras import WandbMetricsLogger

from . import session as _session
from .best import BestKeeper
from .checkpoint import TrainingCheckpoint
from .evaluation import log_evaluation
from .values import add_throughput, learning_rate, to_host


class MetricsCallback(WandbMetricsLogger):
    """Log batch metrics every ``log_every_n_steps`` steps and epoch metrics every epoch.

    Steps are global training steps (1 = after the first batch). With ``checkpoint``, the
    training state is saved at every epoch end and training resumes from it (pass
    ``checkpoint.restore().epoch`` as ``initial_epoch``). With ``best_monitor``, a best-only
    checkpoint is kept. With ``eval_data``, a confusion matrix and a predictions table are
    logged when training ends.
    """

    def __init__(self, log_every_n_steps: int = 100, batch_size: int | None = None, *,
                 checkpoint: TrainingCheckpoint | None = None, best_monitor: str | None = "val_loss",
                 best_mode: str = "auto", best_artifact: bool = False,
                 eval_data: tuple[Any, Any] | None = None, class_names: Sequence[str] | None = None,
                 eval_samples: int = 16) -> None:
        if log_every_n_steps < 1:
            raise ValueError("log_every_n_steps must be >= 1")
        super().__init__(log_freq=log_every_n_steps)
        # Keras 2: hand us the raw tensors instead of converting every batch's logs to numpy
        # (a device sync per step); we convert only on the steps we log.
        self._supports_tf_logs = True
        self.n = log_every_n_steps
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.best_monitor, self.best_mode, self.best_artifact = best_monitor, best_mode, best_artifact
        self.best: BestKeeper | None = None
        self.eval_data, self.class_names, self.eval_samples = eval_data, class_names, eval_samples
        self.session = _session.current()
        import wandb

        wandb.define_metric("epoch/*", step_metric="epoch/epoch")
        self._mark_t = 0.0
        self._mark_step = 0

    # -- helpers -----------------------------------------------------------------------------
    def _lr(self) -> float | None:
        try:
            return self._get_lr()
        except Exception:  # some schedules cannot be evaluated outside the train function
            return None

    def _reset_clock(self) -> None:
        self._mark_t, self._mark_step = time.perf_counter(), self.global_step

    # -- keras hooks -------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.checkpoint is not None:
            self.global_step = self.checkpoint.step
        if self.best_monitor and self.best is None:
            self.best = BestKeeper(self.model.save, monitor=self.best_monitor, mode=self.best_mode,
                                   log_artifact=self.best_artifact)
        self.session.note_tensorflow()
        jit = getattr(self.model, "jit_compile", None)
        self.session.update_tfwb(("xla", "model_jit_compile"), None if jit is None else bool(jit))
        try:
            from tensorflow import keras

            self.session.update_tfwb(("mixed_precision",), keras.mixed_precision.global_policy().name)
        except Exception:  # the policy is informative only
            pass
        self._reset_clock()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.session.drain()
        self._reset_clock()  # keep validation time out of the step time

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.global_step += 1
        step = self.global_step
        # The cheap test first: on a step we do not log, no value is touched.
        if step % self.n or not self.session.due(step):
            return
        now = time.perf_counter()
        # The values as they are (tensors under Keras 2): the logging thread reads them.
        row = {f"batch/{k}": v for k, v in (logs or {}).items()}
        row["batch/batch_step"] = step
        lr = learning_rate(getattr(self.model, "optimizer", None), step)
        if lr is not None:
            row["batch/learning_rate"] = lr
        add_throughput(row, step - self._mark_step, now - self._mark_t, self.batch_size)
        self.session.log(row, step=step)
        self._reset_clock()

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        pass  # WandbMetricsLogger logs here too; everything goes through on_train_batch_end

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.session.drain()  # the epoch's rows are read before anything changes between epochs
        values = {k: to_host(v) for k, v in (logs or {}).items()}
        row = {f"epoch/{k}": v for k, v in values.items()}
        row["epoch/epoch"] = epoch
        lr = self._lr()
        if lr is not None:
            row["epoch/learning_rate"] = lr
        self.session.log(row, step=self.global_step)
        if self.best is not None and self.best_monitor in values:
            self.best.update(values[self.best_monitor], epoch=epoch, step=self.global_step)
        if self.checkpoint is not None:
            self.checkpoint.save(step=self.global_step, epoch=epoch + 1)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.eval_data is not None:
            x, y = self.eval_data
            log_evaluation(self.model, x, y, self.class_names, n_samples=self.eval_samples)
