"""The one place where logged values cross from device to host.

Both loggers call `to_host` only on steps they log; on other steps they never touch a value.
"""
from __future__ import annotations

from typing import Any


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
