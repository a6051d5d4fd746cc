"""Live runs (``sync.live = true``) are sealed segment by segment by ``tfwb_agent.sealing``, the
one sealing path for ended runs and live segments; the name stays here for its callers."""
from __future__ import annotations

from ..sealing import seal_live_segments

__all__ = ["seal_live_segments"]
