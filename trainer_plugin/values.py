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
