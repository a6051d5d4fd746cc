"""A durable copy of the scalar rows a run logged, kept next to its checkpoint.

wandb 0.31 buffers the `.wandb` file in whole blocks, so a SIGKILL loses the rows logged since
the last flush. Rows up to a checkpoint are fsynced with it; after a restart, the rows the
killed part logged but never wrote are replayed, so the delivered run has no gap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, step: int, row: dict[str, Any]) -> None:
        # Buffered, not fsynced: a row only has to be durable once a checkpoint covers it.
        self._f.write(json.dumps({"step": step, "row": row}, separators=(",", ":")) + "\n")

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self._f.flush()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a kill mid-write
                yield int(rec["step"]), rec["row"]

    def truncate_after(self, step: int) -> list[tuple[int, dict[str, Any]]]:
        """Drop rows after ``step`` (they will be trained and logged again); return the rest."""
        keep = [(s, r) for s, r in self.rows() if s <= step]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for s, r in keep:
                f.write(json.dumps({"step": s, "row": r}, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._f.close()
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")
        return keep

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
