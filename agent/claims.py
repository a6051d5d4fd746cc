"""Claims: when several agents watch one shared volume, each run is handled by one of them,
and a run one node has sealed is never sealed by another.

Layout in the claims directory (on the shared volume; the agent needs write access there only):

    nodes/<node>.alive     {"expires": T}: the node's lease, renewed every lease/3 seconds
    runs/<run>/<gen>.claim {"node": N}: who holds the run, generation ``gen``
    runs/<run>/sealed.json {"node": N, "bundle": ..., "bundle_id": ..., "content_id": ...}:
                           the run was sealed; it stays with N whatever the leases say
    runs/<run>/segment-<k>.json {"node": N, "bundle": ..., "byte_end": E, "rows": R, ...}:
                           live segment k of the run was sealed by N (``sync.live``); whoever
                           holds the run later goes on from segment k+1, never seals k again

Every file of a run is created whole: written under a temporary name, fsynced, then given its
name with ``link``, which never replaces (atomic on local filesystems and on NFSv3+); so no
reader ever sees a claim without its holder. The holder of the highest generation owns the run
while its node's lease is fresh. Anyone may take over a run whose holder's lease has expired by
creating the next generation (only one creator wins) — unless the run carries ``sealed.json``:
then it belongs to the node that sealed it, for good. A takeover resumes what the dead holder
left unfinished: without ``sealed.json``, nothing of it was sealed.

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

from . import durable, ids

_GEN = re.compile(r"^(\d+)\.claim$")
_SEGMENT = re.compile(r"^segment-(\d+)\.json$")
SEALED = "sealed.json"


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
        durable.write_bytes(self.root / "nodes" / f"{self.node}.alive", json.dumps({"expires": self._beat_until}).encode())
        self._last_beat = now

    def node_alive(self, node: str, now: float) -> bool:
        data = _read_json(self.root / "nodes" / f"{node}.alive")
        return bool(data) and float(data.get("expires", 0)) > now

    def _run_dir(self, run: str) -> Path:
        return self.root / "runs" / ids.check("run directory", run)

    def _look(self, run: str) -> tuple[tuple[int, str] | None, dict | None]:
        """(generation, node) of the newest claim on ``run`` (or None), and its sealed marker
        (or None), from one directory listing."""
        d = self._run_dir(run)
        try:
            with os.scandir(d) as it:
                names = [e.name for e in it]
        except FileNotFoundError:
            return None, None
        # A marker that cannot be read still says the run was sealed (by a node we cannot name).
        marker = (_read_json(d / SEALED) or {"node": "?"}) if SEALED in names else None
        for gen in sorted((int(m[1]) for n in names if (m := _GEN.match(n))), reverse=True):
            data = _read_json(d / f"{gen}.claim")
            if data is not None:
                return (gen, str(data.get("node", "?"))), marker
        return None, marker

    def current(self, run: str) -> tuple[int, str] | None:
        """(generation, node) of the newest claim on ``run``, or None."""
        return self._look(run)[0]

    def sealed_by(self, run: str) -> dict | None:
        """The run's sealed marker ({"node", "bundle", ...}), or None if no node sealed it."""
        return self._look(run)[1]

    def acquire(self, run: str, now: float | None = None) -> bool:
        """True if this node holds ``run`` afterwards (claiming it or taking it over). A run
        another node has sealed is never ours, whatever the leases say."""
        now = time.time() if now is None else now
        self.heartbeat(now)
        if run in self.held:
            return True
        cur, marker = self._look(run)
        if marker:
            return self._sealed_here(run, marker)
        if cur is not None:
            gen, holder = cur
            if holder == self.node:
                self.held.add(run)
                return True
            if self.node_alive(holder, now):
                return False
        gen = 0 if cur is None else cur[0] + 1
        d = self._run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        if not durable.create_exclusive(d / f"{gen}.claim", json.dumps({"node": self.node}).encode()):
            return False
        self.held.add(run)
        return True

    def _sealed_here(self, run: str, marker: dict) -> bool:
        if marker.get("node") == self.node:
            self.held.add(run)
            return True
        self.held.discard(run)
        return False

    def record_sealed(self, run: str, **info: object) -> dict:
        """Leave the durable "sealed by this node as BUNDLE" marker on ``run``; returns the marker
        that stands: ours, or another node's that was there first (then that node sealed it)."""
        d = self._run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        mine = {"node": self.node, **info, "at": time.time()}
        if durable.create_exclusive(d / SEALED, json.dumps(mine, sort_keys=True).encode()):
            self.held.add(run)
            return mine
        there = _read_json(d / SEALED) or {}
        self._sealed_here(run, there)
        return there

    def record_segment(self, run: str, segment: int, **info: object) -> dict:
        """Leave the durable "live segment ``segment`` sealed by this node" marker on ``run``;
        returns the marker that stands: ours, or another node's that was there first."""
        d = self._run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        name = f"segment-{int(segment)}.json"
        mine = {"node": self.node, "segment": int(segment), **info, "at": time.time()}
        if durable.create_exclusive(d / name, json.dumps(mine, sort_keys=True).encode()):
            return mine
        return _read_json(d / name) or {"node": "?"}

    def sealed_segments(self, run: str) -> dict[int, dict]:
        """Live segments of ``run`` sealed by any node: {segment: marker}. A marker that cannot
        be read still says its segment was sealed (by a node we cannot name)."""
        d = self._run_dir(run)
        try:
            with os.scandir(d) as it:
                names = [e.name for e in it]
        except FileNotFoundError:
            return {}
        return {int(m[1]): (_read_json(d / n) or {"node": "?"}) for n in names if (m := _SEGMENT.match(n))}

    def resume_point(self, run: str) -> dict | None:
        """Where sealing ``run`` goes on after the live segments on the volume (whoever sealed
        them): {"segment": next number, "byte_start": where the last one ended, "rows": history
        rows it held}; None if no live segment of it was sealed."""
        done = self.sealed_segments(run)
        if not done:
            return None
        last = max(done)
        m = done[last]
        return {"segment": last + 1, "byte_start": int(m.get("byte_end") or 0), "rows": int(m.get("rows") or 0),
                "by": str(m.get("node", "?"))}

    def holder(self, run: str) -> str | None:
        cur, marker = self._look(run)
        if marker:
            return str(marker.get("node", "?"))
        return cur[1] if cur else None
