"""Read-only views across the ledger's tables for `health` and the Prometheus metrics: counts
and the oldest failures, never a change. (Each runs under the connection's lock: the metrics
scrape and the daemon may share nothing else, but the delivery's threads share the connection.)
"""
from __future__ import annotations

from typing import Any

# A delivery still undone (not confirmed, held or given up on) whose last attempt failed.
_FAILING = "d.state IN ('pending', 'uploading', 'failed') AND d.last_error IS NOT NULL"


def stuck_deliveries(ledger: Any) -> list[dict[str, Any]]:
    """Undone deliveries with an error: ``run_id, segment, target, error`` and ``since`` (when
    their bundle was imported here, else sealed here, else the delivery's last change)."""
    return [dict(r) for r in ledger._all(
        "SELECT d.run_id, d.segment, d.target, COALESCE(d.last_error, d.reason) AS error, "
        "COALESCE((SELECT MIN(imported_at) FROM imports i WHERE i.run_id = d.run_id AND i.segment = d.segment), "
        "(SELECT MIN(created) FROM bundles b WHERE b.run_id = d.run_id AND b.segment = d.segment), "
        f"d.updated) AS since FROM deliveries d WHERE {_FAILING}")]


def refused_targets(ledger: Any) -> list[dict[str, Any]]:
    """Targets whose last probe refused this host's key or found none: ``name, status, detail``."""
    return [dict(r) for r in ledger._all(
        "SELECT name, status, detail FROM targets WHERE status IN ('key_rejected', 'no_key') ORDER BY name")]


def delivery_errors(ledger: Any) -> list[tuple[str, int]]:
    """``(error, how many)`` of the failing deliveries, one per distinct error text."""
    return [(r[0], r[1]) for r in ledger._all(
        f"SELECT COALESCE(d.last_error, d.reason), COUNT(*) FROM deliveries d WHERE {_FAILING} GROUP BY 1")]


def delivery_counts(ledger: Any) -> dict[tuple[str, str], int]:
    """``(target, state) -> deliveries``."""
    return {(r[0], r[1]): r[2] for r in ledger._all(
        "SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state")}


_LAST_SUCCESS = (
    ("seal", "SELECT '', MAX(created) FROM bundles WHERE run_key IS NOT NULL"),  # sealed here, not imported
    ("export", "SELECT '', MAX(exported_at) FROM bundles"),
    ("import", "SELECT '', MAX(imported_at) FROM imports"),
    ("deliver", "SELECT target, MAX(confirmed_at) FROM deliveries GROUP BY target"),
)


def last_successes(ledger: Any) -> dict[tuple[str, str], float]:
    """``(stage, target) -> when`` a seal, export, import or (per target) delivery last succeeded;
    target is '' for the stages that have none. A stage that never succeeded is absent."""
    last: dict[tuple[str, str], float] = {}
    for stage, sql in _LAST_SUCCESS:
        for target, when in ledger._all(sql):
            if when is not None:
                last[(stage, target)] = float(when)
    return last


def seal_errors(ledger: Any) -> list[str]:
    """The error of every ended run that waits unsealed because its last attempt failed."""
    return [r[0] for r in ledger._all("SELECT last_error FROM runs WHERE state = 'ended' AND last_error IS NOT NULL")]


def quarantined_runs(ledger: Any) -> int:
    row = ledger._one("SELECT COUNT(*) FROM runs WHERE state = 'quarantined'")
    return int(row[0]) if row else 0
