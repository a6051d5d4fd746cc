"""Bundles: a run directory as tar (MANIFEST.json first) -> zstd -> age, and back.

Two jobs, one module each: ``bundle_write`` seals a run into a bundle, ``bundle_open`` checks
and opens one. This module holds the little both sides share: the chunk size files and
streams move in, and the progress callback.
"""
from __future__ import annotations

from typing import Any, Callable

CHUNK = 1 << 20
Progress = Callable[..., None]


def no_progress(event: str, **info: Any) -> None:
    pass
