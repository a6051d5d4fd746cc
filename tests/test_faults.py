"""Fault injection (issue 17): each fault a bad day or an adversary can cause, reproduced with
the real CLI in subprocesses, real daemons and the stock tools; each test asserts that nothing
was lost, nothing duplicated, and that the user got a clear message."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import agent, status
from daemon_helpers import DaemonProc, wait_for
from fault_helpers import (HeldLock, many_runs, open_with_tools, popen_agent, read_line_with, sealed_events,
                           sealing_site)

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
    assert status(site.node_cfg)["counts"] == {"sealed": len(run_ids)}
    work = state / "work"
    assert not any(work.iterdir()) if work.exists() else True, sorted(p.name for p in work.iterdir())


def test_two_scan_seals_at_once_take_turns_and_every_bundle_is_whole(tmp_path, corpus):
    runs = many_runs(corpus, 8)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    state = site.root / "node-state"
    held = HeldLock(state)  # a third writer holds the state directory when both start
    procs = [popen_agent(site.node_cfg, "scan", "--seal") for _ in range(2)]
    for p in procs:
        line = read_line_with(p.stderr, "holds")
        assert f"another tfwb-agent (pid {__import__('os').getpid()}, command held-by-test) holds {state}; " \
               "waiting" in line, line
    held.release()  # now both go for it at once
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Traceback" not in err
    _assert_each_run_sealed_once_and_whole(site, set(runs), tmp_path)


def test_scan_seal_beside_the_daemon_seals_each_run_once(tmp_path, corpus):
    runs = many_runs(corpus, 8)
    site = sealing_site(tmp_path / "site", corpus / "many", map_root=corpus)
    d = DaemonProc(site.node_cfg, tmp_path / "daemon.log").start()
    scan = agent(site.node_cfg, "scan", "--seal")
    assert "Traceback" not in scan.stderr
    wait_for(lambda: status(site.node_cfg)["counts"] == {"sealed": len(runs)}, 60, "every run sealed", d)
    assert d.terminate()[0] == 0
    _assert_each_run_sealed_once_and_whole(site, set(runs), tmp_path)


def test_a_redacted_copy_that_lost_a_file_is_never_signed(tmp_path, corpus):
    """The check behind the lock: sealing compares the copy with what redaction wrote."""
    import shutil

    import pytest

    from seal_helpers import corpus_run_dirs, make_site
    from tfwb_agent.seal import RunIdentity, SealError, seal_run
    from tfwb_agent.seal.bundle import snapshot

    site = make_site(tmp_path / "site")
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
    from fault_helpers import craft_with_id, tree_digest
    from seal_helpers import make_site

    site = make_site(tmp_path / "site")
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
    return json.loads(alive.read_text())["expires"] < __import__("time").time()


def test_a_run_sealed_by_one_node_is_never_sealed_by_another_after_its_lease(tmp_path, corpus):
    import os
    import time

    from fault_helpers import clone_run, corpus_run_dirs

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
    a_st = {r["run_id"]: r["state"] for r in status(a.node_cfg)["runs"]}
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
    assert {r["run_id"]: r["state"] for r in status(b.node_cfg)["runs"]} == {"unfin01x": "sealed"}
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


# --- 4. damage is not a tear ------------------------------------------------------------------


def test_a_flipped_byte_in_the_last_block_of_a_finished_run_is_damage_with_its_offset(tmp_path, corpus):
    from seal_helpers import corpus_run_dirs
    from tfwb_agent.wandb_log import BLOCK_LEN, LogReader

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
    __import__("os").utime(log, (0, 0))
    from conftest import write_config
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", [corpus], quiet_seconds=1)
    agent(cfg, "scan")
    row = next(r for r in status(cfg)["runs"] if r["path"] == str(run))
    assert row["state"] == "invalid" and row["ended"] is None, row  # never a silent `crashed`
    assert f"chunk CRC mismatch at byte offset {damaged}" in row["last_error"], row["last_error"]
    assert "damage, not a torn tail" in row["last_error"]
    assert f"the {size - damaged} bytes from byte offset {damaged} to the end" in row["last_error"]
