"""`sync` starts its `wandb sync` ahead (``deliver/ahead.py``), before it loads the engine. What
must hold: it starts one only where the first round will most likely send (an idle `sync --once`
timer, a dry run, a target offline at its last probe, a segment policy holds: no process at all;
a target never probed yet: one);
the round discards one it cannot use (the target offline now, nothing left to send); a stopped
sync kills it; and none outlives the command, nor its wandb service, nor its directory.

Real processes observed in /proc, a real ledger and bundles sealed from the shared corpus. The
target's URL is a closed port on 127.0.0.1: the warm process waits for its runs without asking
anyone, and a probe finds the target offline.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deliver_helpers import RestartableServer, corpus_dirs, make_deliver_site, metric_rows, seal_dirs, short_tmpdir
from proc_helpers import children_of, running, wait_for
from tfwb_agent import statedir
from tfwb_agent.deliver import ahead
from tfwb_agent.deliver.engine import deliver_round, pending_units
from tfwb_agent.deliver.outcomes import set_state
from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts

CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port


def _service_of(pid: int) -> list[int]:
    out = []
    for c in children_of(pid):
        try:
            if b"wandb-core" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


@pytest.fixture
def site(tmp_path: Path, corpus: Path):
    """A node whose target `local` was online at its last probe (now a closed port)."""
    s = make_deliver_site(tmp_path / "site", CLOSED, "k" * 40)
    s.runs = corpus_dirs(corpus)
    with _ledger(s) as ledger:
        ledger.record_target("local", "online", None, 0, None, time.time())
    return s


class _ledger:
    def __init__(self, site) -> None:
        self.ledger = site.ledger()

    def __enter__(self):
        return self.ledger

    def __exit__(self, *exc) -> None:
        self.ledger.close()


@contextlib.contextmanager
def _online(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, n_runs: int = 1, **site_kw):
    """A site with ``n_runs`` runs of the corpus sealed, its target `local` a real server that
    was online at its last probe, and a ``TMPDIR`` of the test's own: (site, server, runs, tmp)."""
    with short_tmpdir() as tmp:
        monkeypatch.setenv("TMPDIR", str(tmp))
        server = RestartableServer(tmp_path / "server").start()
        try:
            s = make_deliver_site(tmp_path / "site", server.url, server.api_key, **site_kw)
            runs = corpus_dirs(corpus)[:n_runs]
            seal_dirs(s, runs)
            with _ledger(s) as ledger:
                ledger.record_target("local", "online", None, 0, None, time.time())
            yield s, server, runs, tmp
        finally:
            server.stop()


def _arrived_once(server, runs: list[Path]) -> None:
    for r in runs:
        facts = read_facts(find_log(r))
        assert metric_rows(server, facts.run_id) == facts.metric_values, r.name


def _start(site, **kw):
    args = dict(only_run=None, dry_run=False, retry_failed=False) | kw
    with _ledger(site) as ledger:
        return ahead.start(ledger, site.config(), "local", **args)


def _confirm_all(site) -> None:
    with _ledger(site) as ledger:
        for u in pending_units(ledger):
            set_state(ledger, u, "local", "confirmed", reason="test: delivered by another process")


@pytest.mark.parametrize("case", ["nothing sealed", "all confirmed", "dry run", "offline at last probe",
                                  "policy lets nothing go", "another run only"])
def test_no_wandb_sync_starts_where_the_round_would_send_nothing(site, case: str) -> None:
    if case != "nothing sealed":
        seal_dirs(site, site.runs[:1])
    if case == "all confirmed":
        _confirm_all(site)
    if case == "offline at last probe":
        with _ledger(site) as ledger:
            ledger.record_target("local", "offline", "connection refused", 1, time.time() + 60, time.time())
    if case == "policy lets nothing go":  # held until someone approves the run
        site.cfg.write_text(site.cfg.read_text().replace('targets = ["local"]\n', 'targets = ["local"]\nhold = true\n'))
        assert "hold = true" in site.cfg.read_text()
    before = set(children_of(os.getpid()))
    w = _start(site, dry_run=case == "dry run", only_run="no-such-run" if case == "another run only" else None)
    assert w is None
    assert set(children_of(os.getpid())) == before, "a process was started"
    assert not (site.config().state_dir / "work").exists() or not any((site.config().state_dir / "work").iterdir())


@pytest.mark.parametrize("probed", ["online at last probe", "never probed"])
def test_pending_work_starts_one_and_finish_ends_it_its_service_and_its_directory(site, probed: str) -> None:
    seal_dirs(site, site.runs[:1])
    if probed == "never probed":  # a target just set up: its first sync most likely sends
        with _ledger(site) as ledger:
            ledger.db.execute("DELETE FROM targets")
            ledger.db.commit()
    work = site.config().state_dir / "work"
    killed = work / f"p{2 ** 22 + 1}-1" / "sync-ahead"  # a SIGKILLed sync's (no such pid: pid_max is 2**22)
    (killed / "wandb-home").mkdir(parents=True)
    w = _start(site)
    assert not killed.parent.exists(), "a killed sync's directory was left"
    assert w is not None and running(w.proc.pid)
    service = wait_for(lambda: _service_of(w.proc.pid))
    assert service, "the warm sync did not start wandb's service"
    assert w.home.is_relative_to(work), w.home
    ahead.finish(w)
    assert not running(w.proc.pid)
    assert wait_for(lambda: not any(running(p) for p in service)), f"wandb-core {service} still running"
    assert not any(work.iterdir()), list(work.iterdir())


def test_the_round_sends_with_the_wandb_sync_started_ahead(tmp_path: Path, corpus: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Handed to the round, the process started ahead is the upload (it ends by itself, 0; one
    the round discarded is killed), every row arrives once, and nothing of it is left: not its
    directory, and not wandb's temporary directories (its media and artifacts scratch, which
    wandb removes at the interpreter's exit, which the process skips: in a daemon's private
    /tmp they piled up, two per upload, for as long as it ran)."""
    with _online(tmp_path, corpus, monkeypatch) as (s, server, runs, tmp):
        w = _start(s)
        assert w is not None
        with _ledger(s) as ledger:
            rr = deliver_round(ledger, s.config(), "local", force_probe=True, wait_for_others=True, ahead=w)
        assert [o.state for o in rr.outcomes] == ["confirmed"], rr
        assert w.proc.returncode == 0, f"the warm sync was not the upload (status {w.proc.returncode})"
        _arrived_once(server, runs)
        ahead.finish(w)
        assert not any((s.config().state_dir / "work").iterdir())
        assert sorted(p.name for p in tmp.iterdir()) == [], "left in TMPDIR"


def test_a_sync_command_leaves_nothing_in_the_temporary_directory(tmp_path: Path, corpus: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`tfwb-agent sync` as its own process (not forked from this one) and the upload it starts
    ahead both end without the interpreter's finalization: neither leaves anything in
    ``TMPDIR`` (a timer's `sync --once` added wandb's two scratch directories each time and grew
    wandb's CLI debug log, readable by every user). The run is confirmed on the server."""
    monkeypatch.setenv("TFWB_TEST_CLI", "exec")  # a process of its own, not a fork (cli_fork.py)
    with _online(tmp_path, corpus, monkeypatch) as (s, server, runs, tmp):
        out = subprocess.run([sys.executable, "-m", "tfwb_agent", "--config", str(s.cfg), "sync", "--to", "local",
                              "--once", "--json"], capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr[-3000:]
        assert [r["state"] for r in json.loads(out.stdout)["deliveries"]["rows"]] == ["confirmed"], out.stdout
        _arrived_once(server, runs)
        assert sorted(p.name for p in tmp.iterdir()) == [], "left in TMPDIR"


def test_a_long_waves_first_part_is_sent_by_the_process_started_ahead(tmp_path: Path, corpus: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A wave of more than one upload's runs goes in parts (``waves.wave_parts``; here two runs
    per upload): the first part's upload is the process the round started before its probe
    (claimed when the batch is handed to its sender thread), the second part's is started once
    its runs are ready (``upload.start``, wrapped here to count its calls: it still runs). The
    server is asked about the whole wave once before sending: the second part is not asked
    again. Every row arrives once, and no process or directory is left, nor anything in the
    temporary directory."""
    from tfwb_agent.deliver import confirm, run_lists, upload, waves

    monkeypatch.setattr(waves, "BATCH_MAX", 2)
    with _online(tmp_path, corpus, monkeypatch, n_runs=3, sync="max_parallel = 1\n") as (s, server, runs, tmp):
        assert len({read_facts(find_log(r)).project for r in runs}) == 1  # one batch per part
        cold: list[list[str]] = []
        warmed: list[upload.Warm] = []
        start, warm = upload.start, upload.warm

        def counted_start(run_dirs, *args, **kwargs):
            cold.append(sorted(d.name for d in run_dirs))
            return start(run_dirs, *args, **kwargs)

        def counted_warm(*args, **kwargs):
            w = warm(*args, **kwargs)
            if w is not None:
                warmed.append(w)
            return w
        asked_before: list[tuple[str, int]] = []
        fetch_rows, absent_runs = confirm.fetch_rows, run_lists.absent_runs

        def counted_rows(base_url, api_key, wanted, *args, **kwargs):
            asked_before.append(("by name", len(wanted)))
            return fetch_rows(base_url, api_key, wanted, *args, **kwargs)

        def counted_lists(base_url, api_key, wanted, *args, **kwargs):
            asked_before.append(("run lists", len(wanted)))
            return absent_runs(base_url, api_key, wanted, *args, **kwargs)
        monkeypatch.setattr(upload, "start", counted_start)
        monkeypatch.setattr(upload, "warm", counted_warm)
        monkeypatch.setattr(confirm, "fetch_rows", counted_rows)
        monkeypatch.setattr(run_lists, "absent_runs", counted_lists)
        with _ledger(s) as ledger:
            rr = deliver_round(ledger, s.config(), "local", force_probe=True, wait_for_others=True)
        assert [o.state for o in rr.outcomes] == ["confirmed"] * 3, rr
        # The whole wave, once, before either part went: the project's run list proves all three
        # new runs absent, and none is asked about by name.
        assert asked_before == [("run lists", 3)], asked_before
        assert len(warmed) == 1 and warmed[0].proc.returncode == 0, "the process started ahead was not an upload"
        assert cold == [sorted(r.name for r in runs[2:])], cold  # the second part, in one upload
        _arrived_once(server, runs)
        assert not list((s.config().state_dir / "deliver").rglob("sync-*")), "a process's directory was left"
        assert sorted(p.name for p in tmp.iterdir()) == [], "left in TMPDIR"


@pytest.mark.parametrize("case", ["target offline now", "nothing left to send"])
def test_the_round_ends_a_warm_sync_it_cannot_use(site, case: str) -> None:
    seal_dirs(site, site.runs[:1])
    w = _start(site)
    assert w is not None
    service = wait_for(lambda: _service_of(w.proc.pid))
    assert service
    if case == "nothing left to send":
        _confirm_all(site)  # another process delivered it meanwhile
    with _ledger(site) as ledger:
        rr = deliver_round(ledger, site.config(), "local", force_probe=True, wait_for_others=True, ahead=w)
        states = {d["state"] for d in ledger.deliveries(target="local")}
    assert not running(w.proc.pid), "the round left the warm sync running"
    assert wait_for(lambda: not any(running(p) for p in service)), f"wandb-core {service} still running"
    if case == "target offline now":
        assert rr.status == "offline" and rr.waiting == 1, rr
        assert states <= {"pending"}, states
    else:
        assert rr.outcomes == [] and states == {"confirmed"}, (rr, states)
    ahead.finish(w)  # the command's last word: nothing left to end, the directory goes
    assert not any((site.config().state_dir / "work").iterdir())


def _sync_blocked_on_the_target(site, *args: str) -> tuple[subprocess.Popen, int]:
    """`sync --to local --once` as a real process, waiting for the target's lock, which this
    test holds (as another process delivering to it would): (the process, the lock's fd).
    Returns once sync says it waits: whatever it starts ahead is started by then."""
    root = statedir.deliver_root(site.config())
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "local.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen([sys.executable, "-m", "tfwb_agent", "--config", str(site.cfg), "sync", "--to", "local",
                             "--once", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    said, deadline = b"", time.monotonic() + 120
    while b"waiting for it to finish" not in said:
        assert proc.poll() is None, (proc.returncode, said, proc.stdout.read())
        assert time.monotonic() < deadline, said
        if select.select([proc.stderr], [], [], 1.0)[0]:
            said += os.read(proc.stderr.fileno(), 4096)
    return proc, fd


def test_an_idle_sync_starts_no_wandb_sync(site) -> None:
    """Nothing pending (what a `sync --once` timer meets most of the time): while the real
    command waits for the target, it has started no process."""
    seal_dirs(site, site.runs[:1])
    _confirm_all(site)
    proc, fd = _sync_blocked_on_the_target(site)
    try:
        assert children_of(proc.pid) == []
    finally:
        os.close(fd)  # let it go on: it finds nothing to send
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"nothing to deliver" in out, out


def test_a_stopped_sync_kills_the_wandb_sync_it_started_ahead(site) -> None:
    """Pending work: the command starts its wandb sync ahead, then waits for the target; a
    SIGTERM now ends the command (143) and the warm process and its service with it, and
    removes its directory."""
    seal_dirs(site, site.runs[:1])
    proc, fd = _sync_blocked_on_the_target(site)
    try:
        warm = children_of(proc.pid)
        assert len(warm) == 1, warm
        service = wait_for(lambda: _service_of(warm[0]))
        assert service, "the warm sync did not start wandb's service"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    assert b"stopped by SIGTERM" in err, err
    assert not running(warm[0]), "the warm sync outlived the stopped command"
    assert wait_for(lambda: not any(running(p) for p in service)), f"wandb-core {service} still running"
    assert not any((site.config().state_dir / "work").iterdir())
    with _ledger(site) as ledger:
        assert {d["state"] for d in ledger.deliveries(target="local")} <= {"pending"}
