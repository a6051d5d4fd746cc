"""Whether this agent is healthy, and if not, why: the checks behind `tfwb-agent health`.

``assess`` is a plain function of facts (``Facts``) and limits; ``gather`` reads those facts
from the state directory, the ledger and the keys. The daemon writes a heartbeat file each time
its loop turns (``write_heartbeat``); a daemon that hangs stops writing it.

Unhealthy when: runs wait unsealed because of a key or config error; a run has waited unsealed
with an error, or a delivery has stayed undone with an error, for longer than
``[health] failing_seconds``; the state directory's disk is below ``[retention] min_free_mb``;
the daemon's loop has not turned for ``[health] heartbeat_seconds``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import durable, failures
from .deliver.settings import targets as configured_targets
from .ledger import views
from .opsconfig import health_config, min_free_bytes
from .redact.policy import policy_from_config
from .seal import KeyFileError, keys_config, seal_keys

HEARTBEAT = "daemon.heartbeat"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Facts:
    now: float
    heartbeat: float | None              # when the daemon's loop last turned (None: never)
    waiting_unsealed: int                # ended runs not sealed yet
    seal_blocker: str | None             # why nothing can be sealed (keys, config), or None
    stuck_seals: list[tuple[str, float, str]] = field(default_factory=list)       # (run, since, error)
    stuck_deliveries: list[tuple[str, float, str]] = field(default_factory=list)  # (what, since, error)
    free_bytes: int | None = None
    floor_bytes: int | None = None
    refused_targets: list[tuple[str, str]] = field(default_factory=list)  # (target, why) its key is refused


# --- the core -------------------------------------------------------------------------------

def floor_reason(free: int | None, floor: int | None, where: Path) -> str | None:
    """Why sealing is paused for lack of disk space, or None."""
    if floor is None or free is None or free >= floor:
        return None
    return (f"sealing paused: {free // (1 << 20)} MiB free on the disk holding {where}, below the floor "
            f"[retention] min_free_mb = {floor // (1 << 20)}; it resumes by itself once there is room "
            "(`tfwb-agent prune` frees what has arrived)")


def assess(f: Facts, heartbeat_seconds: float, failing_seconds: float, where: Path,
           want_daemon: bool = True) -> list[Check]:
    checks: list[Check] = []
    if want_daemon:
        if f.heartbeat is None:
            checks.append(Check("daemon", False, f"no heartbeat in {where / HEARTBEAT}: the daemon has not run "
                                "here (start it: `tfwb-agent daemon`; --no-daemon where none runs)"))
        else:
            age = f.now - f.heartbeat
            ok = age <= heartbeat_seconds
            checks.append(Check("daemon", ok, f"its loop last turned {age:.0f}s ago" + (
                "" if ok else f", more than [health] heartbeat_seconds = {heartbeat_seconds:g}: it hangs or is gone")))
    if f.seal_blocker and f.waiting_unsealed:
        checks.append(Check("sealing", False, f"{f.waiting_unsealed} run(s) wait unsealed: {f.seal_blocker}"))
    else:
        late = [(r, s, e) for r, s, e in f.stuck_seals if f.now - s > failing_seconds]
        checks.append(Check("sealing", not late, f"{f.waiting_unsealed} run(s) waiting" if not late else
                            f"{len(late)} run(s) unsealed for more than {failing_seconds:g}s, failing: "
                            f"{late[0][0]}: {late[0][2]}"))
    late = [(w, s, e) for w, s, e in f.stuck_deliveries if f.now - s > failing_seconds]
    if f.refused_targets:  # a key or config error, as for sealing: no waiting makes it pass
        name, why = f.refused_targets[0]
        checks.append(Check("delivery", False, f"target {name!r} cannot deliver: {why}"
                            + (f" (and {len(f.refused_targets) - 1} more target(s))" if len(f.refused_targets) > 1 else "")))
    else:
        checks.append(Check("delivery", not late, "no delivery failing for long" if not late else
                            f"{len(late)} delivery(ies) undone for more than {failing_seconds:g}s, failing: "
                            f"{late[0][0]}: {late[0][2]}"))
    floor = floor_reason(f.free_bytes, f.floor_bytes, where)
    checks.append(Check("disk", floor is None, floor or (
        f"{(f.free_bytes or 0) // (1 << 20)} MiB free" if f.free_bytes is not None else "free space unknown")))
    return checks


def report(checks: list[Check]) -> dict[str, Any]:
    return {"healthy": all(c.ok for c in checks), "checks": [asdict(c) for c in checks],
            "problems": [f"{c.name}: {c.detail}" for c in checks if not c.ok]}


# --- the edge -------------------------------------------------------------------------------

def write_heartbeat(state_dir: Path, now: float, turns: int) -> None:
    """Each turn of the daemon's loop. A full disk must not stop the loop: then it is skipped
    (and `health` says the floor or the heartbeat's age)."""
    try:
        durable.write_json(state_dir / HEARTBEAT, {"time": now, "pid": os.getpid(), "turns": turns})
    except OSError:
        pass


def read_heartbeat(state_dir: Path) -> float | None:
    try:
        return float(json.loads((state_dir / HEARTBEAT).read_text())["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def seal_blocker(cfg: config_mod.Config) -> str | None:
    """Why this node cannot seal now (its keys or its redaction config), or None."""
    try:
        seal_keys(keys_config(cfg))
        policy_from_config(cfg)
    except (KeyFileError, ValueError, config_mod.ConfigError) as exc:
        return str(exc)
    return None


def gather(cfg: config_mod.Config, ledger: Any, now: float | None = None) -> Facts:
    now = time.time() if now is None else now
    waiting = [r for r in ledger.runs_in_state("ended") if not (r["facts"] or {}).get("live_segments")]
    stuck_seals = [(r["run_id"] or r["key"], r["mtime"] or r["first_seen"], r["last_error"])
                   for r in waiting if r["last_error"]]
    stuck_deliveries = [(f"{r['run_id']}/{r['segment']} -> {r['target']}", r["since"], r["error"])
                        for r in views.stuck_deliveries(ledger)]
    return Facts(now=now, heartbeat=read_heartbeat(cfg.state_dir), waiting_unsealed=len(waiting),
                 seal_blocker=seal_blocker(cfg) if waiting else None, stuck_seals=stuck_seals,
                 stuck_deliveries=stuck_deliveries, free_bytes=failures.free_bytes(cfg.state_dir),
                 floor_bytes=min_free_bytes(cfg),
                 refused_targets=[(t["name"], t["detail"] or t["status"]) for t in views.refused_targets(ledger)
                                  if t["name"] in configured_targets(cfg)])


def check(cfg: config_mod.Config, ledger: Any, want_daemon: bool = True, now: float | None = None,
          only: tuple[str, ...] = ()) -> dict[str, Any]:
    hc = health_config(cfg)
    facts = gather(cfg, ledger, now)
    checks = assess(facts, hc.heartbeat_seconds, hc.failing_seconds, cfg.state_dir, want_daemon)
    return report([c for c in checks if not only or c.name in only])


def sealing_paused(cfg: config_mod.Config) -> str | None:
    """The daemon's low-disk guard: why sealing must wait now, or None."""
    return floor_reason(failures.free_bytes(cfg.state_dir), min_free_bytes(cfg), cfg.state_dir)
