"""Delivery plans from the log facts kept in the bundle's manifest at sealing, and starts its
`wandb sync` ahead of time.

The facts are an optimisation, never a second truth: kept facts that are not of the opened log
(another size), malformed, or missing (an older agent's bundle) mean the log is read as before;
a server holding part of a run whose rows' offsets were not kept (a very long log) has the log
read for its cut.
The server is asked before anything is sent, whatever the facts say. A `wandb sync` started
ahead that no batch took is ended with the round: no process is left behind.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deliver_helpers import RestartableServer, corpus_dirs, make_deliver_site, metric_rows, sync

from tfwb_agent.runlog import find_log
from tfwb_agent.segments import facts_from_sealed, plan_cut, read_facts, sealed_facts


def _logs(corpus: Path) -> list[Path]:
    return sorted(corpus.rglob("offline-run-*/run-*.wandb"))


def test_kept_facts_plan_what_the_log_plans(corpus: Path) -> None:
    """Through the manifest's JSON and back: every decision delivery takes from them before it
    cuts is the one the log's own fold gives (finished, crashed, torn, wandb 0.15 and 0.31)."""
    for log in _logs(corpus):
        whole = read_facts(log)
        kept = facts_from_sealed(json.loads(json.dumps(sealed_facts(whole))), log.stat().st_size)
        assert kept is not None, log
        for name in ("end", "torn", "history_rows", "summary", "run_id", "project", "entity", "exit_code",
                     "data_after_exit", "metric_values", "last_step"):
            assert getattr(kept, name) == getattr(whole, name), (log.name, name)
        for server_rows in range(whole.history_rows + 2):
            for send_end in (False, True):
                assert plan_cut(kept, server_rows, send_end) == plan_cut(whole, server_rows, send_end), \
                    (log.name, server_rows)
        # A log too long to keep each row's end (or kept ends that do not add up): a cut after
        # part of the rows is refused from the facts alone; the log must be read for it.
        for diffs in (None, [1] * whole.history_rows, [0] * whole.history_rows):
            d = {k: v for k, v in sealed_facts(whole).items() if k != "history_ends_diff"}
            if diffs is not None:
                d["history_ends_diff"] = diffs
            short = facts_from_sealed(d, log.stat().st_size)
            assert short is not None and not short.ends_known
            assert plan_cut(short, 0) == plan_cut(whole, 0)
            assert plan_cut(short, whole.history_rows, True) == plan_cut(whole, whole.history_rows, True)
            with pytest.raises(ValueError):
                plan_cut(short, whole.history_rows // 2, False)


def test_kept_facts_not_of_this_log_are_not_used(corpus: Path) -> None:
    log = _logs(corpus)[0]
    good = sealed_facts(read_facts(log))
    size = log.stat().st_size
    assert facts_from_sealed(good, size + 1) is None  # another log (rewritten after sealing)
    assert facts_from_sealed(None, size) is None      # an older agent's bundle
    for key, bad in [("history_rows", True), ("history_rows", -1), ("end", "12"), ("summary", []),
                     ("version", 99), ("last_history_end", None), ("torn", 0)]:
        assert facts_from_sealed(dict(good, **{key: bad}), size) is None, key
    assert facts_from_sealed({k: v for k, v in good.items() if k != "end"}, size) is None


def _seal(site, run_dir: Path, segment=0, facts=True) -> str:
    """Seal as the daemon does: the log's facts in the manifest (``sealing._seal``)."""
    from tfwb_agent import runs
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run

    cfg = site.config()
    ledger = site.ledger()
    try:
        f = runs.inspect(run_dir)
        seal_run(cfg, seal_keys(keys_config(cfg)), ledger, run_dir,
                 RunIdentity(f.run_id, f.project, f.entity, f.wandb_version), segment, {"note": "test input"},
                 log_facts=sealed_facts(read_facts(find_log(run_dir))) if facts else None)
        return f.run_id
    finally:
        ledger.close()


def _warm_left(root: Path) -> list[int]:
    """Processes started ahead (``upload.warm``) still running in a directory under ``root``."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"from wandb.cli.cli import cli" in cmd and cwd.startswith(str(root)):
            left.append(int(pid))
    return left


def test_a_grown_run_sealed_with_its_facts_arrives_whole_once(corpus: Path, tmp_path: Path) -> None:
    """Segment 0 (the log cut after its first rows) is delivered; the grown log is sealed as
    segment 1 with its facts: the server holds part of it, so the log is read for the cut and
    only the new rows go. A second gateway ledger that knows nothing of either asks the server,
    finds the run whole, sends nothing, and leaves no `wandb sync` it started ahead behind."""
    src = next(d for d in corpus_dirs(corpus) if read_facts(find_log(d)).exit_code == 0
               and not read_facts(find_log(d)).data_after_exit)
    whole = read_facts(find_log(src))
    first_rows = whole.history_rows * 2 // 3
    before = tmp_path / "before" / src.name
    shutil.copytree(src, before, symlinks=True)
    with open(find_log(before), "r+b") as f:
        f.truncate(whole.history_ends[first_rows - 1])
    server = RestartableServer(tmp_path / "server").start()
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        run_id = _seal(site, before)
        assert sync(site, "--once").returncode == 0
        assert metric_rows(server, run_id) == read_facts(find_log(before)).metric_values

        from tfwb_agent.seal import Segment
        _seal(site, src, Segment(1, read_facts(find_log(before)).end, None))
        out = json.loads(sync(site, "--once").stdout)
        seg1 = next(r for r in out["deliveries"]["rows"] if r["segment"] == 1)
        assert seg1["state"] == "confirmed", seg1
        assert seg1["rows_sent"] == whole.history_rows - first_rows, seg1
        assert metric_rows(server, run_id) == whole.metric_values  # every value once

        other = make_deliver_site(tmp_path / "other", server.url, server.api_key)
        _seal(other, src)
        out = json.loads(sync(other, "--once").stdout)
        row = next(r for r in out["deliveries"]["rows"] if r["run_id"] == run_id)
        assert row["state"] == "confirmed" and row["rows_sent"] == 0, row
        assert metric_rows(server, run_id) == whole.metric_values
        assert _warm_left(tmp_path) == []
        deliver_dir = other.config().state_dir / "deliver"
        assert not list(deliver_dir.rglob("sync-warm-*")), list(deliver_dir.rglob("*"))

        # The server goes away after the target's last probe said online: the process started
        # before this probe is ended with the round, and nothing is confirmed.
        server.kill()
        late = _seal(site, next(d for d in corpus_dirs(corpus) if d.name != src.name))
        out = json.loads(sync(site, "--once", check=False).stdout)
        assert all(r["state"] != "confirmed" for r in out["deliveries"]["rows"] if r["run_id"] == late), out
        assert _warm_left(tmp_path) == []
        assert not list((site.config().state_dir / "deliver").rglob("sync-warm-*"))
    finally:
        server.stop()


def test_a_process_started_ahead_sends_nothing_without_its_runs(tmp_path: Path) -> None:
    """The agent gone before handing it runs (its stdin closes): it ends by itself, asking the
    server nothing."""
    from tfwb_agent.deliver import upload

    server = RestartableServer(tmp_path / "server").start()
    try:
        w = upload.warm(server.url, server.api_key, tmp_path / "warm")
        assert w is not None
        assert w.proc.stdin is not None
        w.proc.stdin.close()
        assert w.proc.wait(timeout=120) == 0, w.log_path.read_text(errors="replace")[-2000:]
        upload.finished(upload.Upload(w.proc, w.log_path))
        assert server.query("SELECT COUNT(*) FROM runs")[0][0] == 0
    finally:
        server.stop()
