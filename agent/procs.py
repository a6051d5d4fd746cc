"""Naming one process for sure: a pid plus the kernel's start time (a pid alone is recycled)."""
from __future__ import annotations

from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid, it names one
    process, so a recycled pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def alive(pid: int, start_time: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` (if known) still runs."""
    st = process_start_time(pid)
    if st is None or (start_time is not None and st != start_time):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        return state[state.rindex(")") + 2] != "Z"
    except (OSError, ValueError):
        return False
