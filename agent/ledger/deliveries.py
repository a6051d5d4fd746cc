"""The ``deliveries`` table (one row per run segment and target) and the ``targets`` table (each
target's health as the last probe found it).

``set_delivery`` is the one writer of a delivery's state: it refuses to deliver a bundle that is
quarantined or unknown (``states``), and a confirmation moves the run (on a node) or the import
(on a gateway) to ``delivered`` once every one of its bundles reached a target.
"""
from __future__ import annotations

import time
from typing import Any

from . import states


class DeliveriesTable:
    # --- reading ----------------------------------------------------------------------------

    def delivery(self, run_id: str, segment: int, target: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM deliveries WHERE run_id = ? AND segment = ? AND target = ?",
                        (run_id, segment, target))
        return dict(row) if row else None

    def deliveries(self, target: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Deliveries (to ``target``, of ``run_id``, when given), by run, segment and target."""
        where, params = [], []
        for col, value in (("target", target), ("run_id", run_id)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = "SELECT * FROM deliveries" + (" WHERE " + " AND ".join(where) if where else "")
        return [dict(r) for r in self._all(sql + " ORDER BY run_id, segment, target", tuple(params))]

    def uploaders(self, target: str) -> list[dict[str, Any]]:
        """The uploads to ``target`` recorded as running: (uploader_pid, uploader_start)."""
        return [dict(r) for r in self._all("SELECT uploader_pid, uploader_start FROM deliveries WHERE target = ? AND "
                                           "state = 'uploading' AND uploader_pid IS NOT NULL", (target,))]

    def deliverable(self) -> list[dict[str, Any]]:
        """Every bundle this host could deliver (in this node's outbox, or imported into this
        gateway's staging), with its run's project and entity: the run's row on this node, else
        what the bundle's manifest said when it was sealed or imported (``identity_known`` 0:
        an older ledger's row that never kept it)."""
        return [dict(r) for r in self._all(
            "SELECT b.*, CASE WHEN r.key IS NULL THEN b.project ELSE r.project END AS run_project, "
            "CASE WHEN r.key IS NULL THEN b.entity ELSE r.entity END AS run_entity, "
            "r.key IS NOT NULL OR b.identity_known AS identity_known "
            "FROM bundles b LEFT JOIN runs r ON r.key = b.run_key "
            "WHERE b.state IN ('sealed', 'exported', 'imported') ORDER BY b.run_id, b.segment, b.created")]

    def target(self, name: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM targets WHERE name = ?", (name,))
        return dict(row) if row else None

    def targets(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM targets ORDER BY name")]

    # --- transitions --------------------------------------------------------------------------

    def set_delivery(self, *, run_id: str, segment: int, content_id: str, bundle_id: str, target: str, state: str,
                     audit: dict[str, Any] | None = None, **fields: Any) -> None:
        """Where the delivery of one bundle to ``target`` stands now, with its bookkeeping."""
        now = time.time()
        with self.tx() as db:
            b = db.execute("SELECT state FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
            if b is None or b[0] == "quarantined":
                states.refuse("bundle", bundle_id, b[0] if b else None, "delivered")
            prev = db.execute("SELECT state, content_id FROM deliveries WHERE run_id = ? AND segment = ? AND target = ?",
                              (run_id, segment, target)).fetchone()
            # A new content of the segment (sealed again, imported anew) is a delivery afresh.
            old = prev["state"] if prev and prev["content_id"] == content_id else None
            states.check(f"delivery of {run_id} segment {segment} to", target, states.DELIVERIES, old, state)
            db.execute("INSERT OR IGNORE INTO deliveries (run_id, segment, target, content_id, state, updated) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (run_id, segment, target, content_id, state, now))
            fields = {"content_id": content_id, "state": state, "updated": now, **fields}
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE deliveries SET {sets} WHERE run_id = ? AND segment = ? AND target = ?",
                       (*fields.values(), run_id, segment, target))
            if state == "confirmed":
                self._import_delivered(db, bundle_id)
                # A run whose every bundle reached some target is delivered (for `status`).
                keys = [r[0] for r in db.execute(
                    "SELECT key FROM runs WHERE run_id = ? AND state IN ('sealed', 'exported') AND NOT EXISTS "
                    "(SELECT 1 FROM bundles b WHERE b.run_id = runs.run_id AND NOT EXISTS (SELECT 1 FROM deliveries d "
                    "WHERE d.run_id = b.run_id AND d.segment = b.segment AND d.state = 'confirmed'))", (run_id,))]
                self._runs_to(db, keys, "delivered")
            if audit is not None:
                self._audit(audit)

    def record_target(self, name: str, status: str, detail: str | None, failures: int,
                      next_attempt: float | None, now: float) -> None:
        """What the last probe of target ``name`` found, and when to probe next."""
        self._write("INSERT INTO targets (name, status, detail, failures, next_attempt, updated) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET status = excluded.status, detail = excluded.detail, "
                    "failures = excluded.failures, next_attempt = excluded.next_attempt, updated = excluded.updated",
                    (name, status, detail, failures, next_attempt, now))
