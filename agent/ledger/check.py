"""``tfwb-agent ledger check``: every problem with a ledger, in words, reading only."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .. import failures
from .schema import SCHEMA_VERSION, TABLES
from .states import BUNDLE_STATES, IMPORT_STATES, RUN_STATES


def check(path: Path | str, outbox: Path | None = None) -> list[str]:
    """Every problem with the ledger at ``path``, in words; [] when it is sound. Reads only
    (never creates, migrates or repairs): SQLite's own ``integrity_check``, then the ledger's
    consistency — known tables and states, every bundle it calls sealed present in ``outbox`` (unless retention pruned it),
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
        for state, n in db.execute("SELECT state, COUNT(*) FROM imports GROUP BY state"):
            if state not in IMPORT_STATES:
                problems.append(f"{n} import(s) in an unknown state {state!r}")
        # A bundle retention removed (its arrival known: table pruned) is gone by design, not missing.
        for bid, name, p in db.execute(
                "SELECT bundle_id, name, path FROM bundles b WHERE state = 'sealed' AND NOT EXISTS "
                "(SELECT 1 FROM pruned p WHERE p.kind = 'outbox' AND p.ident = b.bundle_id)"):
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
