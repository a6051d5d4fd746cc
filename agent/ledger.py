"""The ledger: what the agent knows about every run, bundle and delivery, in SQLite.

WAL mode, so ``status`` reads while the daemon writes. Every state change happens inside one
transaction (``with ledger.tx() as db:``). The schema carries a version (``PRAGMA
user_version``); ``MIGRATIONS`` are applied in order at open. Append new migrations at the
end; never edit one that has shipped.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import failures

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
]

SCHEMA_VERSION = len(MIGRATIONS)


class LedgerError(Exception):
    pass


class Ledger:
    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction is one
        # explicit unit and writers never deadlock upgrading a read lock.
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:  # damaged, read-only, a full disk: say which and what to do
            self.db.close()
            raise LedgerError(failures.ledger_message(path, exc)) from None

    def _migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # current: nothing to write (a read-only ledger can still be read)
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema version {version} is newer than this agent knows "
                    f"({SCHEMA_VERSION}); upgrade tfwb-agent")
            for n in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[n].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {n + 1}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction. Nested uses join the outer one (a pass commits runs in batches)."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # --- runs -------------------------------------------------------------------------------

    def run(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return _run_dict(row) if row else None

    def runs(self) -> list[dict[str, Any]]:
        return [_run_dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY first_seen, key")]

    def runs_in_state(self, state: str, limit: int = -1) -> list[dict[str, Any]]:
        """Runs in ``state``, the longest untouched first (a run that just failed goes last)."""
        return self.runs_where("state = ?", (state,), limit)

    def runs_where(self, condition: str, params: tuple = (), limit: int = -1) -> list[dict[str, Any]]:
        """Runs matching an SQL condition (written by the caller, values as parameters)."""
        rows = self.db.execute(f"SELECT * FROM runs WHERE {condition} ORDER BY updated, key LIMIT ?", (*params, limit))
        return [_run_dict(r) for r in rows]

    @staticmethod
    def encode_facts(facts: dict[str, Any]) -> str:
        return json.dumps(facts, sort_keys=True)

    def find_runs(self, ident: str) -> list[dict[str, Any]]:
        """Runs whose run id, directory or directory name is ``ident``."""
        rows = self.db.execute(
            "SELECT * FROM runs WHERE run_id = ? OR key = ? OR key LIKE ? ORDER BY first_seen",
            (ident, ident, f"%/{ident}"),
        )
        return [_run_dict(r) for r in rows]

    def save_run(self, db: sqlite3.Connection, row: dict[str, Any]) -> None:
        """Insert or replace a run row (inside a ``tx()``)."""
        row = dict(row)
        row["facts"] = self.encode_facts(row.get("facts") or {})
        now = time.time()
        row.setdefault("first_seen", now)
        row["updated"] = now
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def set_run_state(self, key: str, state: str, **fields: Any) -> None:
        with self.tx() as db:
            sets = ", ".join(f"{k} = ?" for k in ("state", *fields, "updated"))
            db.execute(f"UPDATE runs SET {sets} WHERE key = ?", (state, *fields.values(), time.time(), key))

    def drop_run(self, key: str) -> None:
        """Forget a run that another node holds now (it took the run over, or sealed it). Runs
        this node sealed stay: their bundles are this node's to carry. Should the run come back
        to this node, it is read again from the start."""
        with self.tx() as db:
            db.execute("DELETE FROM runs WHERE key = ? AND state NOT IN ('sealed', 'exported', 'delivered')", (key,))

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state")}


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["facts"] = json.loads(d.get("facts") or "{}")
    return d
