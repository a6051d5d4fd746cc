"""Fault injection (issue 17): each fault a bad day or an adversary can cause, reproduced with
the real CLI in subprocesses, real daemons and the stock tools; each test asserts that nothing
was lost, nothing duplicated, and that the user got a clear message."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import agent, write_config
from daemon_helpers import DaemonProc, wait_for
from deliver_helpers import RestartableServer, corpus_dirs, duplicate_rows, make_deliver_site, metric_rows, seal_dirs
from fault_helpers import (HeldLock, clone_run, craft_with_id, fill, gateway_site, inodes_used, ledger_rows, many_runs,
                           open_with_tools, popen_agent, read_line_with, remount, run_counts, sealed_events,
                           sealing_site, tmpfs, tree_digest, unprivileged)
from seal_helpers import corpus_run_dirs
from tfwb_agent.seal import RunIdentity, SealError, seal_run
from tfwb_agent.seal.bundle_write import snapshot
from tfwb_agent.wandb_log import BLOCK_LEN, LogReader, LogWriter

# --- 1. one writer per state directory ------------------------------------------------------


def _assert_each_run_sealed_once_and_whole(site, run_ids: set[str], tmp: Path) -> None:
    state = site.root / "node-state"
    bundles = sorted(site.outbox.glob("*.tar.zst.age"))
    assert sorted(b.name for b in bundles) == sorted(f"{r}-0.tar.zst.age" for r in run_ids)
    for b in bundles:
        manifest = open_with_tools(b, site.gw_identity, site.node_pub, tmp / "opened" / b.name)
        assert manifest["run"]["run_id"] == b.name.split("-")[0]
    made = sealed_events(state)
    assert sorted(e["run_id"] for e in made) == sorted(run_ids), "a run was sealed twice (or not at all)"
    rows = site.node_ledger().db.execute("SELECT run_id, COUNT(*) AS n FROM bundles GROUP BY run_id").fetchall()
    assert {r["run_id"]: r["n"] for r in rows} == {r: 1 for r in run_ids}
    assert run_counts(state) == {"sealed": len(run_ids)}
    work = state / "work"
    assert not any(work.iterdir()) if work.exists() else True, sorted(p.name for p in work.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow(seconds=10)
def test_two_scan_seals_at_once_take_turns_and_every_bundle_is_whole(tmp_path, corpus):
    runs = many_runs(corpus, 8)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    state = site.root / "node-state"
    gone = _dead_pid()
    stale = state / "work" / f"p{gone}-1" / "offline-run-stale"  # what a sealer killed mid-cleanup left
    stale.mkdir(parents=True)
    held = HeldLock(state)  # a third writer holds the state directory when both start
    procs = [popen_agent(site.node_cfg, "scan", "--seal") for _ in range(2)]
    for p in procs:
        line = read_line_with(p.stderr, "holds")
        assert f"another tfwb-agent (pid {os.getpid()}, command held-by-test) holds {state}; " \
               "waiting" in line, line
    held.release()  # now both go for it at once
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Traceback" not in err
    _assert_each_run_sealed_once_and_whole(site, set(runs), tmp_path)


@pytest.mark.slow(seconds=10)
def test_scan_seal_beside_the_daemon_seals_each_run_once(tmp_path, corpus):
    runs = many_runs(corpus, 8)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    d = DaemonProc(site.node_cfg, tmp_path / "daemon.log").start()
    scan = agent(site.node_cfg, "scan", "--seal")
    assert "Traceback" not in scan.stderr
    state = site.root / "node-state"
    wait_for(lambda: run_counts(state) == {"sealed": len(runs)}, 60, "every run sealed", d)
    assert d.terminate()[0] == 0
    _assert_each_run_sealed_once_and_whole(site, set(runs), tmp_path)


def test_a_redacted_copy_that_lost_a_file_is_never_signed(tmp_path, corpus):
    """The check behind the lock: sealing compares the copy with what redaction wrote."""
    site = sealing_site(tmp_path / "site", corpus)
    copy = tmp_path / "work" / corpus_run_dirs(corpus)["3salp52t"].name
    shutil.copytree(corpus_run_dirs(corpus)["3salp52t"], copy)
    written = snapshot(copy)
    lost = next(p for p in sorted(copy.rglob("*")) if p.is_file() and p.suffix == ".json")
    lost.unlink()
    ledger = site.node_ledger()
    with pytest.raises(SealError, match=r"is not what redaction wrote \(missing: .*; not sealed"):
        seal_run(site.node(), site.seal_keys(), ledger, copy, RunIdentity("3salp52t"), expect=written)
    assert not list(site.outbox.glob("*.tar.zst.age*")) and not ledger.db.execute("SELECT * FROM bundles").fetchall()


# --- 2. identifiers are not paths -----------------------------------------------------------

HOSTILE_IDS = {"dotdot": "..", "dot": ".", "slash": "a/b", "nul": "ab\x00cd", "long": "a" * 300}


def _gateway_state(site) -> dict:
    led = site.gw_ledger()
    rows = {t: [tuple(r) for r in led.db.execute(f"SELECT * FROM {t} WHERE {w} ORDER BY bundle_id")]
            for t, w in (("imports", "1"), ("bundles", "state = 'imported'"))}
    led.close()
    return rows


def test_hostile_bundle_ids_from_a_trusted_node_are_refused_and_touch_nothing(tmp_path):
    site = gateway_site(tmp_path / "site")
    first = tmp_path / "usb1"
    first.mkdir()
    kept = {f"{i:032x}": craft_with_id(first / f"good{i}-0.tar.zst.age", site, f"{i:032x}", f"good{i}",
                                        {"run-x.wandb": b"log %d" % i, "files/a.txt": b"a%d" % i})
            for i in (1, 2)}
    agent(site.gw_cfg, "import", str(first))
    gw = site.root / "gw-state"
    before = _gateway_state(site)
    audit_before = (gw / "audit.log").read_bytes()
    staged_before = {b: tree_digest(site.staging / b) for b in kept}
    assert all(staged_before.values())

    usb = tmp_path / "usb2"
    usb.mkdir()
    for name, bid in HOSTILE_IDS.items():
        craft_with_id(usb / f"{name}-0.tar.zst.age", site, bid, "victim1", {"run-x.wandb": b"x", "files/f": b"y"})
    reused = next(iter(kept))  # read off the first medium's bundle names, as a carrier could
    craft_with_id(usb / "reused-0.tar.zst.age", site, reused, "good1", {"run-x.wandb": b"other content"})
    craft_with_id(usb / "fine-0.tar.zst.age", site, "f" * 32, "fine1", {"run-x.wandb": b"fine"})

    proc = agent(site.gw_cfg, "import", str(usb), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # documented: 1 when any bundle was refused
    assert "Traceback" not in proc.stderr
    lines = {ln.split()[1].rstrip(":"): ln for ln in proc.stdout.splitlines()}
    for name, bid in HOSTILE_IDS.items():
        assert lines[f"{name}-0.tar.zst.age"].startswith(f"refused  {name}-0.tar.zst.age: bad_id ("), lines
        assert "is not a plain identifier" in lines[f"{name}-0.tar.zst.age"]
    assert lines["reused-0.tar.zst.age"].startswith("refused  reused-0.tar.zst.age: conflict ("), lines
    assert "the bundle already here stays as it is" in lines["reused-0.tar.zst.age"]
    assert lines["fine-0.tar.zst.age"].startswith("imported fine-0.tar.zst.age"), lines

    # Nothing of the gateway's state was removed or replaced: the ledger's imports, the audit
    # log's earlier lines, the staged runs, byte for byte.
    after = _gateway_state(site)
    assert after["imports"][:2] == before["imports"] and len(after["imports"]) == 3
    assert set(before["bundles"]) <= set(after["bundles"])
    assert (gw / "audit.log").read_bytes().startswith(audit_before)
    agent(site.gw_cfg, "audit", "verify")
    assert {b: tree_digest(site.staging / b) for b in kept} == staged_before
    assert sorted(p.name for p in site.staging.iterdir()) == sorted([*kept, "f" * 32])
    reasons = sorted(json.loads(p.read_text())["reason"] for p in site.quarantine.glob("*/reason.json"))
    assert reasons == sorted(["bad_id"] * len(HOSTILE_IDS) + ["conflict"])


# --- 3. claims that remember ------------------------------------------------------------------


def _lease_expired(state_root: Path, node: str) -> bool:
    alive = next(state_root.glob(f"**/.tfwb-agent/claims/nodes/{node}.alive"))
    return json.loads(alive.read_text())["expires"] < time.time()


@pytest.mark.slow(seconds=15)
def test_a_run_sealed_by_one_node_is_never_sealed_by_another_after_its_lease(tmp_path, corpus):
    runs = many_runs(corpus, 3)
    volume = corpus / "many"
    # One run was still being written when node A looked (fresh mtime, no exit record): A claims it
    # but does not seal it.
    unfinished = clone_run(corpus_run_dirs(corpus)["s900mviu"], volume, "unfin01x")
    os.utime(next(unfinished.glob("*.wandb")))
    a = sealing_site(tmp_path / "a", volume, "node-a", lease_seconds=1, map_root=corpus)
    b = sealing_site(tmp_path / "b", volume, "node-b", keys_from=a, lease_seconds=1, map_root=corpus)
    for site in (a, b):  # long quiet period: only the mtimes the test sets decide live or ended
        site.node_cfg.write_text(site.node_cfg.read_text().replace("quiet_seconds = 1", "quiet_seconds = 600"))
    agent(a.node_cfg, "scan", "--seal")  # a cron scan: holds its leases only while it runs
    a_st = {r["run_id"]: r["state"] for r in ledger_rows(tmp_path / "a" / "node-state")}
    assert a_st == {**{r: "sealed" for r in runs}, "unfin01x": "live"}
    for r in runs:
        marker = json.loads((volume / ".tfwb-agent/claims/runs" / runs[r].name / "sealed.json").read_text())
        assert marker["node"] == "node-a" and marker["bundle"] == f"{r}-0.tar.zst.age"
    wait_for(lambda: _lease_expired(volume, "node-a"), 10, "node-a's lease to expire")
    old = time.time() - 3600
    os.utime(next(unfinished.glob("*.wandb")), (old, old))  # it ended while node-a was away

    out = agent(b.node_cfg, "scan", "--seal").stdout
    assert "3 held by other agents" in out, out
    assert sorted(p.name for p in b.outbox.glob("*.tar.zst.age")) == ["unfin01x-0.tar.zst.age"]  # resumed
    assert {r["run_id"]: r["state"] for r in ledger_rows(tmp_path / "b" / "node-state")} == {"unfin01x": "sealed"}
    assert not sealed_events(tmp_path / "b" / "node-state")[1:]

    # Nothing node-specific in a bundle: a node that never saw the markers (its own claims
    # directory) seals the same runs to the same content ids.
    c_cfg = tmp_path / "c.toml"
    c_cfg.write_text(b.node_cfg.read_text().replace(str(tmp_path / "b" / "node-state"), str(tmp_path / "c-state"))
                     .replace("[watch]\n", f'[watch]\nclaims_dir = "{tmp_path / "c-claims"}"\n'))
    agent(c_cfg, "scan", "--seal")
    cid = {}
    for cfg_state in (tmp_path / "a" / "node-state", tmp_path / "c-state"):
        cid[cfg_state] = {e["run_id"]: e["content_id"] for e in sealed_events(cfg_state) if e["run_id"] in runs}
    assert cid[tmp_path / "a" / "node-state"] == cid[tmp_path / "c-state"] and len(cid[tmp_path / "c-state"]) == 3


@pytest.mark.slow(seconds=15)
def test_thirty_runs_under_two_daemons_are_each_sealed_exactly_once(tmp_path, corpus):
    runs = many_runs(corpus, 30)
    volume = corpus / "volume"
    volume.mkdir()
    a = sealing_site(tmp_path / "a", volume, "node-a", lease_seconds=2, map_root=corpus)
    b = sealing_site(tmp_path / "b", volume, "node-b", keys_from=a, lease_seconds=2, map_root=corpus)
    da = DaemonProc(a.node_cfg, tmp_path / "a.log").start()
    db = DaemonProc(b.node_cfg, tmp_path / "b.log").start()
    for d in runs.values():  # the runs appear while both watch: both go for every one of them
        d.rename(volume / d.name)
    markers = volume / ".tfwb-agent" / "claims" / "runs"
    wait_for(lambda: len(list(markers.glob("*/sealed.json"))) == 30, 120, "30 sealed markers", da)
    for d in (da, db):
        assert d.terminate()[0] == 0
    by_node = {n: {e["run_id"] for e in sealed_events(tmp_path / n / "node-state")} for n in ("a", "b")}
    assert not by_node["a"] & by_node["b"], f"sealed by both nodes: {sorted(by_node['a'] & by_node['b'])}"
    assert by_node["a"] | by_node["b"] == set(runs)
    for m in markers.glob("*/sealed.json"):
        marker = json.loads(m.read_text())
        assert marker["bundle"].split("-")[0] in by_node[marker["node"][-1]]
    outboxes = [p.name for s in (a, b) for p in s.outbox.glob("*.tar.zst.age")]
    assert sorted(outboxes) == sorted(f"{r}-0.tar.zst.age" for r in runs)


def _grow(run_dir: Path, steps: range = range(0), exit_code: int | None = None) -> None:
    """Append whole records to a run's log, as its writer would: history rows, then maybe its exit."""
    from wandb.proto import wandb_internal_pb2 as pb

    from tfwb_agent.wandb_log import LogWriter

    (log,) = run_dir.glob("run-*.wandb")
    with open(log, "r+b") as f:
        w = LogWriter(f, append_at=log.stat().st_size)
        for step in steps:
            rec = pb.Record()
            for k, v in (("_step", step), ("grown/loss", 1.0 / (step + 1))):
                item = rec.history.item.add()
                item.key, item.value_json = k, json.dumps(v)
            w.write(rec)
        if exit_code is not None:
            rec = pb.Record()
            rec.exit.exit_code = exit_code
            w.write(rec)


def _live_sites(tmp_path: Path, volume: Path, corpus: Path):
    a = sealing_site(tmp_path / "a", volume, "node-a", lease_seconds=1, map_root=corpus)
    b = sealing_site(tmp_path / "b", volume, "node-b", keys_from=a, lease_seconds=1, map_root=corpus)
    for site in (a, b):  # long quiet period: a run is live until its exit record says otherwise
        site.node_cfg.write_text(site.node_cfg.read_text().replace("quiet_seconds = 1", "quiet_seconds = 600"))
    return a, b


def _segment_markers(volume: Path, run_dir: Path) -> dict[int, str]:
    d = volume / ".tfwb-agent" / "claims" / "runs" / run_dir.name
    return {int(m.stem.split("-")[1]): json.loads(m.read_text())["node"] for m in d.glob("segment-*.json")}


def _live_pass(site) -> list[str]:
    """What the daemon does for live runs in one pass, in this process: look, then cut segments."""
    from tfwb_agent.sealing import seal_live_segments
    from tfwb_agent.reconcile import reconcile

    cfg, ledger = site.node(), site.node_ledger()
    try:
        reconcile(ledger, cfg)
        return seal_live_segments(ledger, cfg)
    finally:
        ledger.close()


def test_a_live_run_whose_run_record_is_not_written_yet_waits_without_a_warning(tmp_path, corpus, caplog):
    """wandb writes a run's log header first and its run record a moment later: a pass in
    between has no run id to number segments by (the daemon warned "'<dir>' is not in list"
    on every pass until the record came)."""
    volume = corpus / "live"
    volume.mkdir()
    run = volume / "offline-run-20261130_050000-fresh01x"
    run.mkdir()
    (run / "run-fresh01x.wandb").write_bytes(b":W&B" + (0xBEE1).to_bytes(2, "little") + b"\x00")
    a, _b = _live_sites(tmp_path, volume, corpus)
    with caplog.at_level("INFO", logger="tfwb_agent"):
        assert _live_pass(a) == []
    rows = [r for r in ledger_rows(tmp_path / "a" / "node-state") if r["key"] == str(run)]
    assert [(r["state"], r["run_id"]) for r in rows] == [("live", None)], rows
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.slow(seconds=10)
def test_live_segments_sealed_by_one_node_are_never_sealed_again_by_the_node_that_takes_over(tmp_path, corpus):
    volume = corpus / "live"
    volume.mkdir()
    run = clone_run(corpus_run_dirs(corpus)["s900mviu"], volume, "live01x")  # no exit record
    now = time.time()
    for p in [run, *run.rglob("*")]:
        os.utime(p, (now, now))  # being written: live
    a, b = _live_sites(tmp_path, volume, corpus)
    assert _live_pass(a) == ["live01x-0"]
    assert _segment_markers(volume, run) == {0: "node-a"}
    wait_for(lambda: _lease_expired(volume, "node-a"), 10, "node-a's lease to expire")  # node-a is gone

    # node-b takes the run over: segment 0 is on the volume already, and nothing grew since.
    assert _live_pass(b) == []
    assert not list(b.outbox.glob("*.tar.zst.age"))
    row = next(r for r in ledger_rows(tmp_path / "b" / "node-state") if r["run_id"] == "live01x")
    assert row["state"] == "live" and json.loads(row["facts"])["live_segments"] == 1, row

    _grow(run, range(1000, 1005))
    assert _live_pass(b) == ["live01x-1"]  # the growth, as the next segment
    _grow(run, exit_code=0)
    assert _live_pass(b) == ["live01x-2"]  # the end
    assert _segment_markers(volume, run) == {0: "node-a", 1: "node-b", 2: "node-b"}
    sealed = json.loads((volume / ".tfwb-agent/claims/runs" / run.name / "sealed.json").read_text())
    assert sealed["node"] == "node-b" and sealed["bundle"] == "live01x-2.tar.zst.age"

    # node-a comes back: the run is node-b's for good; it seals nothing of it, live or whole.
    assert _live_pass(a) == []
    agent(a.node_cfg, "scan", "--seal")
    assert sorted(p.name for p in a.outbox.glob("*.tar.zst.age")) == ["live01x-0.tar.zst.age"]
    assert sorted(p.name for p in b.outbox.glob("*.tar.zst.age")) == ["live01x-1.tar.zst.age", "live01x-2.tar.zst.age"]
    segments = {}
    for site in (a, b):
        for bundle in site.outbox.glob("*.tar.zst.age"):
            m = open_with_tools(bundle, site.gw_identity, site.node_pub, tmp_path / "opened" / bundle.name)
            segments[m["segment"]["number"]] = m
    assert sorted(segments) == [0, 1, 2]
    # Each segment starts where the one before it ended, whichever node sealed it.
    assert segments[1]["segment"]["byte_start"] == segments[0]["segment"]["byte_end"]
    assert segments[2]["segment"]["byte_start"] == segments[1]["segment"]["byte_end"]
    assert len({m["content_id"] for m in segments.values()}) == 3


@pytest.mark.slow(seconds=10)
def test_a_run_delivered_live_that_ends_after_a_takeover_is_sealed_as_its_next_segment(tmp_path, corpus):
    volume = corpus / "live"
    volume.mkdir()
    run = clone_run(corpus_run_dirs(corpus)["s900mviu"], volume, "live02x")
    now = time.time()
    for p in [run, *run.rglob("*")]:
        os.utime(p, (now, now))
    a, b = _live_sites(tmp_path, volume, corpus)
    assert _live_pass(a) == ["live02x-0"]
    wait_for(lambda: _lease_expired(volume, "node-a"), 10, "node-a's lease to expire")
    _grow(run, range(2000, 2003), exit_code=0)  # it ended while node-a was away
    # node-b runs as cron does (no live delivery): the whole-run sealing goes on after segment 0.
    agent(b.node_cfg, "scan", "--seal")
    assert sorted(p.name for p in b.outbox.glob("*.tar.zst.age")) == ["live02x-1.tar.zst.age"]
    m = open_with_tools(b.outbox / "live02x-1.tar.zst.age", b.gw_identity, b.node_pub, tmp_path / "opened")
    a_m = open_with_tools(a.outbox / "live02x-0.tar.zst.age", a.gw_identity, a.node_pub, tmp_path / "opened-a")
    assert m["segment"]["number"] == 1 and m["segment"]["byte_start"] == a_m["segment"]["byte_end"]
    sealed = json.loads((volume / ".tfwb-agent/claims/runs" / run.name / "sealed.json").read_text())
    assert sealed["node"] == "node-b" and sealed["bundle"] == "live02x-1.tar.zst.age"
    assert {r["run_id"]: r["state"] for r in ledger_rows(tmp_path / "b" / "node-state")} == {"live02x": "sealed"}


# --- 4. damage is not a tear ------------------------------------------------------------------


def test_a_flipped_byte_in_the_last_block_of_a_finished_run_is_damage_with_its_offset(tmp_path, corpus):
    run = corpus_run_dirs(corpus)["3salp52t"]  # finished: its exit record is in the last block
    (log,) = run.glob("run-*.wandb")
    with open(log, "rb") as f:
        offsets = [o for o, _ in LogReader(f)]
    size = log.stat().st_size
    last_block = (size - 1) // BLOCK_LEN * BLOCK_LEN
    damaged = next(o for o in offsets[:-1] if o >= last_block)  # whole records follow it
    at = damaged + 7 + 1
    data = bytearray(log.read_bytes())
    data[at] ^= 0x40
    log.write_bytes(bytes(data))
    os.utime(log, (0, 0))
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", [corpus], quiet_seconds=1)
    agent(cfg, "scan")
    row = next(r for r in ledger_rows(tmp_path / "state") if r["key"] == str(run))
    assert row["state"] == "invalid" and row["ended"] is None, row  # never a silent `crashed`
    assert f"chunk CRC mismatch at byte offset {damaged}" in row["last_error"], row["last_error"]
    assert "damage, not a torn tail" in row["last_error"]
    assert f"the {size - damaged} bytes from byte offset {damaged} to the end" in row["last_error"]


# --- 5. every failure a user can cause is a message -------------------------------------------


def _good(usb: Path, site, name: str, files: int = 2, size: int = 16) -> str:
    bid = hashlib.sha256(name.encode()).hexdigest()[:32]
    craft_with_id(usb / f"{name}-0.tar.zst.age", site, bid, name,
                  {"run-x.wandb": name.encode(), **{f"files/f{i}.txt": bytes([i % 256]) * size for i in range(files)}})
    return bid


def test_links_and_directories_on_a_medium_are_skipped_and_the_rest_imports(tmp_path):

    site = gateway_site(tmp_path / "site")
    usb = tmp_path / "usb"
    usb.mkdir()
    first, last = _good(usb, site, "aaaa0001"), _good(usb, site, "zzzz0001")
    (usb / "link-0.tar.zst.age").symlink_to(usb / "aaaa0001-0.tar.zst.age")
    (usb / "outside-0.tar.zst.age").symlink_to("/etc/passwd")
    (usb / "dir-0.tar.zst.age").mkdir()
    proc = agent(site.gw_cfg, "import", str(usb), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert "skipped  link-0.tar.zst.age: a symlink, not a bundle (links on a medium are never followed)" in out
    assert "skipped  outside-0.tar.zst.age: a symlink" in out
    assert "skipped  dir-0.tar.zst.age: a directory, not a bundle" in out
    assert sorted(p.name for p in site.staging.iterdir()) == sorted([first, last])


def test_two_imports_at_once_take_turns_and_import_each_bundle_once(tmp_path):

    site = gateway_site(tmp_path / "site")
    usb = tmp_path / "usb"
    usb.mkdir()
    bids = {_good(usb, site, f"r{i:07d}") for i in range(4)}
    gw = site.root / "gw-state"
    held = HeldLock(gw)
    procs = [popen_agent(site.gw_cfg, "import", str(usb)) for _ in range(2)]
    for p in procs:
        assert "holds" in read_line_with(p.stderr, "holds")
    held.release()
    results = [p.communicate(timeout=120) for p in procs]
    assert all("Traceback" not in err for _out, err in results), results
    assert sorted(p.returncode for p in procs) == [0, 1]  # the second finds only replays
    assert sorted(p.name for p in site.staging.iterdir()) == sorted(bids)
    assert site.gw_ledger().db.execute("SELECT COUNT(*) FROM imports").fetchone()[0] == 4
    second = next(out for out, _err in results if "refused" in out)
    assert second.count(": replay (") == 4


def test_a_full_disk_during_import_keeps_nothing_half_imported_and_resumes(tmp_path):
    site = gateway_site(tmp_path / "site")
    usb1, usb2 = tmp_path / "usb1", tmp_path / "usb2"
    usb1.mkdir()
    usb2.mkdir()
    small = _good(usb1, site, "small001")
    big = _good(usb2, site, "big00001", files=60)
    with tmpfs(site.root / "gw-state", "64m", 1000) as gw:
        agent(site.gw_cfg, "import", str(usb1))
        remount(gw, f"nr_inodes={inodes_used(gw) + 20}")  # the big one's 60 files cannot all fit
        proc = agent(site.gw_cfg, "import", str(usb2), check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Error: the disk holding {gw} is full" in proc.stderr
        assert "while importing big00001-0.tar.zst.age: nothing of it was kept; free space there" in proc.stderr
        assert sorted(p.name for p in site.staging.iterdir()) == [small]  # no .tmp- leftover either
        assert site.gw_ledger().db.execute("SELECT COUNT(*) FROM imports").fetchone()[0] == 1
        remount(gw, "nr_inodes=2000")
        agent(site.gw_cfg, "import", str(usb2))
        assert sorted(p.name for p in site.staging.iterdir()) == sorted([small, big])
        agent(site.gw_cfg, "audit", "verify")


def test_a_decompression_bomb_is_refused_before_it_is_written(tmp_path):
    site = gateway_site(tmp_path / "site")
    usb = tmp_path / "usb"
    usb.mkdir()
    # Declares what it unpacks to (64 MiB of zeros, a few KiB as a bundle): more than staging holds.
    craft_with_id(usb / "bomb1-0.tar.zst.age", site, "b" * 32, "bomb1", {"run-x.wandb": bytes(64 << 20)})
    # Declares 1 KiB, then hides 48 MiB after the end of its archive.
    craft_with_id(usb / "bomb2-0.tar.zst.age", site, "c" * 32, "bomb2", {"run-x.wandb": bytes(1024)},
                  tail=bytes(48 << 20))
    good = _good(usb, site, "good0001")
    with tmpfs(site.root / "gw-state", "40m") as gw:
        proc = agent(site.gw_cfg, "import", str(usb), check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        lines = {ln.split()[1].rstrip(":"): ln for ln in proc.stdout.splitlines()}
        assert lines["bomb1-0.tar.zst.age"].startswith("skipped  bomb1-0.tar.zst.age: it unpacks to 67108864 bytes "
                                                       "(its manifest says)"), lines
        assert "nothing of it was written" in lines["bomb1-0.tar.zst.age"]
        assert lines["bomb2-0.tar.zst.age"].startswith("refused  bomb2-0.tar.zst.age: bad_archive"), lines
        assert "a decompression bomb" in lines["bomb2-0.tar.zst.age"]
        assert lines["good0001-0.tar.zst.age"].startswith("imported"), lines
        assert sorted(p.name for p in site.staging.iterdir()) == [good]
        st = os.statvfs(gw)
        assert (st.f_blocks - st.f_bfree) * st.f_frsize < 8 << 20  # never came near the bombs' sizes


@pytest.mark.slow(seconds=8)
def test_the_daemon_pauses_on_a_full_disk_and_resumes_when_there_is_room(tmp_path, corpus):
    runs = many_runs(corpus, 4)
    volume = corpus / "volume"
    volume.mkdir()
    site = sealing_site(tmp_path / "site", volume, map_root=corpus)
    with tmpfs(site.root / "node-state", "24m"):
        first = list(runs.values())[:2]
        for d in first:
            d.rename(volume / d.name)
        daemon = DaemonProc(site.node_cfg, tmp_path / "daemon.log").start()
        state = site.root / "node-state"
        wait_for(lambda: run_counts(state) == {"sealed": 2}, 60, "the first two sealed", daemon)
        with sqlite3.connect(state / "ledger.sqlite3") as db:  # an empty WAL: the next write needs new room
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(site.root / "node-state")
        for d in list(runs.values())[2:]:
            d.rename(volume / d.name)
        wait_for(lambda: "is full" in daemon.output(), 30, "the daemon to say the disk is full", daemon)
        assert "is full (database or disk is full" in daemon.output(), daemon.output()[-2000:]
        assert "Traceback" not in daemon.output()
        shown = agent(site.node_cfg, "status")  # still answers, and says why nothing moves
        assert f"warning: the disk holding {site.root / 'node-state'} is full" in shown.stderr, shown.stderr
        filler.unlink()
        wait_for(lambda: run_counts(state) == {"sealed": 4}, 60, "all four sealed", daemon)
        # (said once the pass that sealed them has ended: after the ledger shows them)
        wait_for(lambda: "has room again; work resumed" in daemon.output(), 30, "the daemon to say so", daemon)
        assert daemon.terminate()[0] == 0
    assert "Traceback" not in daemon.output(), daemon.output()[-3000:]


def test_a_damaged_or_read_only_ledger_is_a_message_that_names_it(tmp_path, corpus):
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    many_runs(corpus, 2)
    ledger = site.root / "node-state" / "ledger.sqlite3"
    agent(site.node_cfg, "scan")
    ledger.chmod(0o444)
    env = dict(os.environ, TFWB_AGENT_CONFIG=str(site.node_cfg))
    proc = subprocess.run(unprivileged([sys.executable, "-m", "tfwb_agent", "scan", "--seal"]), env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"Error: the ledger {ledger} is read-only for this user"), proc.stderr
    assert "run the command as the agent's user" in proc.stderr
    ledger.chmod(0o600)
    for extra in ("-wal", "-shm"):
        Path(f"{ledger}{extra}").unlink(missing_ok=True)
    ledger.write_bytes(b"this is not an SQLite database" * 100)
    for args in (("status",), ("daemon",)):
        proc = agent(site.node_cfg, *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Error: the ledger {ledger} is damaged (file is not a database); move it aside" in proc.stderr
        assert "`tfwb-agent ledger rebuild`" in proc.stderr and "`tfwb-agent ledger check`" in proc.stderr


def test_unreadable_or_oddly_named_run_directories_are_said_so(tmp_path, corpus):
    runs = many_runs(corpus, 1)
    (run,) = runs.values()
    odd = shutil.copytree(run, corpus / "many" / "offline-run-a b")  # no claim file may be named after it
    run.chmod(0)
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", [corpus / "many"], quiet_seconds=1)
    proc = subprocess.run(unprivileged([sys.executable, "-m", "tfwb_agent", "scan"]), capture_output=True, text=True,
                          env=dict(os.environ, TFWB_AGENT_CONFIG=str(cfg)))
    run.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in ledger_rows(tmp_path / "state")}
    assert rows[str(run)]["state"] == "invalid", rows
    assert rows[str(run)]["last_error"] == f"cannot read {run.name}: permission denied (give the agent's user read " \
                                          "access)"
    assert rows[str(odd)]["state"] == "invalid"
    assert rows[str(odd)]["last_error"] == "run directory 'offline-run-a b' is not a plain identifier (only letters, " \
        "digits, '_', '-' and '.' are allowed, not first '.' or '-'); the agent leaves it alone"


def _session_members(sid: int) -> list[int]:
    """Processes still in the session (and group) that an upload started as its leader."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(p.name))
    return out


@pytest.mark.slow(seconds=30)
def test_sync_says_what_waits_and_stops_its_uploads_when_stopped_or_out_of_time(tmp_path, corpus):
    server = RestartableServer(tmp_path).start()
    try:
        site = make_deliver_site(tmp_path / "site", server.url, "wrong" + "0" * 35)
        run_ids = seal_dirs(site, corpus_dirs(corpus)[:2])
        # A rejected key: exit 3, and the runs that wait are said to wait, not "nothing to deliver".
        proc = agent(site.cfg, "sync", "--to", "local", "--once", check=False)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "nothing to deliver" not in proc.stdout
        assert "2 segment(s) wait for local (key_rejected)" in proc.stdout, proc.stdout

        site.key_file.write_text(server.api_key + "\n")
        sync = popen_agent(site.cfg, "sync", "--to", "local", "--once")
        read_line_with(sync.stdout, "sending ")
        ledger = site.ledger()
        pid = wait_for(lambda: ledger.db.execute("SELECT uploader_pid FROM deliveries WHERE state = 'uploading' "
                                                 "AND uploader_pid IS NOT NULL").fetchone(), 30, "an upload")[0]
        assert _session_members(pid)
        server.proc.send_signal(signal.SIGSTOP)  # the server hangs: the upload would wait for it for an hour
        t0 = time.monotonic()
        sync.send_signal(signal.SIGTERM)
        out, err = sync.communicate(timeout=30)
        assert time.monotonic() - t0 < 15 and sync.returncode == 128 + signal.SIGTERM, (out, err)
        assert "Error: sync stopped by SIGTERM: 1 upload(s) under way were stopped; the next sync asks the server " \
               "what arrived and sends only the rest" in err, err
        assert "Traceback" not in err
        assert _session_members(pid) == []  # wandb sync and everything it started are gone

        t0 = time.monotonic()
        timed = agent(site.cfg, "sync", "--to", "local", "--once", "--timeout", "3", check=False)
        assert timed.returncode == 1 and time.monotonic() - t0 < 15, timed.stdout + timed.stderr
        assert "Error: sync stopped: --timeout 3s ran out" in timed.stderr and "Traceback" not in timed.stderr

        server.proc.send_signal(signal.SIGCONT)
        agent(site.cfg, "sync", "--to", "local", "--once")
        for rid in run_ids:
            assert metric_rows(server, rid) > 0 and duplicate_rows(server, rid) == 0, rid
    finally:
        if server.proc:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


@pytest.mark.slow(seconds=8)
def test_a_live_run_whose_identifiers_may_not_leave_says_why_waits_an_interval_and_is_quarantined_at_its_end(
        tmp_path, corpus, monkeypatch):
    """Redaction refuses the run (its project matches the site's pattern). While it is live,
    `status` says why and the refused snapshot is not copied and redacted again on every pass;
    once it ends, it is quarantined; no bundle of it is ever made."""
    import tfwb_agent.sealing as sealing

    volume = corpus / "live"
    volume.mkdir()
    run = clone_run(corpus_run_dirs(corpus)["s900mviu"], volume, "live02x")   # project ct-classifier
    now = time.time()
    for p in [run, *run.rglob("*")]:
        os.utime(p, (now, now))  # being written: live
    site = sealing_site(tmp_path / "a", volume, "node-a", map_root=corpus)
    site.node_cfg.write_text(site.node_cfg.read_text().replace("quiet_seconds = 1", "quiet_seconds = 600")
                             .replace("[redact]\n", '[redact]\npatterns = ["classif"]\n'))
    attempts = []
    redact = sealing._redact
    monkeypatch.setattr(sealing, "_redact", lambda *a, **k: (attempts.append(1), redact(*a, **k))[1])

    assert _live_pass(site) == []
    (row,) = [r for r in ledger_rows(tmp_path / "a" / "node-state") if r["run_id"] == "live02x"]
    assert row["state"] == "live", row
    assert row["last_error"].startswith("live segment not sealed: the run's project matches [redact] patterns[0]"), row
    assert _live_pass(site) == [] and len(attempts) == 1   # not again before the live interval is over

    _grow(run, exit_code=0)
    agent(site.node_cfg, "scan", "--seal")
    (row,) = [r for r in ledger_rows(tmp_path / "a" / "node-state") if r["run_id"] == "live02x"]
    assert row["state"] == "quarantined" and "project matches [redact] patterns[0]" in row["last_error"], row
    assert not list(site.outbox.glob("*.tar.zst.age"))


def test_a_live_segment_takes_out_the_user_who_wrote_the_run(tmp_path, corpus):
    """A live segment is redacted from the agent's snapshot of the run (its files the agent's):
    the training user's name, which wandb 0.31 offline does not record, is read from the log on
    the volume, as for a run sealed whole."""
    import pwd

    from wandb.proto import wandb_internal_pb2 as pb

    from tfwb_agent.seal import open_bundle

    users = [u for u in pwd.getpwall() if 1000 <= u.pw_uid < 65534 and len(u.pw_name) >= 4]
    assert users, "this test needs a login user (uid 1000 or more) on the host to own the run"
    user = users[0]
    volume = corpus / "live"
    volume.mkdir()
    run = clone_run(corpus_run_dirs(corpus)["s900mviu"], volume, "live02x")  # no exit record
    # The run names its user where training code does: a note of the console.
    (log,) = run.glob("run-*.wandb")
    rec = pb.Record()
    rec.output_raw.line = f"job submitted by {user.pw_name} on the cluster\n"
    with open(log, "ab") as f:
        LogWriter(f, append_at=f.tell()).write(rec)
    now = time.time()
    for p in [run, *run.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)
        os.utime(p, (now, now))  # being written: live
    a, _b = _live_sites(tmp_path, volume, corpus)
    assert _live_pass(a) == ["live02x-0"]
    (bundle,) = a.outbox.glob("live02x-0.tar.zst.age")
    opened = open_bundle(bundle, a.open_keys(), staging_root=tmp_path / "opened")
    assert opened.staged is not None
    blob = b"".join(p.read_bytes() for p in opened.staged.rglob("*") if p.is_file())
    assert b"job submitted by" in blob and user.pw_name.encode() not in blob
