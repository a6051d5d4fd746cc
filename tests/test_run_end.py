"""How a run ended, truthfully (issue 18), with real wandb 0.31 writers, a real daemon and the
test OpenWandb on 127.0.0.1: a pause is not a crash, a killed live run arrives crashed, a killed
and resumed run that finishes is not left marked crashed, and a reload re-plans a window wait.

What is checked is what the server holds (rows, steps, summary) and what `status` shows.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_fork import popen
from conftest import REPO, status
from daemon_helpers import DaemonProc, Writer, dump, run_states, wait_for
from deliver_helpers import RestartableServer, duplicate_rows, make_deliver_site, metric_rows, server_summary

from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts

PAUSER = REPO / "tests" / "writers" / "pause_run.py"
QUIET = 3.0
LIVE = "live = true\nlive_interval = 1\nbackoff_base = 1\nbackoff_cap = 3\n"
WHOLE = "backoff_base = 1\nbackoff_cap = 3\n"


def _site(tmp_path: Path, server: RestartableServer, root: Path, sync: str, policy: str | None = None,
          **watch: float):
    site = make_deliver_site(tmp_path / "site", server.url, server.api_key, sync=sync, policy=policy)
    watch = {"quiet_seconds": QUIET, "reconcile_seconds": 5, **watch}
    with open(site.cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{root}"]\n' + "".join(f"{k} = {v}\n" for k, v in watch.items()))
    return site


class Pauser:
    """tests/writers/pause_run.py: logs, goes quiet until told, logs again, finishes."""

    def __init__(self, root: Path, before: int, after: int, resume: tuple[str, int] | None = None) -> None:
        env = dict(os.environ, WRITER_PROJECT="ct-pause")
        env.pop("WANDB_MODE", None)
        args = [str(a) for a in (resume or ())]
        self.proc = popen([sys.executable, str(PAUSER), str(root), str(before), str(after), *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=env, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "RUN", line
        self.run_id, self.run_dir = line[1], Path(line[2]).parent

    def read_until(self, word: str) -> None:
        for line in self.proc.stdout:
            if line.startswith(word):
                return
        raise AssertionError(f"writer exited ({self.proc.wait()}) before printing {word}")

    def go_on(self) -> int:
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        self.read_until("DONE")
        return self.proc.wait(timeout=120)


def _server_steps(server, run_id: str) -> list[int]:
    return [r[0] for r in server.query("SELECT DISTINCT step FROM metrics WHERE run_id = ? ORDER BY step", (run_id,))]


def _delivered(cfg: Path, run_id: str, ended: str):
    """Every directory of ``run_id`` delivered, ended as ``ended`` (status rows), or None."""
    rows = [r for r in status(cfg)["runs"] if r["run_id"] == run_id]
    return rows if rows and all(r["state"] == "delivered" and r["ended"] == ended for r in rows) else None


def _audit(cfg: Path, kind: str) -> list[dict]:
    from tfwb_agent import config as config_mod
    path = config_mod.load(str(cfg)).state_dir / "audit.log"
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    return [e for e in events if e["kind"] == kind]


def _assert_whole_once(server, run_id: str, logs: list[Path]) -> None:
    """The server holds every whole record's row of ``logs`` (the run's parts), once."""
    want = [read_facts(find_log(d)) for d in logs]
    assert metric_rows(server, run_id) == sum(f.metric_values for f in want)
    assert duplicate_rows(server, run_id) == 0
    assert len(_server_steps(server, run_id)) == sum(f.history_rows for f in want)


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("sync", [WHOLE, LIVE], ids=["whole", "live"])
def test_a_pause_longer_than_quiet_seconds_is_revised_and_nothing_is_lost(tmp_path, sync):
    """Issue 18 (1): a run quiet for longer than quiet_seconds is taken for crashed and
    delivered so; when it logs again and finishes, the growth arrives as a further segment,
    every step once, and the server and `status` say finished."""
    server = RestartableServer(tmp_path).start()
    root = tmp_path / "volume"
    root.mkdir()
    site = _site(tmp_path, server, root, sync)
    d = DaemonProc(site.cfg, tmp_path / "daemon.log").start()
    w = Pauser(root, 30, 30)
    try:
        w.read_until("PAUSED")
        # The silence is taken for a crash (wandb 0.31 wrote the first 30 steps ~15 s in, then nothing).
        wait_for(lambda: server_summary(server, w.run_id).get("tfwb/ended") == "crashed", 90,
                 "the paused run on the server, marked crashed", d)
        wait_for(lambda: _delivered(site.cfg, w.run_id, "crashed"), 30, "status: delivered (crashed)", d)
        assert 0 < len(_server_steps(server, w.run_id)) <= 30

        assert w.go_on() == 0  # the run logs its 30 further steps and finishes
        assert read_facts(find_log(w.run_dir)).exit_code == 0
        (st,) = wait_for(lambda: _delivered(site.cfg, w.run_id, "finished"), 90, "the run delivered as finished", d)
        _assert_whole_once(server, w.run_id, [w.run_dir])
        assert _server_steps(server, w.run_id) == list(range(60))
        summary = server_summary(server, w.run_id)
        assert summary["tfwb/ended"] == "finished" and not summary.get("tfwb/ended_reason"), summary
        # The ledger (through `status`) and the audit log show the revision.
        assert "ending revised" in st["reason"] and "crashed" in st["reason"], dump(st)
        revised = [e for e in _audit(site.cfg, "ending_revised") if e["run_id"] == w.run_id]
        # Once for the pause; on a loaded machine wandb's own write gaps before it can exceed
        # quiet_seconds too, and each such silence is revised the same way.
        assert revised and all(e["was"] == "crashed" for e in revised), revised
        assert [e["rows_now"] for e in revised] == sorted({e["rows_now"] for e in revised}), revised
        segs = [x for x in status(site.cfg)["deliveries"] if x["run_id"] == w.run_id]
        assert len(segs) >= 2 and {x["state"] for x in segs} == {"confirmed"}, segs
        assert d.alive()
    finally:
        w.proc.kill()
        d.terminate()
        server.stop()


@pytest.mark.slow(seconds=60)
def test_a_live_run_killed_at_random_moments_arrives_crashed(tmp_path):
    """Issue 18 (2): with sync.live, a run SIGKILLed after its live segments caught up arrives
    marked crashed (its last segment brings no row, only how it ended), with every whole
    record before the tear, none twice. Three runs, each killed at its own random moment."""
    server = RestartableServer(tmp_path).start()
    root = tmp_path / "volume"
    root.mkdir()
    site = _site(tmp_path, server, root, LIVE)
    d = DaemonProc(site.cfg, tmp_path / "daemon.log").start()
    writers = [Writer(root, "kill", 10, rate=0.05, project="ct-kill") for _ in range(3)]
    rng = random.Random()
    try:
        for w in writers:
            w.read_until("READY")
        for w in writers:
            # Live segments are on the server: the run is being delivered while it runs.
            wait_for(lambda: metric_rows(server, w.run_id) > 0, 90, f"a live segment of {w.run_id}", d)
            time.sleep(rng.uniform(0.0, 3.0))  # the random moment of the kill (what is under test), not a wait
            w.sigkill()
        for w in writers:
            wait_for(lambda: _delivered(site.cfg, w.run_id, "crashed"), 90, f"{w.run_id} delivered as crashed", d)
            summary = server_summary(server, w.run_id)
            assert summary.get("tfwb/ended") == "crashed", (w.run_id, summary)
            assert "no exit record" in summary.get("tfwb/ended_reason", ""), summary
            _assert_whole_once(server, w.run_id, [w.run_dir])
        assert d.alive()
    finally:
        for w in writers:
            w.proc.kill()
        d.terminate()
        server.stop()


@pytest.mark.slow(seconds=50)
@pytest.mark.parametrize("sync", [WHOLE, LIVE], ids=["whole", "live"])
def test_a_killed_run_resumed_and_finished_is_not_left_crashed(tmp_path, sync):
    """Issue 18 (3): a job SIGKILLed (its part delivered, marked crashed), started again with
    the same run id and finished: one run on the server, continuous steps, no crash marker.
    Live too (found by a tester): the resumed directory's live segments were numbered from 0
    again, each one "already sealed with other content", and the run was never delivered."""
    server = RestartableServer(tmp_path).start()
    root = tmp_path / "volume"
    root.mkdir()
    site = _site(tmp_path, server, root, sync)
    d = DaemonProc(site.cfg, tmp_path / "daemon.log").start()
    w = Writer(root, "kill", 10, rate=0.05, project="ct-resume")
    try:
        w.read_until("READY")
        wait_for(lambda: run_states(site.cfg).get(w.run_id, {}).get("steps", 0) > 0, 60, "rows on disk", d)
        w.sigkill()
        wait_for(lambda: server_summary(server, w.run_id).get("tfwb/ended") == "crashed", 60,
                 "the killed part on the server, marked crashed", d)
        first = read_facts(find_log(w.run_dir))
        k = first.last_step + 1
        again = Pauser(root, 20, 0, resume=(w.run_id, k))
        again.read_until("DONE")
        assert again.proc.wait(timeout=60) == 0 and again.run_dir != w.run_dir
        rows = wait_for(lambda: _parts_done(site.cfg, w.run_id), 90, "both parts delivered", d)
        assert len(rows) == 2, dump(rows)
        assert server.query("SELECT COUNT(*) FROM runs WHERE run_id = ?", (w.run_id,))[0][0] == 1
        _assert_whole_once(server, w.run_id, [w.run_dir, again.run_dir])
        assert _server_steps(server, w.run_id) == list(range(k + 20))
        summary = server_summary(server, w.run_id)
        assert summary["tfwb/ended"] == "finished" and not summary.get("tfwb/ended_reason"), summary
    finally:
        w.proc.kill()
        d.terminate()
        server.stop()


def _parts_done(cfg: Path, run_id: str):
    rows = [r for r in status(cfg)["runs"] if r["run_id"] == run_id]
    ok = len(rows) == 2 and all(r["state"] == "delivered" for r in rows) and \
        sorted(r["ended"] for r in rows) == ["crashed", "finished"]
    return rows if ok else None


@pytest.mark.slow(seconds=30)
def test_a_widened_window_sends_in_the_turn_after_sighup(tmp_path, corpus):
    """Issue 18 (4): a run waiting on a closed delivery window; the window is widened and the
    daemon reloaded (SIGHUP, as `systemctl reload` does): it goes in the turn the reload brings,
    not at the opening the old window gave. The daemon's own turns are minutes apart here."""
    server = RestartableServer(tmp_path).start()
    root = tmp_path / "volume"
    (src,) = corpus.glob("wandb-0.31*/wandb/offline-run-*-3salp52t")
    shutil.copytree(src, root / src.name, symlinks=True)
    hour = time.localtime().tm_hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    wide = f"{(hour + 23) % 24:02d}:00-{(hour + 3) % 24:02d}:00"  # now, and the closed hour too
    policy = f'[[policy]]\nprojects = ["*"]\ntargets = ["local"]\nwindows = ["{closed}"]\n'
    site = _site(tmp_path, server, root, WHOLE, policy=policy, reconcile_seconds=600, lease_seconds=1800)
    d = DaemonProc(site.cfg, tmp_path / "daemon.log").start()
    try:
        def waiting():
            ds = [x for x in status(site.cfg)["deliveries"] if x["run_id"] == "3salp52t"]
            return ds if ds and ds[0]["state"] == "pending" and "outside its window" in (ds[0]["why"] or "") else None

        wait_for(waiting, 60, "the run waiting for its window", d)
        assert metric_rows(server, "3salp52t") == 0
        site.cfg.write_text(site.cfg.read_text().replace(closed, wide))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _delivered(site.cfg, "3salp52t", "finished"), 120, "delivery after the reload", d)
        assert metric_rows(server, "3salp52t") > 0 and duplicate_rows(server, "3salp52t") == 0
        out = d.output()
        reloaded = out.index("config reloaded")
        assert "confirmed" in out[reloaded:] and "confirmed" not in out[:reloaded]
    finally:
        d.terminate()
        server.stop()
