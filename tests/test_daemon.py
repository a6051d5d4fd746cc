"""The daemon against real wandb processes: events, quiet periods, SIGKILL, restarts, signals."""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from conftest import status
from daemon_helpers import DaemonProc, Writer, dump, run_states, wait_for

QUIET = 4.0
LATENCY = 3.0  # the bound, from the last byte on disk to status saying so


def _check_latency(st: dict, run_ids: list[str], expected_ended: str, bound: float) -> list[float]:
    lat = []
    for rid in run_ids:
        r = st[rid]
        assert r["ended"] == expected_ended, dump(r)
        # `updated` is when the daemon recorded the final state; `mtime` when the last byte landed.
        lat.append(r["updated"] - r["mtime"])
    assert max(lat) <= bound, f"{expected_ended}: latencies {sorted(lat)} exceed {bound}s"
    return lat


@pytest.mark.slow(seconds=55)
def test_daemon_tracks_twenty_real_runs_and_survives_its_own_sigkill(tmp_path, make_config):
    root = tmp_path / "volume"
    root.mkdir()
    cfg = make_config([root], quiet_seconds=QUIET, reconcile_seconds=30)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()

    held = Writer(root, "hold", 20)
    killed = Writer(root, "kill", 20)
    held.read_until("READY")
    killed.read_until("READY")
    # 18 runs that finish, three at a time (two cores): three processes writing six runs each,
    # one after another.
    finishing = [Writer(root / f"many{k}", "many", 40, 6) for k in range(3)]
    for w in finishing:
        assert w.wait() == 0
    killed.sigkill()
    fin_ids = [r for w in finishing for r in w.run_ids]
    assert len(set(fin_ids)) == 18

    def settled():
        st = run_states(cfg)
        ok = (all(st.get(r, {}).get("ended") == "finished" for r in fin_ids)
              and st.get(killed.run_id, {}).get("ended") == "crashed")
        return st if ok else None

    st = wait_for(settled, 90, "18 finished and 1 crashed run", d)
    assert len(st) == 20
    assert st[held.run_id]["state"] == "live" and st[held.run_id]["ended"] is None
    _check_latency(st, fin_ids, "finished", LATENCY)
    _check_latency(st, [killed.run_id], "crashed", QUIET + LATENCY)
    assert st[killed.run_id]["steps"] > 0

    # The daemon dies hard; runs arrive while it is down; it is started again.
    d.kill()
    late = [Writer(root, "finish", 30) for _ in range(2)]
    for w in late:
        assert w.wait() == 0
    d = DaemonProc(cfg, tmp_path / "daemon2.log").start()
    st = wait_for(lambda: (s := run_states(cfg)) and all(s.get(w.run_id, {}).get("ended") == "finished"
                                                         for w in late) and s, 30, "runs written while down", d)
    assert len(st) == 22
    assert sum(r["ended"] == "finished" for r in st.values()) == 20
    assert st[killed.run_id]["ended"] == "crashed"
    assert st[held.run_id]["state"] == "live"

    # The held run finishes now: seen within the bound after its last byte.
    held.close_stdin()
    assert held.wait() == 0
    st = wait_for(lambda: (s := run_states(cfg))[held.run_id]["ended"] == "finished" and s, 30, "held run", d)
    _check_latency(st, [held.run_id], "finished", LATENCY)
    assert st[held.run_id]["steps"] >= 20

    rc, took = d.terminate()
    assert rc == 0 and took < 5.0, (rc, took)
    assert "stopped" in d.output()


def test_bad_runs_are_marked_and_the_daemon_keeps_going(tmp_path, make_config, corpus):
    from test_runs import _bad_runs

    root = tmp_path / "volume"
    root.mkdir()
    cfg = make_config([root], quiet_seconds=2, reconcile_seconds=30)
    d = DaemonProc(cfg, tmp_path / "daemon.log", unprivileged=True).start()
    made = _bad_runs(root, corpus)
    w = Writer(root, "finish", 10)
    assert w.wait() == 0
    wait_for(lambda: (s := run_states(cfg)) and s.get(w.run_id, {}).get("ended") == "finished" and s, 30,
                  "a good run after bad ones", d)
    rows = status(cfg)["runs"]
    bad = [r for r in rows if Path(r["path"]).name.rsplit("-", 1)[-1] in made]
    wait_for(lambda: all(r["state"] == "invalid" for r in status(cfg)["runs"]
                         if Path(r["path"]).name.rsplit("-", 1)[-1] in made and r["path"]), 20, "bad runs invalid", d)
    assert len(bad) == len(made)
    assert d.alive()
    d.terminate()


def test_sighup_reloads_the_config_and_poll_mode_sees_runs(tmp_path, make_config, corpus):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    shutil.copytree(next(corpus.glob("wandb-0.15.12/wandb/offline-run-*-itokze55")),
                    second / "offline-run-20260101_000000-itokze55")
    cfg = make_config([first], mode="poll", poll_seconds=0.5, quiet_seconds=2, reconcile_seconds=300)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    w = Writer(first, "finish", 10)
    assert w.wait() == 0
    wait_for(lambda: run_states(cfg).get(w.run_id, {}).get("ended") == "finished", 20, "poll mode run", d)
    assert "itokze55" not in run_states(cfg)
    # Add the second root and reload.
    text = cfg.read_text().replace(f'roots = ["{first}"]', f'roots = ["{first}", "{second}"]')
    cfg.write_text(text)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: run_states(cfg).get("itokze55", {}).get("ended") == "finished", 20, "run in the new root", d)
    # A broken config on reload is refused, and the daemon goes on with the old one.
    cfg.write_text(text + "\n[watch.bogus]\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.output(), 10, "reload refusal", d)
    assert d.alive()
    rc, took = d.terminate()
    assert rc == 0 and took < 5.0


def test_two_daemons_on_one_volume_claim_each_run_once(tmp_path, make_config, corpus):
    root = tmp_path / "shared"
    src = sorted(p for p in corpus.glob("wandb-*/wandb/offline-run-*"))
    for i in range(5):
        for run in src:
            shutil.copytree(run, root / f"node{i}" / f"{run.name}{i}", symlinks=True)
    n_runs = 5 * len(src)
    kw = dict(quiet_seconds=1, reconcile_seconds=1, lease_seconds=3)
    cfg_a = make_config([root], name="a", node_name="node-a", **kw)
    cfg_b = make_config([root], name="b", node_name="node-b", **kw)
    a = DaemonProc(cfg_a, tmp_path / "a.log").start()
    b = DaemonProc(cfg_b, tmp_path / "b.log").start()

    def both():
        pa = {r["path"] for r in status(cfg_a)["runs"]}
        pb = {r["path"] for r in status(cfg_b)["runs"]}
        return (pa, pb) if len(pa | pb) == n_runs else None

    pa, pb = wait_for(both, 60, "all runs claimed", a)
    assert not pa & pb, f"claimed twice: {sorted(pa & pb)}"
    # A holds its runs; once A is gone and its leases expire, B takes them over.
    a.kill()
    wait_for(lambda: len(status(cfg_b)["runs"]) == n_runs, 30, "takeover after lease expiry", b)
    b.terminate()
