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
        "project": _unless_refused(row, "project"),
        "entity": _unless_refused(row, "entity"),
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


# What the redactor says when a run's identifier holds site data or a key (``meta.refuse_secret_routing``).
_REFUSED = "'s {} matches "
WITHHELD = "(withheld: see the note)"


def _unless_refused(row: dict[str, Any], field: str) -> Any:
    """A run's project or entity, unless the run was quarantined for it: then it holds what the
    site's rules found (a patient id, a user's name, a key), and ``status`` names the field
    and the rule, never the value (the run id stays: commands name the run by it)."""
    if row["state"] == "quarantined" and _REFUSED.format(field) in (row["last_error"] or ""):
        return WITHHELD
    return row[field]


def delivery_views(deliveries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per run id: each (segment, target) delivery with its state and, in words, why."""
    out: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        out.setdefault(d["run_id"], []).append({
            "segment": d["segment"], "target": d["target"], "state": d["state"],
            "why": d.get("reason") or d.get("last_error"), "next_attempt": d.get("next_attempt"),
            "attempts": d["attempts"]})
    return out


def imported_view(i: dict[str, Any]) -> dict[str, Any]:
    """On a gateway: one bundle imported from removable media (its run is not watched here);
    ``state`` is imported, then delivered once a target confirmed it."""
    keep = ("run_id", "segment", "bundle_id", "signer", "imported_at", "name", "state", "project", "entity")
    return {k: i.get(k) for k in keep}


def delivery_note(deliveries: list[dict[str, Any]]) -> str:
    """One line for the status table: where each target stands for this run."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        by_target.setdefault(d["target"], []).append(d)
    parts = []
    for target, ds in sorted(by_target.items()):
        if all(d["state"] == "confirmed" for d in ds):
            parts.append(f"{target}: delivered")
        else:
            worst = next(d for d in ds if d["state"] != "confirmed")
            parts.append(f"{target}: {worst['state']}" + (f" ({worst['why']})" if worst["why"] else ""))
    return "; ".join(parts)


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


def target_line(t: dict[str, Any], now: float) -> str:
    """One line per delivery target for `status`: its state, why, and when it is tried next."""
    line = f"target {t['name']}: {t['status'].replace('_', ' ')}" + (f" ({t['detail']})" if t["detail"] else "")
    nxt = t.get("next_attempt")
    if t["status"] != "online" and nxt:
        when = "now (at the next round)" if nxt <= now else f"in {human_age(nxt - now)}"
        line += f"; next attempt {when}, after {t['failures']} failed probe(s)"
    return line
