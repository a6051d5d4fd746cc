"""Bookkeeping: what became of each segment sent to a target, written to the ledger.

Every outcome of a delivery attempt goes through ``Book``: ``confirmed`` (the server's answer
says it holds the segment), ``retry`` (pending again, after a back-off), ``failed`` (needs a
person: ``sync --retry-failed``), and ``settle_error``, which says which of those an exception
means. Each writes the ledger's ``set_delivery`` transition and logs the outcome once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..ledger import Ledger
from ..wandb_log import LogError
from . import backoff, confirm
from . import server as srv
from .settings import SyncSettings, Target
from .work import Unit

log = logging.getLogger("tfwb_agent.deliver")

NOT_CONFIRMED = "not confirmed after wandb sync"
STOPPED = "stopped (the agent was stopped) before the server confirmed it; the next round asks the server what arrived"


class NotYet(Exception):
    """An earlier segment must be confirmed first."""


class DeliveryError(Exception):
    """A segment that cannot be delivered now; the message says why, in words."""


@dataclass
class Outcome:
    run_id: str
    segment: int
    target: str
    state: str                  # confirmed | pending | held | failed | uploading | skipped
    detail: str
    rows_sent: int = 0
    bytes_sent: int = 0


@dataclass
class RoundReport:
    target: str
    status: str | None = None   # the target's status after this round
    detail: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    waiting: int = 0            # segments allowed but not sent this round (offline, back-off, uploads running)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "detail": self.detail, "waiting": self.waiting,
                "outcomes": [o.__dict__ for o in self.outcomes]}


def delivery(ledger: Ledger, u: Unit, target: str) -> dict[str, Any] | None:
    return ledger.delivery(u.run_id, u.segment, target)


def set_state(ledger: Ledger, u: Unit, target: str, state: str, audit: dict[str, Any] | None = None,
              **fields: Any) -> None:
    ledger.set_delivery(run_id=u.run_id, segment=u.segment, content_id=u.content_id, bundle_id=u.bundle_id,
                        target=target, state=state, audit=audit, **fields)


class Book:
    """The ledger's record of one target's deliveries, one outcome at a time."""

    def __init__(self, ledger: Ledger, t: Target, settings: SyncSettings) -> None:
        self.ledger, self.t, self.settings = ledger, t, settings

    def delivery(self, u: Unit) -> dict[str, Any]:
        return delivery(self.ledger, u, self.t.name) or {}

    def set(self, u: Unit, state: str, **fields: Any) -> None:
        set_state(self.ledger, u, self.t.name, state, **fields)

    def settle_error(self, u: Unit, exc: Exception) -> Outcome:
        if isinstance(exc, NotYet):
            return self.retry(u, str(exc), None)
        if isinstance(exc, DeliveryError):
            return self.failed(u, str(exc), None)
        if isinstance(exc, srv.TLSFailure):
            return self.retry(u, str(exc), None)
        if isinstance(exc, (srv.Unreachable, srv.KeyRejected)):
            return self.retry(u, f"server trouble: {exc}", None)
        if isinstance(exc, srv.ServerError):
            return self.retry(u, f"server answered oddly: {exc}", None)
        if isinstance(exc, LogError):  # a verified bundle whose log is damaged: it will not heal by waiting
            return self.failed(u, f"segment {u.segment} of {u.run_id}: its .wandb log cannot be read ({exc}); "
                                  "not delivered (`sync --retry-failed` tries again)", None)
        # Anything else is a bug, but one unit's bug must not abort the round for the others.
        log.exception("%s segment %d -> %s: unexpected error", u.run_id, u.segment, self.t.name)
        return self.retry(u, f"unexpected error ({type(exc).__name__}: {exc}); asked again later", None)

    def confirmed(self, u: Unit, j: confirm.Judgement, rows: int, size: int, how: str, through: int) -> Outcome:
        now = time.time()
        prev = self.delivery(u)
        # server_rows: the run's history rows through this segment (what a later part builds on).
        self.set(u, "confirmed", last_error=None, reason=f"{how}: {j.detail}",
                 server_rows=through, rows_sent=prev.get("rows_sent", 0) + rows,
                 bytes_sent=prev.get("bytes_sent", 0) + size, confirmed_at=now, next_attempt=None,
                 uploader_pid=None, uploader_start=None, audit={
                     "kind": "delivered", "run_id": u.run_id, "segment": u.segment, "content_id": u.content_id,
                     "bundle_id": u.bundle_id, "target": self.t.name, "base_url": self.t.base_url, "rows_sent": rows,
                     "bytes_sent": size, "server_rows": through, "how": how})
        log.info("%s segment %d -> %s: confirmed (%s; %d rows, %d bytes sent)", u.run_id, u.segment, self.t.name,
                 how, rows, size)
        return Outcome(u.run_id, u.segment, self.t.name, "confirmed", how, rows, size)

    def retry(self, u: Unit, why: str, server_rows: int | None) -> Outcome:
        n = max(1, self.delivery(u).get("attempts", 0))
        nxt = time.time() + backoff.delay(n, self.settings.backoff_base, self.settings.backoff_cap)
        self.set(u, "pending", last_error=why, next_attempt=nxt, server_rows=server_rows,
                 uploader_pid=None, uploader_start=None)
        log.warning("%s segment %d -> %s: will retry: %s", u.run_id, u.segment, self.t.name, why)
        return Outcome(u.run_id, u.segment, self.t.name, "pending", why)

    def failed(self, u: Unit, why: str, server_rows: int | None) -> Outcome:
        self.set(u, "failed", last_error=why, server_rows=server_rows,
                 uploader_pid=None, uploader_start=None, next_attempt=None)
        log.error("%s segment %d -> %s: failed: %s", u.run_id, u.segment, self.t.name, why)
        return Outcome(u.run_id, u.segment, self.t.name, "failed", why)
