"""Claims: when several agents watch one shared volume, each run is handled by one of them.

Layout in the claims directory (on the shared volume; the agent needs write access there only):

    nodes/<node>.alive     {"expires": T}: the node's lease, renewed every lease/3 seconds
    runs/<run>/<gen>.claim {"node": N}: who holds the run, generation ``gen``

A claim is created with O_EXCL, which is atomic on local filesystems and on NFSv3+. The holder
of the highest generation owns the run while its node's lease is fresh. Anyone may take over a
run whose holder's lease has expired by creating the next generation; only one creator wins.

One lease per node, not per run: renewing is one write, however many runs a node holds (an
agent watching 10,000 runs would otherwise rewrite 10,000 files per lease period).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

_GEN = re.compile(r"^(\d+)\.claim$")


def _write_atomic(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _create_exclusive(path: Path, body: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder that died mid-write


@dataclass
class Claims:
    """This node's view of one claims directory."""

    root: Path
    node: str
    lease_seconds: float
    held: set[str] = field(default_factory=set)  # runs we hold, valid while our lease never lapsed
    _beat_until: float = 0.0
    _last_beat: float = 0.0

    def heartbeat(self, now: float | None = None) -> None:
        """Renew this node's lease when a third of it has passed."""
        now = time.time() if now is None else now
        if now - self._last_beat < self.lease_seconds / 3:
            return
        if now > self._beat_until:
            # Our lease lapsed (the daemon stalled or was down): others may have taken runs.
            self.held.clear()
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        self._beat_until = now + self.lease_seconds
        _write_atomic(self.root / "nodes" / f"{self.node}.alive", json.dumps({"expires": self._beat_until}).encode())
        self._last_beat = now

    def node_alive(self, node: str, now: float) -> bool:
        data = _read_json(self.root / "nodes" / f"{node}.alive")
        return bool(data) and float(data.get("expires", 0)) > now

    def current(self, run: str) -> tuple[int, str] | None:
        """(generation, node) of the newest claim on ``run``, or None."""
        try:
            with os.scandir(self.root / "runs" / run) as it:
                gens = sorted((int(m[1]) for e in it if (m := _GEN.match(e.name))), reverse=True)
        except FileNotFoundError:
            return None
        for gen in gens:
            data = _read_json(self.root / "runs" / run / f"{gen}.claim")
            if data is not None:
                return gen, str(data.get("node", "?"))
        return None

    def acquire(self, run: str, now: float | None = None) -> bool:
        """True if this node holds ``run`` afterwards (claiming it or taking it over)."""
        now = time.time() if now is None else now
        self.heartbeat(now)
        if run in self.held:
            return True
        cur = self.current(run)
        if cur is not None:
            gen, holder = cur
            if holder == self.node:
                self.held.add(run)
                return True
            if self.node_alive(holder, now):
                return False
        gen = 0 if cur is None else cur[0] + 1
        d = self.root / "runs" / run
        d.mkdir(parents=True, exist_ok=True)
        if not _create_exclusive(d / f"{gen}.claim", json.dumps({"node": self.node}).encode()):
            return False
        self.held.add(run)
        return True

    def holder(self, run: str) -> str | None:
        cur = self.current(run)
        return cur[1] if cur else None
