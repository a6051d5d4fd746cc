"""How a delivery wave is split (pure): every segment once, in order; a long wave starts
uploading its first max_parallel segments while the rest are opened."""
from __future__ import annotations

from pathlib import Path

import pytest

from tfwb_agent.deliver import engine


def _units(n: int) -> list[engine.Unit]:
    return [engine.Unit(f"run{i}", 0, f"c{i}", f"b{i}", "outbox", Path(f"/b{i}"), 0) for i in range(n)]


@pytest.mark.parametrize("n, parallel", [(1, 4), (8, 4), (9, 4), (50, 8), (3, 1)])
def test_every_segment_once_in_order(n, parallel):
    wave = _units(n)
    parts = engine.wave_parts(wave, parallel)
    assert [u for part in parts for u in part] == wave
    long = n > 2 * parallel
    assert len(parts) == (2 if long else 1)
    if long:
        assert len(parts[0]) == parallel
