"""The ``bundles`` table: sealed segments in this node's outbox, bundles imported into this
gateway's staging, and bundles refused at import; and their named transitions.

Every transition passes ``states.BUNDLES`` and its audit line (``sealed``, ``exported``,
``quarantined``; the caller gives what the line carries) is written once it has committed.
"""
from __future__ import annotations

import time
from typing import Any

from . import states


class BundlesTable:
    # --- reading ----------------------------------------------------------------------------

    def bundle(self, bundle_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM bundles WHERE bundle_id = ?", (bundle_id,))
        return dict(row) if row else None

    def bundles(self, *in_states: str) -> list[dict[str, Any]]:
        """Bundles in any of ``in_states`` (all when none are named), oldest first."""
        if not in_states:
            return [dict(r) for r in self._all("SELECT * FROM bundles ORDER BY created, bundle_id")]
        marks = ", ".join("?" for _ in in_states)
        return [dict(r) for r in self._all(f"SELECT * FROM bundles WHERE state IN ({marks}) "
                                           "ORDER BY created, bundle_id", in_states)]

    def bundle_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._all("SELECT state, COUNT(*) FROM bundles GROUP BY state")}

    def outbox_bundle_of(self, run_id: str, segment: int) -> dict[str, Any] | None:
        """The newest bundle of a segment still in (or carried from) this node's outbox."""
        row = self._one("SELECT * FROM bundles WHERE run_id = ? AND segment = ? AND state IN ('sealed', 'exported') "
                        "ORDER BY created DESC LIMIT 1", (run_id, segment))
        return dict(row) if row else None

    def sealed_extent(self, run_id: str, run_key: str) -> tuple[int | None, int | None]:
        """(the highest segment sealed of the run, where the sealed part of this directory's log ends)."""
        top = self._one("SELECT MAX(segment) FROM bundles WHERE run_id = ?", (run_id,))[0]
        end = self._one("SELECT MAX(byte_end) FROM bundles WHERE run_key = ?", (run_key,))[0]
        return top, end

    def first_segment_after_other_parts(self, run_id: str, run_key: str) -> int:
        """The segment number after every segment sealed of the run's other directories (a
        killed job resumed with the same id writes a new one): where this directory's own
        segments may begin (0 if there are none)."""
        top = self._one("SELECT MAX(segment) FROM bundles WHERE run_id = ? AND run_key IS NOT ?", (run_id, run_key))[0]
        return 0 if top is None else top + 1

    def holds_bundle(self, bundle_id: str, content_id: str | None = None) -> dict[str, Any] | None:
        """What this host holds under ``bundle_id`` (imported, or in a bundle row not refused):
        its content id, since when and in which state."""
        row = self._one("SELECT content_id, imported_at AS at, state FROM imports WHERE bundle_id = ? UNION ALL "
                        "SELECT content_id, created AS at, state FROM bundles WHERE bundle_id = ? "
                        "AND state != 'quarantined' LIMIT 1", (bundle_id, bundle_id))
        return dict(row) if row else None

    def part_start(self, run_id: str, segment: int) -> int:
        """The first segment of the part of ``run_id`` that ``segment`` belongs to: the latest
        segment up to it whose log starts afresh (a restarted job's own run directory, no
        ``byte_start``); 0 for the run's first part. A live cut of a later part continues that
        part's log, and its rows add to what the parts before it brought, as the part's first
        segment's do."""
        row = self._one("SELECT MAX(segment) FROM bundles WHERE run_id = ? AND segment > 0 AND segment <= ? "
                        "AND COALESCE(byte_start, 0) = 0", (run_id, segment))
        return int(row[0]) if row and row[0] is not None else 0

    def knows_run_id(self, run_id: str) -> bool:
        return self._one("SELECT 1 FROM bundles WHERE run_id = ? UNION SELECT 1 FROM runs WHERE run_id = ?",
                         (run_id, run_id)) is not None

    # --- transitions --------------------------------------------------------------------------

    def record_sealed(self, *, bundle_id: str, run_key: str | None, run_id: str, segment: int, name: str, path: str,
                      content_id: str, byte_start: int | None, byte_end: int | None, project: str | None,
                      entity: str | None, audit: dict[str, Any]) -> None:
        """A bundle whole in the outbox (or found there again after a crash: the same row).
        Rows of older bundles under the same name, whose file it replaced, go."""
        with self.tx() as db:
            prev = db.execute("SELECT state FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
            states.check("bundle", bundle_id, states.BUNDLES, prev[0] if prev else None, "sealed", "sealed again")
            db.execute(
                "INSERT INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, byte_start, "
                "byte_end, state, created, project, entity, identity_known) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sealed', ?, ?, ?, 1) "
                "ON CONFLICT(bundle_id) DO UPDATE SET run_key = COALESCE(excluded.run_key, run_key), "
                "path = excluded.path, project = excluded.project, entity = excluded.entity, identity_known = 1",
                (bundle_id, run_key, run_id, segment, name, path, content_id, byte_start, byte_end, time.time(),
                 project, entity))
            db.execute("DELETE FROM bundles WHERE run_id = ? AND segment = ? AND state = 'sealed' AND bundle_id != ?",
                       (run_id, segment, bundle_id))
            self._audit(audit)

    def mark_exported(self, bundle_ids: list[str], audits: list[dict[str, Any]]) -> None:
        """The bundles are on the medium (copied, read back, verified). A run none of whose
        bundles is left unexported is ``exported`` too."""
        now = time.time()
        with self.tx() as db:
            keys = set()
            for bid in bundle_ids:
                row = db.execute("SELECT state, run_key FROM bundles WHERE bundle_id = ?", (bid,)).fetchone()
                if row is None or row[0] != "sealed":  # exported once: never marked again
                    states.refuse("bundle", bid, row[0] if row else None, "exported")
                db.execute("UPDATE bundles SET state = 'exported', exported_at = ? WHERE bundle_id = ?", (now, bid))
                if row["run_key"]:
                    keys.add(row["run_key"])
            for a in audits:
                self._audit(a)
            done = [k for k in sorted(keys) if not db.execute(
                "SELECT 1 FROM bundles WHERE run_key = ? AND state = 'sealed'", (k,)).fetchone()]
            self._runs_to(db, done, "exported")

    def quarantine_bundle(self, *, bundle_id: str, run_id: str, segment: int, name: str, path: str,
                          content_id: str, reason: str, audit: dict[str, Any]) -> None:
        """A bundle refused at import (kept in quarantine with its reason; never delivered).
        A second refusal of the same bundle id adds nothing but its audit line."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, "
                       "state, created, reason) VALUES (?, NULL, ?, ?, ?, ?, ?, 'quarantined', ?, ?)",
                       (bundle_id, run_id, segment, name, path, content_id, time.time(), reason))
            self._audit(audit)
