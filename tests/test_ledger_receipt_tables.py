"""The receipt and retention tables are the ledger's schema (migration 6), and `ledger check`
knows a bundle retention pruned is gone by design: it names only the ones truly missing."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from tfwb_agent.ledger import Ledger, check, schema
from tfwb_agent.ledger import receipts as lr

RECEIPT_TABLES = {"receipts_issued", "receipts_seen", "receipt_marks", "pruned"}


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def ledger_at_v5(path: Path, with_receipt_tables: bool) -> None:
    """A ledger as an agent before migration 6 left it (with the tables its receipts or prune
    commands made on the side, or without)."""
    db = sqlite3.connect(path, isolation_level=None)
    for migration in schema.MIGRATIONS[:5]:
        for stmt in migration.split(";"):
            if stmt.strip():
                db.execute(stmt)
    db.execute("PRAGMA user_version = 5")
    if with_receipt_tables:
        lr.ensure_receipt_tables(db)
        db.execute("INSERT INTO pruned (kind, ident, path, why, bytes, pruned_at) "
                   "VALUES ('outbox', 'b-old', '/x', 'delivered', 1, 0)")
    db.close()


def test_a_new_ledger_has_the_receipt_tables_from_its_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    assert RECEIPT_TABLES <= tables(path)


def test_older_ledgers_gain_them_and_keep_what_they_had(tmp_path: Path) -> None:
    bare, made = tmp_path / "bare.sqlite3", tmp_path / "made.sqlite3"
    ledger_at_v5(bare, with_receipt_tables=False)
    ledger_at_v5(made, with_receipt_tables=True)
    for path in (bare, made):
        led = Ledger(path)
        assert led.schema_version == schema.SCHEMA_VERSION >= 6  # migrated to the newest, past the receipts
        lr.ensure_receipt_tables(led)  # still callable, and changes nothing now
        led.close()
        assert RECEIPT_TABLES <= tables(path)
        assert check(path) == [], path
    led = Ledger(made)
    assert lr.pruned_ids(led, "outbox") == {"b-old"}  # the row made before the migration survived it
    led.close()


def _seal(led: Ledger, outbox: Path, n: int) -> Path:
    path = outbox / f"run{n}-0.tar.zst.age"
    led.record_sealed(bundle_id=f"b{n}", run_key=None, run_id=f"run{n}", segment=0, name=path.name, path=str(path),
                      content_id=f"c{n}", byte_start=0, byte_end=10, project="p", entity="e",
                      audit={"kind": "sealed", "bundle_id": f"b{n}"})
    return path


def test_check_does_not_call_a_pruned_bundle_missing(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    path = tmp_path / "ledger.sqlite3"
    led = Ledger(path)
    pruned, vanished, wrong_kind = (_seal(led, outbox, n) for n in (1, 2, 3))
    # None of the three files is on disk. Retention removed the first from the outbox; the
    # third's id was pruned only from a gateway's staging, which says nothing of this outbox.
    lr.record_pruned(led, [("outbox", "b1", str(pruned), "delivered", 10),
                           ("staging", "b3", str(wrong_kind), "delivered", 10)], now=1.0)
    led.close()
    problems = check(path, outbox)
    assert len(problems) == 2, problems
    assert not [p for p in problems if pruned.name in p], problems
    assert any(f"bundle {vanished.name} (b2) is recorded as sealed but {vanished} is missing" == p for p in problems)
    assert any(f"bundle {wrong_kind.name} (b3)" in p for p in problems), problems
