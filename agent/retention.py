"""Retention: what the agent removes from its own disk, and when (``tfwb-agent prune``, and the
daemon every ``retention.interval_seconds``).

- An outbox bundle goes once it is known to have arrived: delivered by this host (a target
  confirmed its very content) or said delivered by a gateway's receipt. Sealed, exported,
  imported-but-not-delivered and refused bundles stay — unless the site set an explicit
  ``outbox_max_age_days`` or ``outbox_max_mb``, which drop bundles whether they arrived or not.
- A gateway's ``staging/<bundle_id>`` (a decrypted, redacted run) goes once a target confirmed
  its content and no delivery of it is still open (pending, held, failed, uploading).
- A quarantine entry goes ``quarantine_days`` after the refusal.

``plan`` is pure (rows and sizes in, removals out); ``prune`` looks, removes and records.
Nothing is removed outside the state directory's own outbox, staging and quarantine.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import audit, durable, ids, statedir
from .ledger import receipts as lr
from .retention_config import RetentionConfig, retention_config

log = logging.getLogger("tfwb_agent.retention")
DAY = 86400.0
SIG_SUFFIX = ".minisig"


@dataclass(frozen=True)
class Removal:
    kind: str   # outbox | staging | quarantine
    ident: str  # bundle id, or the quarantine entry's name
    path: str
    why: str
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    kept_unconfirmed: int = 0  # outbox bundles left because nothing says they arrived

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": [r.as_dict() for r in self.removed], "freed_bytes": self.freed,
                "kept_unconfirmed": self.kept_unconfirmed}


# --- the rules (pure) ----------------------------------------------------------------------

def plan_outbox(rows: list[dict[str, Any]], sizes: dict[str, int | None], rc: RetentionConfig,
                now: float) -> tuple[list[Removal], int]:
    """Outbox removals, and how many bundles stay unconfirmed. ``rows`` oldest first, from
    ``ledger.receipts.outbox_bundles``; ``sizes``: bundle id -> bytes on disk (None: gone)."""
    out: list[Removal] = []
    left: list[dict[str, Any]] = []
    for r in rows:
        size = sizes.get(r["bundle_id"])
        if r["confirmed_here"]:
            out.append(Removal("outbox", r["bundle_id"], r["path"], "delivered by this host", size or 0))
        elif r["gateway_says"] == "delivered":
            out.append(Removal("outbox", r["bundle_id"], r["path"], "delivered, says a gateway's receipt", size or 0))
        elif size is None:
            continue  # not in the outbox and not known to have arrived: nothing to do, nothing to record
        elif rc.outbox_max_age_days is not None and now - r["created"] > rc.outbox_max_age_days * DAY:
            out.append(Removal("outbox", r["bundle_id"], r["path"],
                               f"unconfirmed, older than retention.outbox_max_age_days = {rc.outbox_max_age_days:g}",
                               size))
        else:
            left.append(r)
    if rc.outbox_max_mb is not None:
        limit = rc.outbox_max_mb * (1 << 20)
        total = sum(sizes.get(r["bundle_id"]) or 0 for r in left)
        while left and total > limit:
            r = left.pop(0)
            size = sizes.get(r["bundle_id"]) or 0
            total -= size
            out.append(Removal("outbox", r["bundle_id"], r["path"],
                               f"unconfirmed, the outbox exceeds retention.outbox_max_mb = {rc.outbox_max_mb:g}",
                               size))
    return out, len(left)


def plan_staging(rows: list[dict[str, Any]], sizes: dict[str, int]) -> list[Removal]:
    return [Removal("staging", r["bundle_id"], r["path"], f"delivered ({r['confirmed']} target(s) confirmed it)",
                    sizes.get(r["bundle_id"], 0))
            for r in rows if r["confirmed"] > 0 and r["open"] == 0]


def plan_quarantine(entries: list[tuple[str, str, float, int]], rc: RetentionConfig, now: float) -> list[Removal]:
    """``entries``: (name, path, refused at, bytes)."""
    return [Removal("quarantine", name, path, f"refused more than retention.quarantine_days = "
                                              f"{rc.quarantine_days:g} ago", size)
            for name, path, at, size in entries if now - at > rc.quarantine_days * DAY]


def refused_at(name: str, fallback: float) -> float:
    """When a quarantine entry was made: the UTC stamp its name starts with (``statedir``)."""
    try:
        return float(calendar.timegm(time.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return fallback


# --- the shell -----------------------------------------------------------------------------

def _tree_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _own_child(root: Path, path: str) -> Path | None:
    """``path`` if it is a plain child of ``root`` (a ledger row never sends removal elsewhere)."""
    p = Path(path)
    return p if p.parent == root and not ids.why_not(p.name) and not p.is_symlink() else None


def _size(p: Path | None) -> int | None:
    try:
        return p.stat().st_size if p is not None and p.is_file() else None
    except OSError:
        return None


def plan(cfg: Any, ledger: Any, now: float) -> tuple[list[Removal], int]:
    rc = retention_config(cfg)
    lr.ensure_receipt_tables(ledger)
    outbox, staging, quarantine = statedir.outbox(cfg), statedir.staging(cfg), statedir.quarantine(cfg)
    rows = lr.outbox_bundles(ledger)
    sizes = {r["bundle_id"]: _size(_own_child(outbox, r["path"])) for r in rows}
    removals, left = plan_outbox(rows, sizes, rc, now)
    staged = [r for r in lr.staged_bundles(ledger) if _own_child(staging, r["path"]) is not None]
    removals += plan_staging(staged, {r["bundle_id"]: _tree_bytes(Path(r["path"])) for r in staged})
    entries = []
    if quarantine.is_dir():
        for e in sorted(quarantine.iterdir()):
            if e.is_dir() and not e.is_symlink():
                entries.append((e.name, str(e), refused_at(e.name, e.stat().st_mtime), _tree_bytes(e)))
    removals += plan_quarantine(entries, rc, now)
    return removals, left


def prune(cfg: Any, ledger: Any, dry_run: bool = False, now: float | None = None) -> Report:
    """Apply retention once (the caller holds the state lock). Each removal is recorded in the
    ledger and the audit log after its files are gone."""
    now = time.time() if now is None else now
    removals, left = plan(cfg, ledger, now)
    report = Report(dry_run, kept_unconfirmed=left)
    if dry_run:
        report.removed = removals
        return report
    for r in removals:
        p = Path(r.path)
        if r.kind == "outbox":
            p.unlink(missing_ok=True)  # the bundle first: a signature alone is swept by the outbox's recover
            Path(f"{p}{SIG_SUFFIX}").unlink(missing_ok=True)
        elif p.exists():
            shutil.rmtree(p)
        report.removed.append(r)
    if removals:
        for d in {Path(r.path).parent for r in removals if Path(r.path).parent.is_dir()}:
            durable.fsync_dir(d)
        lr.record_pruned(ledger, [(r.kind, r.ident, r.path, r.why, r.bytes) for r in removals], now)
        for r in removals:
            audit.append(statedir.audit_log(cfg), {"kind": "pruned", **r.as_dict()})
    return report


class RetentionStage:
    """The daemon's stage: ``prune`` every ``retention.interval_seconds`` (first at its first
    turn). One lives as long as its daemon, with the time the next prune is due."""
    __name__ = "retention_stage"  # the stage's name in the daemon's log and metrics

    def __init__(self) -> None:
        self.next_due = 0.0

    def __call__(self, ledger: Any, cfg: Any) -> None:
        now = time.time()
        if now < self.next_due:
            return None
        self.next_due = now + retention_config(cfg).interval_seconds
        report = prune(cfg, ledger, now=now)
        if report.removed:
            log.info("retention removed %d item(s), %d bytes: %s", len(report.removed), report.freed,
                     ", ".join(f"{r.kind} {r.ident} ({r.why})" for r in report.removed[:10]))
        return None


# --- quarantine: one copy per refused bundle ------------------------------------------------

def _file_digest(p: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def quarantined_copy(quarantine: Path, bundle: Path, reason: str) -> Path | None:
    """The quarantine entry already holding this very bundle (same name, same bytes) refused
    for the same reason, if any: importing the same medium again adds no second copy."""
    if not quarantine.is_dir() or not bundle.is_file():
        return None
    size, digest = bundle.stat().st_size, None
    for e in sorted(quarantine.iterdir()):
        copy = e / bundle.name
        try:
            if e.is_symlink() or not copy.is_file() or copy.is_symlink() or copy.stat().st_size != size:
                continue
            info = json.loads((e / "reason.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or info.get("reason") != reason:
            continue
        digest = digest or _file_digest(bundle)
        if _file_digest(copy) == digest:
            return e
    return None
