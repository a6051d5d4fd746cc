"""Exponential backoff with jitter, capped: when to probe an unreachable target again.

"Equal jitter": half the exponential delay is fixed, half random, so many agents that lost the
same server spread their retries, yet none retries sooner than half the schedule.
"""
from __future__ import annotations

import random


def delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 = the first)."""
    if failures < 1:
        return 0.0
    raw = min(cap, base * 2 ** min(failures - 1, 62))
    r = (rng or random).random()
    return raw / 2 + r * raw / 2
