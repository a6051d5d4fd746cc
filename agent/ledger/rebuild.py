"""``tfwb-agent ledger rebuild``: a new ledger from what lies outside the old one."""
from __future__ import annotations

import calendar
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import audit, ids, statedir
from ..reconcile import ClaimBook, reconcile
from ..seal import keys_config, seal_keys
from ..seal.keystore import KeyFileError
from ..seal.outbox import _verify_own
from . import Ledger



@dataclass
class RebuildReport:
    ledger: str
    moved_aside: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    bundles: dict[str, int] = field(default_factory=dict)
    imports: int = 0
    deliveries: int = 0
    approvals: int = 0
    runs_sealed_from_markers: int = 0
    runs_sealed_from_outbox: int = 0
    live_resumed: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def move_aside(path: Path) -> list[Path]:
    """Rename the ledger and its -wal/-shm/-journal files to ``<name>.damaged-<time>...`` (never
    deleted: what it held may still be read from them). Returns the new names."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while any(Path(f"{base}{x}").exists() for x in ("", "-wal", "-shm", "-journal")):
        n += 1
        base = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    moved = []
    for extra in ("", "-wal", "-shm", "-journal"):
        src = Path(f"{path}{extra}")
        if src.exists() or src.is_symlink():
            dst = Path(f"{base}{extra}")
            os.rename(src, dst)
            moved.append(dst)
    return moved


def _audit_events(log_path: Path, report: RebuildReport) -> list[dict[str, Any]]:
    if not log_path.is_file():
        report.notes.append(f"no audit log at {log_path}: bundles are known from the outbox alone")
        return []
    broken = audit.verify(log_path)
    if broken:
        report.notes.append(f"the audit log {log_path} has {len(broken)} problem(s) (`tfwb-agent audit verify`); "
                            "its readable lines were used")
    events = []
    with open(log_path, "rb") as f:
        for raw in f:
            try:
                line = json.loads(raw)
                event = dict(line["event"], _time=line.get("time"))
            except (ValueError, KeyError, TypeError):
                continue
            events.append(event)
    return events


def _when(event: dict[str, Any] | None, fallback: float) -> float:
    try:
        return float(calendar.timegm(time.strptime(event["_time"], "%Y-%m-%dT%H:%M:%SZ")))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return fallback


def rebuild(cfg: Any) -> RebuildReport:
    """Move the ledger aside and build a new one from what lies outside it: the outbox (each
    bundle's signed facts, checked with this node's key), the audit log (byte ranges, exports,
    imports, deliveries, approvals), the gateway's staging, and the volume (every run read
    again, and the claims' "sealed by NODE as BUNDLE" markers). A run this node sealed is
    recorded sealed, so it is never sealed again. The caller holds the state directory's locks."""
    path = Path(cfg.ledger_path)
    report = RebuildReport(str(path))
    report.moved_aside = [str(p) for p in move_aside(path)]

    ledger = Ledger(path)
    try:
        events = _audit_events(statedir.audit_log(cfg), report)
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_kind.setdefault(str(e.get("kind")), []).append(e)
        sealed_ev = {e.get("bundle_id"): e for e in by_kind.get("sealed", [])}
        exported_ev = {e.get("bundle_id"): e for e in by_kind.get("exported", [])}
        with ledger.tx() as db:
            _outbox_bundles(cfg, db, sealed_ev, exported_ev, report)
            _imported_bundles(cfg, db, by_kind.get("imported", []), report)
            for e in by_kind.get("delivered", []):
                db.execute(
                    "INSERT OR REPLACE INTO deliveries (run_id, segment, target, content_id, state, attempts, updated, "
                    "server_rows, rows_sent, bytes_sent, reason, confirmed_at) VALUES (?, ?, ?, ?, 'confirmed', 1, ?, "
                    "?, ?, ?, ?, ?)",
                    (e.get("run_id"), e.get("segment"), e.get("target"), e.get("content_id"), time.time(),
                     e.get("server_rows"), e.get("rows_sent") or 0, e.get("bytes_sent") or 0,
                     f"from the audit log: {e.get('how', 'delivered')}", _when(e, time.time())))
                report.deliveries += 1
            # An import a target confirmed is delivered (as set_delivery would have it).
            db.execute("UPDATE imports SET state = 'delivered' WHERE EXISTS (SELECT 1 FROM deliveries d WHERE "
                       "d.run_id = imports.run_id AND d.segment = imports.segment AND "
                       "d.content_id = imports.content_id AND d.state = 'confirmed')")
            for e in by_kind.get("approved", []):
                db.execute("INSERT OR REPLACE INTO approvals (run_id, approved_at, approved_by) VALUES (?, ?, ?)",
                           (e.get("run_id"), _when(e, time.time()), e.get("by")))
                report.approvals += 1
        if cfg.watch.roots:
            book = ClaimBook(cfg)
            reconcile(ledger, cfg, book=book)
            _link_runs(ledger, cfg, book, report, ids)
        report.runs = ledger.counts()
        report.bundles = ledger.bundle_counts()
    finally:
        ledger.close()

    audit.append(statedir.audit_log(cfg), {"kind": "ledger_rebuilt", "ledger": str(path),
                                          "moved_aside": report.moved_aside, "runs": report.runs,
                                          "bundles": report.bundles})
    return report


def _outbox_bundles(cfg: Any, db: sqlite3.Connection, sealed_ev: dict, exported_ev: dict,
                    report: RebuildReport) -> None:
    outbox = cfg.state_dir / "outbox"
    files = sorted(f for f in outbox.glob(f"*{statedir.BUNDLE_SUFFIX}") if f.is_file() and not f.is_symlink()) \
        if outbox.is_dir() else []
    if not files:
        return
    try:
        pub = seal_keys(keys_config(cfg)).signer.public()
    except (KeyFileError, ValueError, Exception) as exc:  # a gateway, or keys not readable
        report.notes.append(f"{len(files)} bundle(s) in {outbox} not taken up: this node's signing key is needed "
                            f"to check them ({exc})")
        return
    for f in files:
        facts = _verify_own(f, pub)
        if facts is None:
            report.notes.append(f"{f.name}: not a whole bundle signed by this node's key; left in the outbox, not recorded")
            continue
        ev = sealed_ev.get(facts.bundle_id) or {}
        start, end = (ev.get("byte_range") or [None, None])[:2]
        state = "exported" if facts.bundle_id in exported_ev else "sealed"
        db.execute("INSERT OR REPLACE INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, "
                   "byte_start, byte_end, state, created, exported_at) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (facts.bundle_id, facts.run_id, facts.segment, f.name, str(f), facts.content_id, start, end, state,
                    _when(ev or None, f.stat().st_mtime),
                    _when(exported_ev.get(facts.bundle_id), time.time()) if state == "exported" else None))


def _imported_bundles(cfg: Any, db: sqlite3.Connection, imported: list[dict[str, Any]], report: RebuildReport) -> None:
    for e in imported:
        try:
            staged = statedir.staged(cfg, str(e.get("bundle_id")))
        except ids.BadId:
            continue
        if not staged.is_dir():
            report.notes.append(f"imported bundle {e.get('bundle')} ({e.get('bundle_id')}) is no longer staged; "
                                "not recorded (import the medium again if it was not delivered)")
            continue
        manifest: dict[str, Any] = {}
        try:
            manifest = json.loads((staged / "MANIFEST.json").read_text())
        except (OSError, ValueError):
            pass
        seg, run = manifest.get("segment") or {}, manifest.get("run") or {}
        now = _when(e, time.time())
        db.execute("INSERT OR REPLACE INTO imports (content_id, bundle_id, run_id, segment, signer, staging, imported_at, "
                   "project, entity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (e.get("content_id"), e.get("bundle_id"), e.get("run_id"), e.get("segment"), e.get("signer") or "?",
                    str(staged), now, run.get("project"), run.get("entity")))
        db.execute("INSERT OR REPLACE INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, "
                   "byte_start, byte_end, state, created, project, entity, identity_known) "
                   "VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, 'imported', ?, ?, ?, ?)",
                   (e.get("bundle_id"), e.get("run_id"), e.get("segment"), e.get("bundle"), str(staged),
                    e.get("content_id"), seg.get("byte_start"), seg.get("byte_end"), now, run.get("project"),
                    run.get("entity"), int(bool(manifest))))
        report.imports += 1


def _link_runs(ledger: Any, cfg: Any, book: Any, report: RebuildReport, ids: Any) -> None:
    """Runs read again from the volume, tied to what this node sealed of them: the claims'
    markers first (sealed.json names the bundle; segment-<k>.json the live segments), else a
    bundle in the outbox for the run's id and part (an agent from before the markers)."""
    for row in ledger.runs():
        if not row["run_id"] or row["state"] not in ("live", "ended"):
            continue
        run_dir = Path(row["key"])
        try:
            claims = book.for_run(run_dir)
            marker = claims.sealed_by(run_dir.name)
            resume = claims.resume_point(run_dir.name)
        except ids.BadId:
            continue
        if marker and marker.get("node") != cfg.node_name:
            continue  # another node's run (reconcile has let it go)
        if marker:
            bundle_id = marker.get("bundle_id")
            mine = [bundle_id, *(m.get("bundle_id") for m in claims.sealed_segments(run_dir.name).values()
                                 if m.get("node") == cfg.node_name)]
            with ledger.tx() as db:
                db.executemany("UPDATE bundles SET run_key = ? WHERE bundle_id = ?", [(row["key"], b) for b in mine])
                db.execute("UPDATE runs SET state = 'sealed', last_error = NULL, updated = ? WHERE key = ?",
                           (time.time(), row["key"]))
            if not ledger.db.execute("SELECT 1 FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone():
                report.notes.append(f"{run_dir.name}: sealed by this node as {marker.get('bundle')}, which is not in "
                                    "the outbox any more; recorded sealed (it is not sealed again)")
            report.runs_sealed_from_markers += 1
            continue
        if resume is not None:  # delivered live: go on after the segments sealed
            facts = dict(row["facts"], live_segments=resume["segment"], live_byte_end=resume["byte_start"],
                         live_rows=resume["rows"])
            with ledger.tx() as db:
                db.execute("UPDATE bundles SET run_key = ? WHERE run_id = ? AND run_key IS NULL", (row["key"], row["run_id"]))
                db.execute("UPDATE runs SET facts = ?, updated = ? WHERE key = ?",
                           (ledger.encode_facts(facts), time.time(), row["key"]))
            report.live_resumed += 1
            continue
        if row["state"] != "ended":
            continue
        part = ledger.part_number(row["run_id"], row["key"])
        hit = ledger.db.execute("SELECT bundle_id FROM bundles WHERE run_id = ? AND segment = ? AND run_key IS NULL "
                                "AND state IN ('sealed', 'exported')", (row["run_id"], part)).fetchone()
        if hit:
            with ledger.tx() as db:
                db.execute("UPDATE bundles SET run_key = ? WHERE bundle_id = ?", (row["key"], hit[0]))
                db.execute("UPDATE runs SET state = 'sealed', last_error = NULL, updated = ? WHERE key = ?",
                           (time.time(), row["key"]))
            report.runs_sealed_from_outbox += 1
