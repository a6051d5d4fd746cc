"""How a delivery wave is split (pure): every segment once, in order; a wave of more than one
upload's runs starts uploading its first part while the rest are opened."""
from __future__ import annotations

from pathlib import Path

import pytest

from tfwb_agent.deliver import engine
from tfwb_agent.deliver.waves import BATCH_MAX


def _units(n: int) -> list[engine.Unit]:
    return [engine.Unit(f"run{i}", 0, f"c{i}", f"b{i}", "outbox", Path(f"/b{i}"), 0) for i in range(n)]


@pytest.mark.parametrize("n, size", [(1, 4), (8, 4), (9, 4), (50, None), (65, None), (130, None), (3, 1)])
def test_every_segment_once_in_order(n, size):
    wave = _units(n)
    parts = engine.wave_parts(wave, size)
    assert [u for part in parts for u in part] == wave
    most = size or BATCH_MAX
    assert len(parts) == -(-n // most)
    assert all(len(p) == most for p in parts[:-1]) and 0 < len(parts[-1]) <= most
