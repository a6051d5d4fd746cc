"""The ``runs`` table: one row per run directory this node watches, and its named transitions.

Every change of a run's state passes ``states.RUNS`` and is a ``run`` line in the audit log.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from . import states

# A run delivered live is closed by its last live segment (sealing.seal_live_segments), not by the ended-run stage.
_WAITING_TO_SEAL = "state = 'ended' AND json_extract(facts, '$.live_segments') IS NULL"


def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["facts"] = json.loads(d.get("facts") or "{}")
    return d


def encode_facts(facts: dict[str, Any]) -> str:
    return json.dumps(facts, sort_keys=True)


class RunsTable:
    # --- reading ----------------------------------------------------------------------------

    def run(self, key: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM runs WHERE key = ?", (key,))
        return run_dict(row) if row else None

    def runs(self) -> list[dict[str, Any]]:
        return [run_dict(r) for r in self._all("SELECT * FROM runs ORDER BY first_seen, key")]

    def runs_in_state(self, state: str, limit: int = -1) -> list[dict[str, Any]]:
        """Runs in ``state``, the longest untouched first (a run that just failed goes last)."""
        return [run_dict(r) for r in self._all("SELECT * FROM runs WHERE state = ? ORDER BY updated, key LIMIT ?",
                                               (state, limit))]

    def runs_to_seal(self, limit: int = -1) -> list[dict[str, Any]]:
        """Ended runs waiting to be sealed whole (not those delivered live), longest untouched first."""
        return [run_dict(r) for r in self._all(f"SELECT * FROM runs WHERE {_WAITING_TO_SEAL} "
                                               "ORDER BY updated, key LIMIT ?", (limit,))]

    def live_runs(self) -> list[dict[str, Any]]:
        """Runs whose segments are cut while they are written: live ones, and ended ones some
        of whose live segments are sealed already."""
        return self.runs_in_state("live") + [r for r in self.runs_in_state("ended") if r["facts"].get("live_segments")]

    def find_runs(self, ident: str) -> list[dict[str, Any]]:
        """Runs whose run id, directory or directory name is ``ident``."""
        rows = self._all("SELECT * FROM runs WHERE run_id = ? OR key = ? OR key LIKE ? ORDER BY first_seen",
                         (ident, ident, f"%/{ident}"))
        return [run_dict(r) for r in rows]

    def runs_where(self, condition: str, params: tuple = (), limit: int = -1) -> list[dict[str, Any]]:
        """Runs matching an SQL condition: for tests and tools (the agent's own code asks by name)."""
        return [run_dict(r) for r in self._all(f"SELECT * FROM runs WHERE {condition} ORDER BY updated, key LIMIT ?",
                                               (*params, limit))]

    def has_run(self, run_id: str) -> bool:
        return self._one("SELECT 1 FROM runs WHERE run_id = ? LIMIT 1", (run_id,)) is not None

    def run_glance(self) -> dict[str, tuple]:
        """Per run directory: (state, size, mtime, log_path, ended), one query for a whole pass."""
        return {r[0]: tuple(r[1:]) for r in self._all("SELECT key, state, size, mtime, log_path, ended FROM runs")}

    def part_keys(self, run_id: str) -> list[str]:
        """The directories (not invalid) that hold parts of run ``run_id``."""
        return [r[0] for r in self._all("SELECT key FROM runs WHERE run_id = ? AND state != 'invalid'", (run_id,))]

    def part_number(self, run_id: str, key: str) -> int:
        """Which part of run ``run_id`` the directory ``key`` is. A job killed and restarted with
        the same run id writes a second ``offline-run-<time>-<id>`` directory that resumes the run:
        the parts are its segments, in the order of their start times (the directory names)."""
        return sorted(self.part_keys(run_id), key=lambda k: (os.path.basename(k), k)).index(key)

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._all("SELECT state, COUNT(*) FROM runs GROUP BY state")}

    encode_facts = staticmethod(encode_facts)

    # --- transitions --------------------------------------------------------------------------

    def record_run(self, row: dict[str, Any], audit: dict[str, Any] | None = None) -> None:
        """Write what the watcher read of a run (a whole row; its state among live, ended,
        invalid, or a revised ending: ``audit`` is the revision's own audit line)."""
        with self.tx() as db:
            if audit is not None:
                self._audit(audit)
            prev = db.execute("SELECT state FROM runs WHERE key = ?", (row["key"],)).fetchone()
            old = prev[0] if prev else None
            self._check_run(row["key"], old, row["state"])
            row = dict(row, facts=encode_facts(row.get("facts") or {}))
            now = time.time()
            row.setdefault("first_seen", now)
            row["updated"] = now
            cols, marks = ", ".join(row), ", ".join("?" for _ in row)
            db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))
            self._audit_run(row["key"], row.get("run_id"), old, row["state"], row.get("reason"))

    def save_run(self, db: sqlite3.Connection, row: dict[str, Any]) -> None:
        """``record_run`` inside a caller's ``tx()`` (the form older callers use)."""
        self.record_run(row)

    def note_file(self, key: str, size: int, mtime: float | None) -> None:
        """The run's file as it is now (touched, nothing new in it); its state stays."""
        self._write("UPDATE runs SET size = ?, mtime = ?, updated = ? WHERE key = ?", (size, mtime, time.time(), key))

    def set_run_facts(self, key: str, facts: dict[str, Any], last_error: Any = ...) -> None:
        """What the pipeline learnt of a run (segments sealed, where to go on); its state stays."""
        extra = {} if last_error is ... else {"last_error": last_error}
        self._move_run(key, None, facts=encode_facts(facts), **extra)

    def mark_invalid(self, key: str, reason: str) -> None:
        self._move_run(key, "invalid", reason=reason, last_error=reason)

    def mark_run_sealed(self, key: str, facts: dict[str, Any] | None = None) -> None:
        """The run is in the outbox as a bundle (its last segment, for a run delivered live)."""
        extra = {} if facts is None else {"facts": encode_facts(facts)}
        self._move_run(key, "sealed", last_error=None, **extra)

    def quarantine_run(self, key: str, reason: str) -> None:
        self._move_run(key, "quarantined", last_error=reason)

    def drop_run(self, key: str) -> None:
        """Forget a run that another node holds now (it took the run over, or sealed it). Runs
        this node sealed stay: their bundles are this node's to carry. Should the run come back
        to this node, it is read again from the start."""
        self._write("DELETE FROM runs WHERE key = ? AND state NOT IN ('sealed', 'exported', 'delivered')", (key,))

    # --- one place that moves a run -------------------------------------------------------------

    def _move_run(self, key: str, state: str | None, **fields: Any) -> None:
        """Set ``state`` (None: keep it) and ``fields`` of run ``key``, if its machine allows."""
        with self.tx() as db:
            prev = db.execute("SELECT state, run_id FROM runs WHERE key = ?", (key,)).fetchone()
            if prev is None:
                return  # dropped meanwhile (another node took it): nothing to move
            new = state or prev["state"]
            self._check_run(key, prev["state"], new)
            sets = ", ".join(f"{k} = ?" for k in ("state", *fields, "updated"))
            db.execute(f"UPDATE runs SET {sets} WHERE key = ?", (new, *fields.values(), time.time(), key))
            self._audit_run(key, prev["run_id"], prev["state"], new, fields.get("reason") or fields.get("last_error"))

    def _runs_to(self, db: sqlite3.Connection, keys: list[str], state: str) -> None:
        """Move several runs to ``state`` (set-wide rules: exported, delivered), each checked."""
        for key in keys:
            prev = db.execute("SELECT state, run_id FROM runs WHERE key = ?", (key,)).fetchone()
            if prev is None or prev["state"] == state or not states.allowed(states.RUNS, prev["state"], state):
                continue  # a set-wide rule moves only the runs it may
            db.execute("UPDATE runs SET state = ?, updated = ? WHERE key = ?", (state, time.time(), key))
            self._audit_run(key, prev["run_id"], prev["state"], state, None)

    def _check_run(self, key: str, old: str | None, new: str) -> None:
        states.check("run", key, states.RUNS, old, new)

    def _audit_run(self, key: str, run_id: str | None, old: str | None, new: str, reason: Any) -> None:
        if old != new:
            self._audit({"kind": "run", "run_id": run_id, "run_dir": key, "state": new, "was": old,
                         **({"reason": reason} if reason else {})})
