"""Logging for `tf.GradientTape` loops that costs nothing on the steps it does not log.

Pass tensors (or zero-arg callables such as ``metric.result``) as they come out of the train
step; on a step that is not logged they are never read, so the loop never waits for the device.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Union

from . import session as _session
from .values import add_throughput, learning_rate, to_host

Metrics = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]  # Python 3.8: no `|` at run time


class StepLogger:
    def __init__(self, every_n: int = 100, batch_size: int | None = None, prefix: str = "train",
                 initial_step: int = 0, optimizer: Any | None = None) -> None:
        if every_n < 1:
            raise ValueError("every_n must be >= 1")
        self.every_n, self.batch_size, self.prefix = every_n, batch_size, prefix
        self.optimizer = optimizer
        self.global_step = initial_step  # a Python int: counting steps never reads the device
        self.session = _session.current()
        self.session.note_tensorflow()
        self._mark_t, self._mark_step = time.perf_counter(), initial_step
        import wandb

        wandb.define_metric("epoch/*", step_metric="epoch/epoch")

    def due(self, step: int | None = None) -> bool:
        step = self.global_step + 1 if step is None else step
        return step % self.every_n == 0 and self.session.due(step)

    def log_step(self, metrics: Metrics) -> bool:
        """Count one training step; log ``metrics`` if this step is due. Returns whether it did."""
        self.global_step += 1
        step = self.global_step
        if step % self.every_n or not self.session.due(step):
            return False
        values = metrics() if callable(metrics) else metrics
        now = time.perf_counter()
        # Lazy metrics are called now (an op, no read: the value of this step); every value is
        # read to the host by the logging thread.
        row = {f"{self.prefix}/{k}": (v() if callable(v) and not hasattr(v, "numpy") else v)
               for k, v in values.items()}
        if self.optimizer is not None:
            lr = learning_rate(self.optimizer, step)
            if lr is not None:
                row[f"{self.prefix}/learning_rate"] = lr
        add_throughput(row, step - self._mark_step, now - self._mark_t, self.batch_size)
        self.session.log(row, step=step)
        self._mark_t, self._mark_step = time.perf_counter(), step
        return True

    def log_epoch(self, epoch: int, metrics: Metrics) -> None:
        self.session.drain()  # the epoch's rows are read before anything changes between epochs
        values = metrics() if callable(metrics) else metrics
        row = {f"epoch/{k}": to_host(v) for k, v in values.items()}
        row["epoch/epoch"] = epoch
        self.session.log(row, step=self.global_step)
        self._mark_t, self._mark_step = time.perf_counter(), self.global_step
