"""The ledger's connection: transactions, one lock for the threads that share it, and the audit
lines its transitions write once their transaction has committed.

WAL mode, so ``status`` reads while the daemon writes. Every state change happens inside one
transaction (``with ledger.tx():``); nested uses join the outer one.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .. import audit, failures, statedir
from . import schema
from .errors import LedgerError


class LedgerCore:
    def __init__(self, path: Path | str, audit_log: Path | str | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # The audit log lives beside the ledger in the state directory (statedir's layout).
        self.audit_log = Path(audit_log) if audit_log else path.parent / statedir.AUDIT_LOG
        # One connection, shared by the delivery's upload threads: every use holds this lock.
        self._lock = threading.RLock()
        self._audit_queue: list[dict[str, Any]] = []
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
        if self.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION:
            return  # current: nothing to write (a read-only ledger can still be read)
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > schema.SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema version {version} is newer than this agent knows "
                    f"({schema.SCHEMA_VERSION}); upgrade tfwb-agent")
            schema.apply(db, version)

    @property
    def schema_version(self) -> int:
        return self._one("PRAGMA user_version")[0]

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction. Nested uses join the outer one (a pass commits runs in batches). The
        audit lines of its transitions are written after it commits, and dropped if it rolls back."""
        with self._lock:
            if self.db.in_transaction:
                yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                self._audit_queue.clear()
                raise
            self.db.execute("COMMIT")
            events, self._audit_queue = self._audit_queue, []
            if events:
                audit.append_many(self.audit_log, events)

    def _audit(self, event: dict[str, Any]) -> None:
        """Queue an audit line for the transaction in progress (every caller is inside ``tx``)."""
        assert self.db.in_transaction, "a transition is audited from inside its transaction"
        self._audit_queue.append(event)

    def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self.db.execute(sql, params).fetchone()

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self.tx() as db:
            return db.execute(sql, params)

    def close(self) -> None:
        self.db.close()
