"""What `status` and `runs show` report about a run, as plain data (no printing here)."""
from __future__ import annotations

import time
from typing import Any


def run_view(row: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    facts = row.get("facts") or {}
    staging = facts.get("staging") or {}
    return {
        "run_id": row["run_id"],
        "project": row["project"],
        "entity": row["entity"],
        "path": row["key"],
        "state": row["state"],
        "ended": row["ended"],
        "reason": row["reason"],
        "wandb_version": row["wandb_version"],
        "size": row["size"],
        "steps": row["steps"],
        "records": row["records"],
        "exit_code": row["exit_code"],
        "torn_at": row["torn_at"],
        "mtime": row.get("mtime"),
        "idle_seconds": round(now - row["mtime"], 1) if row.get("mtime") else None,  # since the last write
        "age_seconds": round(now - row["first_seen"], 1),  # since the agent first saw it
        "first_seen": row["first_seen"],
        "updated": row["updated"],
        "last_error": row["last_error"],
        "sensitive_keys": facts.get("sensitive", []),
        "staging_missing": staging.get("missing", []),
    }


def human_size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
