"""The one place where logged values cross from device to host.

Both loggers touch values only on steps they log, and then only to hand them to the logging
thread (``shipper``), which calls `to_host`: the training thread never waits for the device.
"""
from __future__ import annotations

import functools
from typing import Any, Optional


def to_host(value: Any) -> Any:
    """A Python number for a tensor, variable, numpy scalar or zero-arg callable (lazy metric)."""
    if callable(value) and not hasattr(value, "numpy"):
        value = value()
    if hasattr(value, "numpy"):
        value = value.numpy()  # the device-to-host copy
    try:
        return value.item() if hasattr(value, "item") and getattr(value, "size", 1) == 1 else float(value)
    except (TypeError, ValueError):
        return value


def add_throughput(row: dict, steps: int, elapsed: float, batch_size: int | None) -> None:
    """Step time and examples/s over the last ``steps`` steps, into ``row``. The caller read a
    value from the device just before, so the wall time covers finished work."""
    if steps > 0 and elapsed > 0:
        row["perf/step_time_s"] = elapsed / steps
        if batch_size:
            row["perf/examples_per_sec"] = batch_size * steps / elapsed


def _schedule_at(schedule: Any, step: int) -> Optional[float]:
    try:
        return to_host(schedule(step))
    except Exception:  # some schedules cannot be evaluated outside the train function
        return None


def learning_rate(optimizer: Any, step: int) -> Any:
    """The optimizer's learning rate for the row of ``step``, for the logging thread to read: a
    schedule is evaluated there at ``step`` (exact); a variable is passed as it is and read by
    that thread, a moment later (copying it here would be an op on the training thread, some
    0.1-0.4 ms; callbacks change it between epochs, and the loggers wait for the logging thread
    at epoch ends)."""
    lr = getattr(optimizer, "learning_rate", None)
    if lr is None:
        return None
    if callable(lr) and not hasattr(lr, "numpy") and not hasattr(lr, "shape"):  # a schedule
        return functools.partial(_schedule_at, lr, step)
    return lr
