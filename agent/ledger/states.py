"""One state machine per entity: which state may follow which. Pure; the tables' modules ask
``check`` before they write a state, so an illegal step is refused before anything changes.

``None`` is "not in the ledger yet". A step to the same state is always allowed (it updates
the entity's other fields); it is not a transition and is not audited.

Runs (a run directory on this node; see README, "How a run is classified")::

    (new) ──> live ──> ended ──> sealed ──> exported ──> delivered
     │         │  ↑      │  │       │                      ↑
     │         │  └──────┘  │       └──────────────────────┘
     │         ↓            ↓
     └──────> invalid    quarantined
    a run sealed as crashed whose log grows again goes back to live (ending revised)

Bundles: (new) -> sealed -> exported on a node; (new) -> imported on a gateway;
(new) -> quarantined (refused at import; never delivered).
Imports (a gateway's bundles): (new) -> imported -> delivered.
Deliveries (bundle x target): pending | held | uploading | failed | confirmed, any to any,
except that a confirmed delivery of a content stays confirmed.
"""
from __future__ import annotations

from .errors import IllegalTransition

RUN_STATES = ("live", "ended", "invalid", "sealed", "exported", "delivered", "quarantined")
# A run sealed as crashed whose log grows again is read anew (live, then ended): REVISED.
_REVISED = {"live", "ended"}
RUNS: dict[str | None, set[str]] = {
    None: {"live", "ended", "invalid"},
    "live": {"ended", "invalid", "sealed"},      # sealed: the last live segment closes it
    "ended": {"live", "invalid", "sealed", "quarantined"},
    "invalid": {"live", "ended"},                # a directory that became a readable run
    "sealed": {"exported", "delivered"} | _REVISED,
    "exported": {"delivered"} | _REVISED,
    "delivered": _REVISED,
    "quarantined": set(),                        # redaction or sealing will not pass: an operator looks
}

BUNDLE_STATES = ("sealed", "exported", "imported", "quarantined")
BUNDLES: dict[str | None, set[str]] = {
    None: {"sealed", "imported", "quarantined"},
    "sealed": {"exported"},
    "exported": set(),
    "imported": set(),
    "quarantined": set(),
}

IMPORT_STATES = ("imported", "delivered")
IMPORTS: dict[str | None, set[str]] = {None: {"imported"}, "imported": {"delivered"}, "delivered": set()}

DELIVERY_STATES = ("pending", "held", "uploading", "failed", "confirmed")
DELIVERIES: dict[str | None, set[str]] = {
    None: set(DELIVERY_STATES),
    "pending": set(DELIVERY_STATES),
    "held": set(DELIVERY_STATES),
    "uploading": set(DELIVERY_STATES),
    "failed": set(DELIVERY_STATES),
    "confirmed": set(),                          # a new content of the segment starts afresh (None)
}

_WHY = {
    ("bundle", "quarantined"): "it was refused at import and is never delivered",
    ("run", "quarantined"): "redaction or sealing failed for a reason that will not pass; see its last error",
}


def allowed(machine: dict[str | None, set[str]], old: str | None, new: str) -> bool:
    return new == old or new in machine.get(old, set())


def check(entity: str, ident: str, machine: dict[str | None, set[str]], old: str | None, new: str,
          verb: str | None = None) -> None:
    """Refuse ``old -> new`` unless ``machine`` allows it, in words: what, where it stands, why."""
    if allowed(machine, old, new):
        return
    if new not in {s for targets in machine.values() for s in targets} | set(machine) - {None}:
        raise IllegalTransition(f"{entity} {ident}: {new!r} is not a state a {entity} can be in")
    refuse(entity, ident, old, verb or new)


def refuse(entity: str, ident: str, old: str | None, verb: str) -> None:
    where = "is not in the ledger" if old is None else f"is {old}"
    why = _WHY.get((entity, old or ""))
    raise IllegalTransition(f"{entity} {ident} {where}; it cannot be {verb}" + (f" ({why})" if why else ""))
