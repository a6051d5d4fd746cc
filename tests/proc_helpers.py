"""What /proc shows of a test's processes: children, whether one still runs, a wandb service."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable


def children_of(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(p))
    return out


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"  # a zombie has ended


def wait_for(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll an observed condition (what /proc shows) until it holds or the time runs out: a
    wandb service starts and ends on its own schedule, and only /proc tells."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    return what()
