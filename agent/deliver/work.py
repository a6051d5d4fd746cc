"""Finding work: the segments this host could deliver, as the ledger knows them.

A segment comes from this node's outbox (a bundle ``sealed`` or ``exported``) or from this
gateway's staging (a bundle ``imported``). Its project and entity are the ledger's (kept when it
was sealed or imported), never read again from a log or a bundle. A bundle retention pruned
(a gateway's receipt said it arrived, and its file is gone) is no work: there is nothing left
to open, and the gateway delivered it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from ..ledger.receipts import pruned_ids


@dataclass
class Unit:
    """One segment of one run, ready to be considered for delivery."""
    run_id: str
    segment: int
    content_id: str
    bundle_id: str
    source: str                 # outbox | staged
    path: Path                  # the bundle file (outbox) or the staged directory
    created: float
    project: str | None = None
    entity: str | None = None
    identity_known: bool = True  # False: an older ledger's row that never kept its project and entity


NO_IDENTITY = ("the ledger does not know this bundle's project and entity (recorded by an older agent, which did "
               "not keep them); seal the run again (`tfwb-agent seal`), then sync")

# What retention calls each source when it records a pruned bundle (ledger/receipts.py ``pruned.kind``).
_PRUNED_KIND = {"outbox": "outbox", "staged": "staging"}


def pending_units(ledger: Ledger) -> list[Unit]:
    """Every bundle this host could deliver, oldest run first, segments in order."""
    units: dict[tuple[str, int], Unit] = {}
    for r in ledger.deliverable():
        source = "staged" if r["state"] == "imported" else "outbox"
        u = Unit(r["run_id"], r["segment"], r["content_id"], r["bundle_id"], source, Path(r["path"]), r["created"],
                 r["run_project"], r["run_entity"], bool(r["identity_known"]))
        units[(u.run_id, u.segment)] = u  # a newer bundle of the same segment replaces an older one
    # Dropped after the newest bundle of each segment is chosen: an older bundle of a segment
    # whose newest was pruned is older content, not something to deliver in its place.
    pruned = {kind: pruned_ids(ledger, kind) for kind in _PRUNED_KIND.values()}
    kept = [u for u in units.values() if u.bundle_id not in pruned[_PRUNED_KIND[u.source]]]
    return sorted(kept, key=lambda u: (u.created if u.segment == 0 else 0, u.run_id, u.segment))


def settled(d: dict[str, Any] | None, u: Unit, retry_failed: bool) -> bool:
    """Nothing to do for ``u`` on the target of its delivery row ``d``: this very content is
    confirmed there, or failed and waits for an operator (``sync --retry-failed``)."""
    if not d or d["content_id"] != u.content_id:
        return False
    return d["state"] == "confirmed" or (d["state"] == "failed" and not retry_failed)
