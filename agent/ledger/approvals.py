"""The ``approvals`` table: runs an operator let go under a ``hold = true`` policy."""
from __future__ import annotations

import time
from typing import Any


class ApprovalsTable:
    def is_approved(self, run_id: str) -> bool:
        return self._one("SELECT 1 FROM approvals WHERE run_id = ?", (run_id,)) is not None

    def approve(self, run_id: str, by: str, now: float | None = None) -> float:
        """Approve ``run_id``: its held deliveries become pending (the next round asks the
        policy again). Returns when it was approved."""
        now = time.time() if now is None else now
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO approvals (run_id, approved_at, approved_by) VALUES (?, ?, ?)",
                       (run_id, now, by))
            db.execute("UPDATE deliveries SET state = 'pending', updated = ? WHERE run_id = ? AND state = 'held'",
                       (now, run_id))
            self._audit({"kind": "approved", "run_id": run_id, "by": by})
        return now

    def approvals(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM approvals ORDER BY approved_at")]
