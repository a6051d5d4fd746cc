"""The ``imports`` table: what a gateway imported from removable media (for replay detection),
with the run's project and entity and its log's facts as the bundle's verified manifest says,
so delivery never reads a log or opens a bundle again to learn them. An import is
``imported``, then ``delivered`` once a target confirmed it."""
from __future__ import annotations

import json
import time
from typing import Any

from . import states


def _log_facts_json(manifest: dict[str, Any]) -> str | None:
    """What ``imports.log_facts`` keeps of a manifest: its ``log_facts`` as JSON, or NULL (an
    older agent sealed it without them: delivery then reads the log)."""
    facts = manifest.get("log_facts")
    return json.dumps(facts, separators=(",", ":")) if isinstance(facts, dict) else None


class ImportsTable:
    def import_of_content(self, content_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM imports WHERE content_id = ?", (content_id,))
        return dict(row) if row else None

    def is_imported(self, bundle_id: str) -> bool:
        return self._one("SELECT 1 FROM imports WHERE bundle_id = ?", (bundle_id,)) is not None

    def imports(self) -> list[dict[str, Any]]:
        """Every import, oldest first, with its bundle's file name."""
        return [dict(r) for r in self._all(
            "SELECT i.run_id, i.segment, i.bundle_id, i.content_id, i.signer, i.imported_at, i.state, i.project, "
            "i.entity, b.name FROM imports i LEFT JOIN bundles b ON b.bundle_id = i.bundle_id ORDER BY i.imported_at")]

    def import_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._all("SELECT state, COUNT(*) FROM imports GROUP BY state")}

    def import_log_facts(self, bundle_id: str, content_id: str) -> dict[str, Any] | None:
        """The log facts the imported bundle's manifest carried (``segments.sealed_facts``), or
        None: not an import, or sealed by an agent that kept none (delivery reads the log)."""
        row = self._one("SELECT log_facts FROM imports WHERE bundle_id = ? AND content_id = ?", (bundle_id, content_id))
        if row is None or row[0] is None:
            return None
        try:
            facts = json.loads(row[0])
        except ValueError:
            return None
        return facts if isinstance(facts, dict) else None

    def record_import(self, *, manifest: dict[str, Any], signer: str, name: str, staging: str,
                      audit: dict[str, Any]) -> None:
        """A verified bundle, staged: the import (its content id is never imported again, its
        manifest's log facts kept for delivery) and its bundle row, from which delivery takes it."""
        run, seg = manifest["run"], manifest["segment"]
        with self.tx() as db:
            prev = db.execute("SELECT state FROM imports WHERE content_id = ?", (manifest["content_id"],)).fetchone()
            states.check("import", manifest["content_id"], states.IMPORTS, prev[0] if prev else None, "imported",
                         "imported again")
            now = time.time()
            db.execute("INSERT INTO imports (content_id, bundle_id, run_id, segment, signer, staging, imported_at, "
                       "project, entity, state, log_facts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'imported', ?)",
                       (manifest["content_id"], manifest["bundle_id"], run["run_id"], seg["number"], signer, staging,
                        now, run.get("project"), run.get("entity"), _log_facts_json(manifest)))
            db.execute("INSERT OR REPLACE INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, "
                       "byte_start, byte_end, state, created, project, entity, identity_known) "
                       "VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, 'imported', ?, ?, ?, 1)",
                       (manifest["bundle_id"], run["run_id"], seg["number"], name, staging, manifest["content_id"],
                        seg.get("byte_start"), seg.get("byte_end"), now, run.get("project"), run.get("entity")))
            self._audit(audit)

    def _import_delivered(self, db: Any, bundle_id: str) -> None:
        """A target confirmed an imported bundle: the import is delivered (its run, on the
        gateway). Audited by the delivery's own line."""
        row = db.execute("SELECT state FROM imports WHERE bundle_id = ?", (bundle_id,)).fetchone()
        if row is not None and row[0] != "delivered":
            states.check("import", bundle_id, states.IMPORTS, row[0], "delivered")
            db.execute("UPDATE imports SET state = 'delivered' WHERE bundle_id = ?", (bundle_id,))
