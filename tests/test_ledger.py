"""The ledger: WAL, schema versions and migrations, one transaction per change."""
from __future__ import annotations

import sqlite3

import pytest

from tfwb_agent import ledger as ledger_mod
from tfwb_agent.ledger import Ledger, LedgerError

from conftest import agent, by_run_id, status


def test_wal_and_current_schema(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    assert led.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert led.schema_version == len(ledger_mod.MIGRATIONS)


def test_an_old_ledger_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "l.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(ledger_mod.MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO runs (key, run_id, state, first_seen, updated) VALUES ('/r/offline-run-x-abc', 'abc', "
               "'ended', 1, 1)")
    db.commit()
    db.close()
    led = Ledger(path)
    assert led.schema_version == len(ledger_mod.MIGRATIONS)
    assert led.run("/r/offline-run-x-abc")["run_id"] == "abc"
    tables = {r[0] for r in led.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "bundles", "imports", "deliveries", "targets"} <= tables


def test_a_newer_ledger_is_refused_with_advice(tmp_path):
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(ledger_mod.MIGRATIONS) + 5}")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="upgrade tfwb-agent"):
        Ledger(path)


def test_a_failed_transaction_changes_nothing(tmp_path):
    led = Ledger(tmp_path / "l.sqlite3")
    with led.tx() as db:
        led.save_run(db, {"key": "k", "run_id": "a", "state": "live"})
    with pytest.raises(RuntimeError):
        with led.tx() as db:
            db.execute("UPDATE runs SET state = 'ended' WHERE key = 'k'")
            raise RuntimeError("crash in the middle")
    assert led.run("k")["state"] == "live"


def test_runs_show_finds_a_run_by_id_or_directory(corpus, make_config):
    cfg = make_config([corpus], quiet_seconds=60)
    agent(cfg, "scan")
    path = by_run_id(status(cfg))["itokze55"]["path"]
    for ident in ("itokze55", path, path.rsplit("/", 1)[1]):
        out = agent(cfg, "runs", "show", ident).stdout
        assert "itokze55" in out and "finished" in out
    proc = agent(cfg, "runs", "show", "nosuchrun", check=False)
    assert proc.returncode != 0 and "tfwb-agent status" in proc.stderr
