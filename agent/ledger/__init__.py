"""The ledger: what the agent knows about every run, bundle and delivery, in SQLite.

WAL mode, so ``status`` reads while the daemon writes. Every state change happens inside one
transaction (``with ledger.tx() as db:``). The schema carries a version (``PRAGMA
user_version``); ``MIGRATIONS`` are applied in order at open. Append new migrations at the
end; never edit one that has shipped.
"""
from __future__ import annotations

import calendar
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import failures

MIGRATIONS: list[str] = [
    # 1: runs as the watcher sees them.
    """
    CREATE TABLE runs (
        key            TEXT PRIMARY KEY,      -- the run directory on this host
        run_id         TEXT,
        project        TEXT,
        entity         TEXT,
        wandb_version  TEXT,
        log_path       TEXT,
        state          TEXT NOT NULL,         -- live | ended | invalid | sealed | exported | delivered | quarantined
        ended          TEXT,                  -- finished | crashed | NULL while live
        reason         TEXT,                  -- why invalid/crashed, in words
        read_offset    INTEGER NOT NULL DEFAULT 0,
        size           INTEGER NOT NULL DEFAULT 0,
        steps          INTEGER NOT NULL DEFAULT 0,
        records        INTEGER NOT NULL DEFAULT 0,
        exit_code      INTEGER,
        torn_at        INTEGER,
        facts          TEXT NOT NULL DEFAULT '{}',  -- JSON: artifact paths, sensitive keys, ...
        mtime          REAL,
        first_seen     REAL NOT NULL,
        updated        REAL NOT NULL,
        last_error     TEXT
    );
    CREATE INDEX runs_state ON runs(state);
    CREATE INDEX runs_run_id ON runs(run_id);
    """,
    # 2: bundles (sealed segments) and what the gateway imported, for replay detection.
    """
    CREATE TABLE bundles (
        bundle_id   TEXT PRIMARY KEY,
        run_key     TEXT,
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        name        TEXT NOT NULL,
        path        TEXT NOT NULL,
        content_id  TEXT NOT NULL,
        byte_start  INTEGER,
        byte_end    INTEGER,
        state       TEXT NOT NULL,            -- sealed | exported | imported | quarantined
        created     REAL NOT NULL,
        exported_at REAL,
        reason      TEXT
    );
    CREATE INDEX bundles_run ON bundles(run_id, segment);
    CREATE TABLE imports (
        content_id  TEXT PRIMARY KEY,
        bundle_id   TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        signer      TEXT NOT NULL,
        staging     TEXT NOT NULL,
        imported_at REAL NOT NULL
    );
    """,
    # 3: deliveries per (run, segment, target) and the targets' health.
    """
    CREATE TABLE deliveries (
        run_id      TEXT NOT NULL,
        segment     INTEGER NOT NULL,
        target      TEXT NOT NULL,
        content_id  TEXT,
        state       TEXT NOT NULL,            -- pending | uploading | confirmed | failed | held
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        updated     REAL NOT NULL,
        PRIMARY KEY (run_id, segment, target)
    );
    CREATE TABLE targets (
        name         TEXT PRIMARY KEY,
        status       TEXT NOT NULL,           -- online | offline | key_rejected | no_key | unknown
        detail       TEXT,
        failures     INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        updated      REAL NOT NULL
    );
    CREATE TABLE approvals (
        run_id      TEXT PRIMARY KEY,
        approved_at REAL NOT NULL,
        approved_by TEXT
    );
    """,
    # 4: delivery bookkeeping: who is uploading (pid + kernel start time), when to try again,
    # what the server held and what was sent; the policy's verdict in words.
    """
    ALTER TABLE deliveries ADD COLUMN uploader_pid INTEGER;
    ALTER TABLE deliveries ADD COLUMN uploader_start INTEGER;
    ALTER TABLE deliveries ADD COLUMN next_attempt REAL;
    ALTER TABLE deliveries ADD COLUMN server_rows INTEGER;
    ALTER TABLE deliveries ADD COLUMN rows_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN reason TEXT;
    ALTER TABLE deliveries ADD COLUMN confirmed_at REAL;
    CREATE INDEX deliveries_state ON deliveries(target, state);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class LedgerError(Exception):
    pass


class Ledger:
    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction is one
        # explicit unit and writers never deadlock upgrading a read lock.
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:  # damaged, read-only, a full disk: say which and what to do
            self.db.close()
            raise LedgerError(failures.ledger_message(path, exc)) from None

    def _migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # current: nothing to write (a read-only ledger can still be read)
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema version {version} is newer than this agent knows "
                    f"({SCHEMA_VERSION}); upgrade tfwb-agent")
            for n in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[n].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {n + 1}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction. Nested uses join the outer one (a pass commits runs in batches)."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # --- runs -------------------------------------------------------------------------------

    def run(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return _run_dict(row) if row else None

    def runs(self) -> list[dict[str, Any]]:
        return [_run_dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY first_seen, key")]

    def runs_in_state(self, state: str, limit: int = -1) -> list[dict[str, Any]]:
        """Runs in ``state``, the longest untouched first (a run that just failed goes last)."""
        return self.runs_where("state = ?", (state,), limit)

    def runs_where(self, condition: str, params: tuple = (), limit: int = -1) -> list[dict[str, Any]]:
        """Runs matching an SQL condition (written by the caller, values as parameters)."""
        rows = self.db.execute(f"SELECT * FROM runs WHERE {condition} ORDER BY updated, key LIMIT ?", (*params, limit))
        return [_run_dict(r) for r in rows]

    @staticmethod
    def encode_facts(facts: dict[str, Any]) -> str:
        return json.dumps(facts, sort_keys=True)

    def find_runs(self, ident: str) -> list[dict[str, Any]]:
        """Runs whose run id, directory or directory name is ``ident``."""
        rows = self.db.execute(
            "SELECT * FROM runs WHERE run_id = ? OR key = ? OR key LIKE ? ORDER BY first_seen",
            (ident, ident, f"%/{ident}"),
        )
        return [_run_dict(r) for r in rows]

    def save_run(self, db: sqlite3.Connection, row: dict[str, Any]) -> None:
        """Insert or replace a run row (inside a ``tx()``)."""
        row = dict(row)
        row["facts"] = self.encode_facts(row.get("facts") or {})
        now = time.time()
        row.setdefault("first_seen", now)
        row["updated"] = now
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def set_run_state(self, key: str, state: str, **fields: Any) -> None:
        with self.tx() as db:
            sets = ", ".join(f"{k} = ?" for k in ("state", *fields, "updated"))
            db.execute(f"UPDATE runs SET {sets} WHERE key = ?", (state, *fields.values(), time.time(), key))

    def drop_run(self, key: str) -> None:
        """Forget a run that another node holds now (it took the run over, or sealed it). Runs
        this node sealed stay: their bundles are this node's to carry. Should the run come back
        to this node, it is read again from the start."""
        with self.tx() as db:
            db.execute("DELETE FROM runs WHERE key = ? AND state NOT IN ('sealed', 'exported', 'delivered')", (key,))

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state")}


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["facts"] = json.loads(d.get("facts") or "{}")
    return d


# --- check and rebuild (``tfwb-agent ledger check/rebuild``) ---------------------------------

RUN_STATES = {"live", "ended", "invalid", "sealed", "exported", "delivered", "quarantined"}
BUNDLE_STATES = {"sealed", "exported", "imported", "quarantined"}
TABLES = {"runs", "bundles", "imports", "deliveries", "targets", "approvals"}


def check(path: Path | str, outbox: Path | None = None) -> list[str]:
    """Every problem with the ledger at ``path``, in words; [] when it is sound. Reads only
    (never creates, migrates or repairs): SQLite's own ``integrity_check``, then the ledger's
    consistency — known tables and states, every bundle it calls sealed present in ``outbox``,
    every run it calls sealed with a bundle."""
    path = Path(path)
    if not path.is_file():
        return [f"there is no ledger file at {path}"]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return [failures.ledger_message(path, exc)]
    try:
        problems = [f"SQLite integrity check: {row[0]}" for row in db.execute("PRAGMA integrity_check(20)")
                    if row[0] != "ok"]
        if problems:
            return problems
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            return [f"schema version {version} is newer than this agent knows ({SCHEMA_VERSION}); upgrade tfwb-agent"]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0:
            return [f"schema version 0 with tables {sorted(tables) or 'none'}: not a ledger this agent made"]
        if version < SCHEMA_VERSION:
            return []  # an older ledger, sound as far as SQLite sees: the next command migrates it
        if TABLES - tables:
            problems.append(f"tables missing: {', '.join(sorted(TABLES - tables))}")
            return problems
        for state, n in db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state"):
            if state not in RUN_STATES:
                problems.append(f"{n} run(s) in an unknown state {state!r}")
        for state, n in db.execute("SELECT state, COUNT(*) FROM bundles GROUP BY state"):
            if state not in BUNDLE_STATES:
                problems.append(f"{n} bundle(s) in an unknown state {state!r}")
        for bid, name, p in db.execute("SELECT bundle_id, name, path FROM bundles WHERE state = 'sealed'"):
            if not Path(p).is_file():
                problems.append(f"bundle {name} ({bid}) is recorded as sealed but {p} is missing")
        for key, run_id, state in db.execute(
                "SELECT key, run_id, state FROM runs WHERE state IN ('sealed', 'exported', 'delivered') AND NOT EXISTS "
                "(SELECT 1 FROM bundles b WHERE b.run_id = runs.run_id)"):
            problems.append(f"run {run_id} ({key}) is {state} but the ledger holds no bundle of it")
        if outbox is not None and outbox.is_dir():
            known = {r[0] for r in db.execute("SELECT name FROM bundles")}
            for f in sorted(outbox.glob("*.tar.zst.age")):
                if f.is_file() and not f.is_symlink() and f.name not in known:
                    problems.append(f"the outbox holds {f.name}, which the ledger does not know")
        return problems
    except sqlite3.Error as exc:
        return [failures.ledger_message(path, exc)]
    finally:
        db.close()


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
    from .. import audit

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
    from .. import ids, statedir
    from ..reconcile import ClaimBook, reconcile

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
            for e in by_kind.get("approved", []):
                db.execute("INSERT OR REPLACE INTO approvals (run_id, approved_at, approved_by) VALUES (?, ?, ?)",
                           (e.get("run_id"), _when(e, time.time()), e.get("by")))
                report.approvals += 1
        if cfg.watch.roots:
            book = ClaimBook(cfg)
            reconcile(ledger, cfg, book=book)
            _link_runs(ledger, cfg, book, report, ids)
        report.runs = ledger.counts()
        report.bundles = {r[0]: r[1] for r in ledger.db.execute("SELECT state, COUNT(*) FROM bundles GROUP BY state")}
    finally:
        ledger.close()
    from .. import audit

    audit.append(statedir.audit_log(cfg), {"kind": "ledger_rebuilt", "ledger": str(path),
                                          "moved_aside": report.moved_aside, "runs": report.runs,
                                          "bundles": report.bundles})
    return report


def _outbox_bundles(cfg: Any, db: sqlite3.Connection, sealed_ev: dict, exported_ev: dict,
                    report: RebuildReport) -> None:
    from .. import statedir
    from ..seal import keys_config, seal_keys
    from ..seal.keystore import KeyFileError
    from ..seal.outbox import _verify_own

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
    from .. import ids, statedir

    for e in imported:
        try:
            staged = statedir.staged(cfg, str(e.get("bundle_id")))
        except ids.BadId:
            continue
        if not staged.is_dir():
            report.notes.append(f"imported bundle {e.get('bundle')} ({e.get('bundle_id')}) is no longer staged; "
                                "not recorded (import the medium again if it was not delivered)")
            continue
        seg: dict[str, Any] = {}
        try:
            seg = json.loads((staged / "MANIFEST.json").read_text()).get("segment") or {}
        except (OSError, ValueError):
            pass
        now = _when(e, time.time())
        db.execute("INSERT OR REPLACE INTO imports (content_id, bundle_id, run_id, segment, signer, staging, imported_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (e.get("content_id"), e.get("bundle_id"), e.get("run_id"),
                                                    e.get("segment"), e.get("signer") or "?", str(staged), now))
        db.execute("INSERT OR REPLACE INTO bundles (bundle_id, run_key, run_id, segment, name, path, content_id, "
                   "byte_start, byte_end, state, created) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, 'imported', ?)",
                   (e.get("bundle_id"), e.get("run_id"), e.get("segment"), e.get("bundle"), str(staged),
                    e.get("content_id"), seg.get("byte_start"), seg.get("byte_end"), now))
        report.imports += 1


def _link_runs(ledger: Ledger, cfg: Any, book: Any, report: RebuildReport, ids: Any) -> None:
    """Runs read again from the volume, tied to what this node sealed of them: the claims'
    markers first (sealed.json names the bundle; segment-<k>.json the live segments), else a
    bundle in the outbox for the run's id and part (an agent from before the markers)."""
    from ..pipeline import part_number

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
        part = part_number(ledger, row)
        hit = ledger.db.execute("SELECT bundle_id FROM bundles WHERE run_id = ? AND segment = ? AND run_key IS NULL "
                                "AND state IN ('sealed', 'exported')", (row["run_id"], part)).fetchone()
        if hit:
            with ledger.tx() as db:
                db.execute("UPDATE bundles SET run_key = ? WHERE bundle_id = ?", (row["key"], hit[0]))
                db.execute("UPDATE runs SET state = 'sealed', last_error = NULL, updated = ? WHERE key = ?",
                           (time.time(), row["key"]))
            report.runs_sealed_from_outbox += 1
