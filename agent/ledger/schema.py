"""The ledger's schema: the tables, in migrations applied in order at open.

The schema carries a version (``PRAGMA user_version``). Append new migrations at the end;
never edit one that has shipped.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# receipts_issued  a gateway's receipts: one row per sequence number it has handed out
# receipts_seen    a node's newest receipt per gateway key (replay protection)
# receipt_marks    a node's bundles as the gateway's receipts describe them
# pruned           what retention removed from disk (outbox bundles, staging, quarantine)
RECEIPT_TABLES = """
CREATE TABLE IF NOT EXISTS receipts_issued (
    sequence INTEGER PRIMARY KEY,
    file     TEXT,
    created  REAL NOT NULL,
    bundles  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS receipts_seen (
    gateway_key_id TEXT PRIMARY KEY,
    gateway        TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    file           TEXT NOT NULL,
    imported_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS receipt_marks (
    bundle_id   TEXT PRIMARY KEY,
    content_id  TEXT NOT NULL,
    status      TEXT NOT NULL,   -- imported | delivered | refused (as the gateway said)
    reason      TEXT,
    gateway     TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    marked_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pruned (
    kind       TEXT NOT NULL,    -- outbox | staging | quarantine
    ident      TEXT NOT NULL,    -- bundle id, or the quarantine entry's name
    path       TEXT NOT NULL,
    why        TEXT NOT NULL,
    bytes      INTEGER NOT NULL DEFAULT 0,
    pruned_at  REAL NOT NULL,
    PRIMARY KEY (kind, ident)
)
"""

MIGRATIONS: list[str] = [
    # 1: runs as the watcher sees them.
    """
    CREATE TABLE runs (
        key            TEXT PRIMARY KEY,      -- the run directory on this host
        run_id         TEXT,
        project        TEXT,
        entity         TEXT,
        wandb_version  TEXT,
        log_path       TEXT,
        state          TEXT NOT NULL,         -- live | ended | invalid | sealed | exported | delivered | quarantined
        ended          TEXT,                  -- finished | crashed | NULL while live
        reason         TEXT,                  -- why invalid/crashed, in words
        read_offset    INTEGER NOT NULL DEFAULT 0,
        size           INTEGER NOT NULL DEFAULT 0,
        steps          INTEGER NOT NULL DEFAULT 0,
        records        INTEGER NOT NULL DEFAULT 0,
        exit_code      INTEGER,
        torn_at        INTEGER,
        facts          TEXT NOT NULL DEFAULT '{}',  -- JSON: artifact paths, sensitive keys, ...
        mtime          REAL,
        first_seen     REAL NOT NULL,
        updated        REAL NOT NULL,
        last_error     TEXT
    );
    CREATE INDEX runs_state ON runs(state);
    CREATE INDEX runs_run_id ON runs(run_id);
    """,
    # 2: bundles (sealed segments) and what the gateway imported, for replay detection.
    """
    CREATE TABLE bundles (
        bundle_id   TEXT PRIMARY KEY,
        run_key     TEXT,
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        name        TEXT NOT NULL,
        path        TEXT NOT NULL,
        content_id  TEXT NOT NULL,
        byte_start  INTEGER,
        byte_end    INTEGER,
        state       TEXT NOT NULL,            -- sealed | exported | imported | quarantined
        created     REAL NOT NULL,
        exported_at REAL,
        reason      TEXT
    );
    CREATE INDEX bundles_run ON bundles(run_id, segment);
    CREATE TABLE imports (
        content_id  TEXT PRIMARY KEY,
        bundle_id   TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        signer      TEXT NOT NULL,
        staging     TEXT NOT NULL,
        imported_at REAL NOT NULL
    );
    """,
    # 3: deliveries per (run, segment, target) and the targets' health.
    """
    CREATE TABLE deliveries (
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        target      TEXT NOT NULL,
        content_id  TEXT,
        state       TEXT NOT NULL,            -- pending | uploading | confirmed | failed | held
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        updated     REAL NOT NULL,
        PRIMARY KEY (run_id, segment, target)
    );
    CREATE TABLE targets (
        name         TEXT PRIMARY KEY,
        status       TEXT NOT NULL,           -- online | offline | key_rejected | no_key | unknown
        detail       TEXT,
        failures     INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        updated      REAL NOT NULL
    );
    CREATE TABLE approvals (
        run_id      TEXT PRIMARY KEY,
        approved_at REAL NOT NULL,
        approved_by TEXT
    );
    """,
    # 4: delivery bookkeeping: who is uploading (pid + kernel start time), when to try again,
    # what the server held and what was sent; the policy's verdict in words.
    """
    ALTER TABLE deliveries ADD COLUMN uploader_pid INTEGER;
    ALTER TABLE deliveries ADD COLUMN uploader_start INTEGER;
    ALTER TABLE deliveries ADD COLUMN next_attempt REAL;
    ALTER TABLE deliveries ADD COLUMN server_rows INTEGER;
    ALTER TABLE deliveries ADD COLUMN rows_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN reason TEXT;
    ALTER TABLE deliveries ADD COLUMN confirmed_at REAL;
    CREATE INDEX deliveries_state ON deliveries(target, state);
    """,
    # 5: what an imported or sealed bundle's manifest says of its run (project, entity), so the
    # gateway never reads a log or opens a bundle again to find them; an import's own state
    # (imported | delivered). Rows from before are filled once at open (``backfill``).
    """
    ALTER TABLE bundles ADD COLUMN project TEXT;
    ALTER TABLE bundles ADD COLUMN entity TEXT;
    ALTER TABLE bundles ADD COLUMN identity_known INTEGER NOT NULL DEFAULT 0;  -- 0: an older row, not known
    ALTER TABLE imports ADD COLUMN project TEXT;
    ALTER TABLE imports ADD COLUMN entity TEXT;
    ALTER TABLE imports ADD COLUMN state TEXT NOT NULL DEFAULT 'imported';
    UPDATE imports SET state = 'delivered' WHERE EXISTS (SELECT 1 FROM deliveries d WHERE
        d.run_id = imports.run_id AND d.segment = imports.segment AND d.content_id = imports.content_id
        AND d.state = 'confirmed');
    """,
    # 6: receipts and retention's tables (``RECEIPT_TABLES``, above). IF NOT EXISTS: a ledger from
    # before this migration may have them already, made by ``receipts.ensure_receipt_tables``.
    RECEIPT_TABLES,
    # 7: the log facts an imported bundle's manifest carries (``segments.sealed_facts``, as JSON),
    # so a gateway plans its delivery from them instead of folding the run's log again. Imports
    # from before keep none (NULL; staging holds the run directory only, not the manifest):
    # their logs are read at delivery, as they were.
    """
    ALTER TABLE imports ADD COLUMN log_facts TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
TABLES = {"runs", "bundles", "imports", "deliveries", "targets", "approvals",
          "receipts_issued", "receipts_seen", "receipt_marks", "pruned"}


def apply(db: sqlite3.Connection, version: int) -> None:
    """Bring a ledger at ``version`` to ``SCHEMA_VERSION`` (inside the caller's transaction)."""
    for n in range(version, SCHEMA_VERSION):
        for stmt in MIGRATIONS[n].split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA user_version = {n + 1}")
    if version < 5 <= SCHEMA_VERSION:
        backfill_identity(db)


def backfill_identity(db: sqlite3.Connection) -> None:
    """Imports recorded before migration 5: their project and entity from the manifest their
    staging directory keeps (``MANIFEST.json``, written at import), once. A bundle in this
    node's outbox takes them from its run's row; one sealed by hand with no row stays without
    (delivery then holds it and says why)."""
    for bundle_id, staging in db.execute("SELECT bundle_id, staging FROM imports").fetchall():
        try:
            run = json.loads((Path(staging) / "MANIFEST.json").read_text()).get("run") or {}
        except (OSError, ValueError, AttributeError):
            continue
        db.execute("UPDATE imports SET project = ?, entity = ? WHERE bundle_id = ?",
                   (run.get("project"), run.get("entity"), bundle_id))
        db.execute("UPDATE bundles SET project = ?, entity = ?, identity_known = 1 WHERE bundle_id = ?",
                   (run.get("project"), run.get("entity"), bundle_id))
    db.execute("UPDATE bundles SET project = (SELECT r.project FROM runs r WHERE r.key = bundles.run_key), "
               "entity = (SELECT r.entity FROM runs r WHERE r.key = bundles.run_key), identity_known = 1 "
               "WHERE identity_known = 0 AND run_key IN (SELECT key FROM runs)")
