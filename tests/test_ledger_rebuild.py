"""`tfwb-agent ledger check` and `ledger rebuild` (issue 17): a ledger damaged on disk (bytes
flipped, cut short, its header gone) is found and said so, naming the file; rebuilt from the
outbox, the audit log and the volume, it lists the runs again as sealed, keeps the damaged file
aside, and a second `scan --seal` seals nothing again. All through the real CLI."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import agent
from fault_helpers import ledger_rows, many_runs, open_with_tools, sealed_events, sealing_site

PAGE = 4096


def _checkpoint(ledger: Path) -> None:
    """Everything into the main file (the damage then hits what the ledger holds, not a copy of
    it in the WAL), as after a clean stop."""
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _damage(ledger: Path, how: str) -> None:
    data = bytearray(ledger.read_bytes())
    assert len(data) >= 3 * PAGE, len(data)
    if how == "flip":  # the first bytes of every b-tree page after the first, inverted
        for page in range(1, len(data) // PAGE):
            for i in range(page * PAGE, page * PAGE + 48):
                data[i] ^= 0xFF
    elif how == "truncate":  # a copy cut short
        del data[len(data) // 2 + 100:]
    elif how == "header":  # the file header gone
        data[:100] = b"\x5a" * 100
    ledger.write_bytes(bytes(data))


def _outbox(site) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in site.outbox.iterdir() if p.is_file()}


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize("how", ["flip", "truncate", "header"])
def test_a_damaged_ledger_is_found_rebuilt_and_nothing_is_sealed_twice(tmp_path, corpus, how):
    runs = many_runs(corpus, 3)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    state = site.root / "node-state"
    ledger = state / "ledger.sqlite3"
    agent(site.node_cfg, "scan", "--seal")
    (tmp_path / "usb").mkdir()
    agent(site.node_cfg, "export", "--to", str(tmp_path / "usb"))  # one state beyond sealed to recover
    assert agent(site.node_cfg, "ledger", "check").returncode == 0
    before = {r["run_id"]: r["key"] for r in ledger_rows(state)}
    assert sorted(before) == sorted(runs)
    outbox_before = _outbox(site)
    events_before = len(sealed_events(state))
    _checkpoint(ledger)
    _damage(ledger, how)
    damaged_bytes = ledger.read_bytes()

    # Every command that reads it says which file and what to do; `ledger check` says what is wrong.
    st = agent(site.node_cfg, "status", check=False)
    assert st.returncode == 1 and "Traceback" not in st.stderr, st.stderr
    assert f"the ledger {ledger} is damaged" in st.stderr and "`tfwb-agent ledger rebuild`" in st.stderr, st.stderr
    chk = agent(site.node_cfg, "ledger", "check", check=False)
    assert chk.returncode == 1 and "Traceback" not in chk.stderr, chk.stderr
    assert f"the ledger {ledger} is not sound" in chk.stderr and "`tfwb-agent ledger rebuild`" in chk.stderr, chk.stderr

    out = agent(site.node_cfg, "ledger", "rebuild", "--json").stdout
    report = json.loads(out)
    kept = [Path(p) for p in report["moved_aside"]]
    assert kept[0].name.startswith("ledger.sqlite3.damaged-") and kept[0].read_bytes() == damaged_bytes  # kept, unchanged
    assert report["runs"] == {"sealed": 3} and report["bundles"] == {"exported": 3}, report
    assert report["runs_sealed_from_markers"] == 3, report
    assert agent(site.node_cfg, "ledger", "check").returncode == 0

    status = json.loads(agent(site.node_cfg, "status", "--json").stdout)
    assert {r["run_id"]: r["state"] for r in status["runs"]} == {r: "sealed" for r in runs}
    rows = {r["run_id"]: r for r in ledger_rows(state, "SELECT * FROM bundles")}
    assert {r: (rows[r]["state"], rows[r]["run_key"]) for r in rows} == {r: ("exported", before[r]) for r in runs}
    assert all(rows[r]["byte_end"] for r in runs), rows  # the byte ranges came back from the audit log

    # A second pass seals nothing: no new bundle, no bundle rewritten, no 'sealed' line in the audit log.
    agent(site.node_cfg, "scan", "--seal")
    assert _outbox(site) == outbox_before
    assert len(sealed_events(state)) == events_before
    assert not [e for e in _audit(state) if e.get("kind") == "sealed"][events_before:]
    assert _audit(state)[-1]["kind"] == "ledger_rebuilt"
    # Nor does an export send them again.
    (tmp_path / "usb2").mkdir()
    again = agent(site.node_cfg, "export", "--to", str(tmp_path / "usb2"))
    assert not list((tmp_path / "usb2").glob("*.tar.zst.age")), again.stdout
    for b in site.outbox.glob("*.tar.zst.age"):  # what the outbox holds is still whole and signed
        open_with_tools(b, site.gw_identity, site.node_pub, tmp_path / "opened" / b.name)


def _audit(state: Path) -> list[dict]:
    return [json.loads(x)["event"] for x in (state / "audit.log").read_text().splitlines()]


def test_a_rebuild_without_the_markers_takes_the_runs_up_from_the_outbox(tmp_path, corpus):
    """An outbox sealed by an agent from before the markers, or a volume whose claims directory
    was lost: the bundles' signed facts tie each run to its bundle."""
    runs = many_runs(corpus, 2)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    state = site.root / "node-state"
    agent(site.node_cfg, "scan", "--seal")
    outbox_before = _outbox(site)
    for m in (corpus / "many" / ".tfwb-agent" / "claims" / "runs").glob("*/sealed.json"):
        m.unlink()
    (state / "audit.log").rename(state / "audit.log.lost")  # and no audit log either
    (state / "ledger.sqlite3").write_bytes(b"\0" * 8192)
    report = json.loads(agent(site.node_cfg, "ledger", "rebuild", "--json").stdout)
    assert report["runs"] == {"sealed": 2} and report["runs_sealed_from_outbox"] == 2, report
    assert any("no audit log" in n for n in report["notes"]), report
    agent(site.node_cfg, "scan", "--seal")
    assert _outbox(site) == outbox_before
    assert {r["run_id"]: r["state"] for r in ledger_rows(state)} == {r: "sealed" for r in runs}


def test_check_names_a_sealed_bundle_missing_from_the_outbox_and_rebuild_waits_for_no_daemon(tmp_path, corpus):
    many_runs(corpus, 1)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    state = site.root / "node-state"
    agent(site.node_cfg, "scan", "--seal")
    (bundle,) = site.outbox.glob("*.tar.zst.age")
    bundle.rename(tmp_path / bundle.name)
    chk = agent(site.node_cfg, "ledger", "check", check=False)
    assert chk.returncode == 1
    assert f"bundle {bundle.name}" in chk.stderr and f"{bundle} is missing" in chk.stderr, chk.stderr

    # A daemon using the state directory: rebuild refuses and says what to do; the ledger is untouched.
    fd = os.open(state / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242 daemon\n")
    try:
        ledger_before = (state / "ledger.sqlite3").read_bytes()
        r = agent(site.node_cfg, "ledger", "rebuild", check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "a tfwb-agent daemon (pid 4242, command daemon)" in r.stderr and "stop it first" in r.stderr, r.stderr
        assert (state / "ledger.sqlite3").read_bytes() == ledger_before
        assert not list(state.glob("ledger.sqlite3.damaged-*"))
    finally:
        os.close(fd)
