"""The ledger's side of receipts and retention: every SQL statement they need, and nothing else.

Tables (made by the schema's migration 6 at the ledger's open; ``ensure_receipt_tables`` stays
callable and makes them on a connection that never went through that open):

    receipts_issued  a gateway's receipts: one row per sequence number it has handed out
    receipts_seen    a node's newest receipt per gateway key (replay protection)
    receipt_marks    a node's bundles as the gateway's receipts describe them
    pruned           what retention removed from disk (outbox bundles, staging, quarantine)

The bundles, imports and deliveries tables are read here, never changed; a run whose every
bundle has arrived is set ``delivered`` (as delivery does for what it confirms itself).
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from . import Ledger, schema

TABLES = schema.RECEIPT_TABLES  # migration 6; kept by this name for the callers of old

# A confirmed delivery of exactly this content, by this host.
_CONFIRMED_HERE = ("EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = b.run_id AND d.segment = b.segment "
                   "AND d.content_id = b.content_id AND d.state = 'confirmed')")
_MARK = "(SELECT m.status FROM receipt_marks m WHERE m.bundle_id = b.bundle_id AND m.content_id = b.content_id)"
_NOT_PRUNED = "NOT EXISTS (SELECT 1 FROM pruned p WHERE p.kind = ? AND p.ident = b.bundle_id)"


def ensure_receipt_tables(db: sqlite3.Connection | Ledger) -> None:
    conn = db.db if isinstance(db, Ledger) else db
    if not has_tables(conn):
        for stmt in TABLES.split(";"):
            conn.execute(stmt)


def has_tables(db: sqlite3.Connection) -> bool:
    """Whether this ledger has the tables (a read-only reader such as ``status`` never makes them)."""
    return db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                      "('receipts_issued', 'receipts_seen', 'receipt_marks', 'pruned')").fetchone()[0] == 4


# --- the gateway: issuing receipts ---------------------------------------------------------

def reserve_sequence(ledger: Ledger, now: float) -> int:
    """The next receipt's sequence number, recorded before the receipt is written (a crash
    burns a number, never reuses one). Never less than the time in seconds, so a gateway
    whose ledger was rebuilt still counts upward."""
    with ledger.tx() as db:
        last = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM receipts_issued").fetchone()[0]
        seq = max(int(last) + 1, int(now))
        db.execute("INSERT INTO receipts_issued (sequence, created) VALUES (?, ?)", (seq, now))
    return seq


def record_issued(ledger: Ledger, sequence: int, file: str, bundles: int) -> None:
    with ledger.tx() as db:
        db.execute("UPDATE receipts_issued SET file = ?, bundles = ? WHERE sequence = ?", (file, bundles, sequence))


def gateway_facts(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    """What a receipt is made of: every import, every confirmed delivery, every refusal."""
    db = ledger.db
    return {
        "imports": [dict(r) for r in db.execute(
            "SELECT bundle_id, content_id, run_id, segment, signer, imported_at FROM imports ORDER BY bundle_id")],
        "confirmed": [dict(r) for r in db.execute(
            "SELECT run_id, segment, content_id, target, confirmed_at FROM deliveries WHERE state = 'confirmed' "
            "ORDER BY run_id, segment, target")],
        "refused": [dict(r) for r in db.execute(
            "SELECT bundle_id, name, run_id, segment, content_id, reason, created FROM bundles "
            "WHERE state = 'quarantined' ORDER BY created, bundle_id")],
    }


# --- the node: taking receipts in ----------------------------------------------------------

def last_sequence(ledger: Ledger, gateway_key_id: str) -> int | None:
    row = ledger.db.execute("SELECT sequence FROM receipts_seen WHERE gateway_key_id = ?", (gateway_key_id,)).fetchone()
    return None if row is None else int(row[0])


def own_bundles(ledger: Ledger, bundle_ids: Iterable[str]) -> dict[str, str]:
    """bundle id -> content id, for the ids that name a bundle this node sealed."""
    out: dict[str, str] = {}
    ids = list(bundle_ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ", ".join("?" for _ in chunk)
        for r in ledger.db.execute(f"SELECT bundle_id, content_id FROM bundles WHERE bundle_id IN ({marks}) "
                                   "AND state IN ('sealed', 'exported')", chunk):
            out[r[0]] = r[1]
    return out


def apply_receipt(ledger: Ledger, *, gateway: str, gateway_key_id: str, sequence: int, file: str,
                  marks: list[tuple[str, str, str, str | None]], now: float) -> int:
    """Record a verified receipt in one transaction: its sequence (only if newer: a concurrent
    import of an older one loses), each ``(bundle_id, content_id, status, reason)`` mark
    ('delivered' is never taken back), and every run whose bundles have all arrived.
    Returns how many runs became delivered; raises ``StaleReceipt`` if a newer one is recorded."""
    with ledger.tx() as db:
        row = db.execute("SELECT sequence FROM receipts_seen WHERE gateway_key_id = ?", (gateway_key_id,)).fetchone()
        if row is not None and row[0] >= sequence:
            raise StaleReceipt(int(row[0]))
        db.execute("INSERT INTO receipts_seen (gateway_key_id, gateway, sequence, file, imported_at) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT(gateway_key_id) DO UPDATE SET gateway = excluded.gateway, "
                   "sequence = excluded.sequence, file = excluded.file, imported_at = excluded.imported_at",
                   (gateway_key_id, gateway, sequence, file, now))
        db.executemany(
            "INSERT INTO receipt_marks (bundle_id, content_id, status, reason, gateway, sequence, marked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(bundle_id) DO UPDATE SET "
            "status = CASE WHEN receipt_marks.status = 'delivered' THEN 'delivered' ELSE excluded.status END, "
            "reason = CASE WHEN receipt_marks.status = 'delivered' THEN receipt_marks.reason ELSE excluded.reason END, "
            "content_id = excluded.content_id, gateway = excluded.gateway, sequence = excluded.sequence, "
            "marked_at = excluded.marked_at",
            [(b, c, s, r, gateway, sequence, now) for b, c, s, r in marks])
        cur = db.execute(
            "UPDATE runs SET state = 'delivered', updated = ? WHERE state IN ('sealed', 'exported') "
            "AND EXISTS (SELECT 1 FROM bundles b WHERE b.run_id = runs.run_id) "
            f"AND NOT EXISTS (SELECT 1 FROM bundles b WHERE b.run_id = runs.run_id AND NOT ({_CONFIRMED_HERE}) "
            f"AND COALESCE({_MARK}, '') != 'delivered')", (now,))
        return cur.rowcount


class StaleReceipt(Exception):
    def __init__(self, newest: int) -> None:
        super().__init__(f"sequence {newest} is already recorded")
        self.newest = newest


# --- retention ------------------------------------------------------------------------------

def outbox_bundles(ledger: Ledger) -> list[dict[str, Any]]:
    """Every bundle of this node's outbox not yet pruned, oldest first, with how it is known to
    have arrived: ``confirmed_here`` (delivered by this host) and ``gateway_says`` (a receipt)."""
    return [dict(r) for r in ledger.db.execute(
        f"SELECT b.bundle_id, b.run_id, b.segment, b.name, b.path, b.content_id, b.state, b.created, "
        f"b.exported_at, {_CONFIRMED_HERE} AS confirmed_here, {_MARK} AS gateway_says FROM bundles b "
        f"WHERE b.state IN ('sealed', 'exported') AND {_NOT_PRUNED} ORDER BY b.created, b.bundle_id", ("outbox",))]


def staged_bundles(ledger: Ledger) -> list[dict[str, Any]]:
    """Every imported bundle still staged, with ``confirmed`` (deliveries of its content that
    a server confirmed) and ``open`` (its deliveries in any other state)."""
    return [dict(r) for r in ledger.db.execute(
        "SELECT b.bundle_id, b.run_id, b.segment, b.path, b.content_id, "
        "(SELECT COUNT(*) FROM deliveries d WHERE d.run_id = b.run_id AND d.segment = b.segment "
        " AND d.content_id = b.content_id AND d.state = 'confirmed') AS confirmed, "
        "(SELECT COUNT(*) FROM deliveries d WHERE d.run_id = b.run_id AND d.segment = b.segment "
        " AND d.state != 'confirmed') AS open "
        f"FROM bundles b WHERE b.state = 'imported' AND {_NOT_PRUNED} ORDER BY b.created, b.bundle_id", ("staging",))]


def record_pruned(ledger: Ledger, entries: list[tuple[str, str, str, str, int]], now: float) -> None:
    """``(kind, ident, path, why, bytes)`` for each thing removed from disk."""
    with ledger.tx() as db:
        db.executemany("INSERT OR REPLACE INTO pruned (kind, ident, path, why, bytes, pruned_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [(*e, now) for e in entries])


# --- status ---------------------------------------------------------------------------------

def unconfirmed(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """This node's bundles not known to have arrived (and still in the outbox), oldest first."""
    if not has_tables(db):
        rows = db.execute(f"SELECT b.bundle_id, b.run_id, b.segment, b.name, b.state, b.created, b.exported_at, "
                          f"NULL AS gateway_says, NULL AS gateway_reason FROM bundles b "
                          f"WHERE b.state IN ('sealed', 'exported') AND NOT {_CONFIRMED_HERE} "
                          f"ORDER BY b.created, b.bundle_id")
    else:
        rows = db.execute(
            f"SELECT b.bundle_id, b.run_id, b.segment, b.name, b.state, b.created, b.exported_at, "
            f"{_MARK} AS gateway_says, (SELECT m.reason FROM receipt_marks m WHERE m.bundle_id = b.bundle_id) "
            f"AS gateway_reason FROM bundles b WHERE b.state IN ('sealed', 'exported') AND NOT {_CONFIRMED_HERE} "
            f"AND COALESCE({_MARK}, '') != 'delivered' AND {_NOT_PRUNED} ORDER BY b.created, b.bundle_id",
            ("outbox",))
    return [dict(r) for r in rows]


def pruned_ids(ledger: Ledger, kind: str) -> set[str]:
    """What retention removed of ``kind`` (outbox | staging | quarantine): bundle ids, or names."""
    if not has_tables(ledger.db):
        return set()
    return {r[0] for r in ledger.db.execute("SELECT ident FROM pruned WHERE kind = ?", (kind,))}
