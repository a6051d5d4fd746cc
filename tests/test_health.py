"""`tfwb-agent health` against a real daemon: keys missing then mounted, the disk floor, a loop
that stops turning; and the daemon's systemd notify protocol on a socket the test binds."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cli_fork import popen
from conftest import REPO, agent
from daemon_helpers import STARTED, DaemonProc, wait_for
from seal_helpers import BUNDLE_GLOB, corpus_run_dirs
from test_k8s_secrets import STAMP, _keys


class EnvDaemon(DaemonProc):
    """A daemon with extra environment (NOTIFY_SOCKET ...)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        super().__init__(config, log)
        self.env = env

    def start(self) -> "EnvDaemon":
        self._out = open(self.log, "ab")
        self.proc = popen([sys.executable, "-m", "tfwb_agent", "daemon"], stdout=self._out,
                                     stderr=subprocess.STDOUT,
                                     env=dict(os.environ, TFWB_AGENT_CONFIG=str(self.config), **self.env))
        STARTED.append(self)
        return self


def _node(tmp_path: Path, corpus: Path, node_key: Path, recipient: str, extra: str = "") -> Path:
    root = tmp_path / "watched"
    src = sorted(corpus_run_dirs(corpus).values())[0]
    shutil.copytree(src, root / src.name)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\nnode_name = "gpu01"\n[watch]\nroots = ["{root}"]\n'
                   f'mode = "poll"\npoll_seconds = 0.5\nquiet_seconds = 1\nlease_seconds = 3\n'
                   f'[keys]\nnode_key = "{node_key}"\nrecipients = ["{recipient}"]\n' + extra)
    return cfg


def health(cfg: Path, *args: str) -> tuple[int, dict]:
    res = agent(cfg, "health", "--json", *args, check=False)
    assert res.returncode in (0, 1), res.stderr
    out = json.loads(res.stdout)
    assert out["healthy"] == (res.returncode == 0), out
    return res.returncode, out


def check_of(out: dict, name: str) -> dict:
    return next(c for c in out["checks"] if c["name"] == name)


def turns(state: Path) -> int:
    try:
        return json.loads((state / "daemon.heartbeat").read_text())["turns"]
    except (OSError, ValueError):
        return 0


def test_health_fails_while_runs_wait_on_a_missing_key_and_passes_once_mounted(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    mount = tmp_path / "secret"  # the Secret volume, its key not there yet
    (mount / STAMP).mkdir(parents=True)
    os.symlink(STAMP, mount / "..data")
    cfg = _node(tmp_path, corpus, mount / "node.key", recipient)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    state = tmp_path / "state"
    wait_for(lambda: agent(cfg, "status", "--json").stdout.count('"ended": "') and turns(state) > 2, 60,
             "the run seen and the loop turning", d)
    rc, out = health(cfg)
    assert rc == 1, out
    sealing = check_of(out, "sealing")
    assert not sealing["ok"] and "1 run(s) wait unsealed" in sealing["detail"], out
    assert f"node key {mount / 'node.key'} does not exist" in sealing["detail"], out
    assert check_of(out, "daemon")["ok"], out
    # The text form says the same, one line per check, and exits 1.
    text = agent(cfg, "health", check=False)
    assert text.returncode == 1 and text.stdout.splitlines()[-1] == "unhealthy"
    assert any(l.startswith("FAIL  sealing:") for l in text.stdout.splitlines()), text.stdout

    # The kubelet adds the key the way it updates a Secret: a new timestamped dir, ..data swapped.
    new = mount / "..2026_11_29_00_05_00.000000001"
    new.mkdir()
    shutil.copyfile(node_key, new / "node.key")
    os.chmod(new / "node.key", 0o440)
    os.symlink(new.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    os.symlink("..data/node.key", mount / "node.key")
    wait_for(lambda: list((state / "outbox").glob(BUNDLE_GLOB)), 60, "the run sealed once the key is there", d)
    rc, out = wait_for(lambda: (lambda r: r if r[0] == 0 else None)(health(cfg)), 30, "health passing", d)
    assert all(c["ok"] for c in out["checks"]) and out["problems"] == [], out
    d.terminate()


def test_health_fails_when_the_daemon_loop_stops_turning(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    cfg = _node(tmp_path, corpus, node_key, recipient, extra="[health]\nheartbeat_seconds = 2\n")
    rc, out = health(cfg)
    assert rc == 1 and "no heartbeat" in check_of(out, "daemon")["detail"], out
    assert health(cfg, "--no-daemon")[0] == 0  # where no daemon is meant to run
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    wait_for(lambda: health(cfg)[0] == 0, 60, "a healthy daemon", d)
    os.kill(d.proc.pid, signal.SIGSTOP)  # hung, not gone: the heartbeat file stays, only ages
    try:
        rc, out = wait_for(lambda: (lambda r: r if r[0] == 1 else None)(health(cfg)), 30, "health failing")
        daemon = check_of(out, "daemon")
        assert not daemon["ok"] and "more than [health] heartbeat_seconds = 2" in daemon["detail"], out
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_for(lambda: health(cfg)[0] == 0, 30, "healthy again once the loop turns", d)
    d.terminate()


def test_disk_floor_pauses_sealing_and_lowering_it_resumes(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    # A floor far above the free space of any disk here.
    cfg = _node(tmp_path, corpus, node_key, recipient, extra="[retention]\nmin_free_mb = 1000000000\n")
    state = tmp_path / "state"
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    wait_for(lambda: "sealing paused" in d.output(), 60, "the daemon saying sealing is paused", d)
    seen = turns(state)
    wait_for(lambda: turns(state) >= seen + 3, 60, "three more turns of the loop", d)
    st = json.loads(agent(cfg, "status", "--json").stdout)
    assert [r["state"] for r in st["runs"]] == ["ended"], st
    assert not list((state / "outbox").glob(BUNDLE_GLOB)), "sealed below the floor"
    assert any("sealing paused" in p and "min_free_mb = 1000000000" in p for p in st["problems"]), st
    rc, out = health(cfg)
    assert rc == 1 and not check_of(out, "disk")["ok"] and "below the floor" in check_of(out, "disk")["detail"]
    # The site lowers the floor and reloads: sealing resumes by itself.
    cfg.write_text(cfg.read_text().replace("min_free_mb = 1000000000", "min_free_mb = 1"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: list((state / "outbox").glob(BUNDLE_GLOB)), 60, "sealing resumed", d)
    assert "sealing resumed" in d.output()
    assert health(cfg)[0] == 0
    assert json.loads(agent(cfg, "status", "--json").stdout)["problems"] == []
    d.terminate()


def test_systemd_unit_is_notify_with_a_watchdog():
    text = (REPO / "systemd" / "tfwb-agent.service").read_text()
    d = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert d["Type"] == "notify" and d["NotifyAccess"] == "main", d
    assert re.fullmatch(r"\d+(min|s)", d["WatchdogSec"]), d["WatchdogSec"]


def test_daemon_sends_ready_and_watchdog_to_the_notify_socket(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    cfg = _node(tmp_path, corpus, node_key, recipient)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    # systemd's watchdog of 1 s: the daemon must say WATCHDOG=1 at least every 0.5 s while idle.
    d = EnvDaemon(cfg, tmp_path / "daemon.log", {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    d.start()
    got: list[tuple[float, str]] = []
    try:
        while sum(m == "WATCHDOG=1" for _, m in got) < 6:
            data = sock.recv(4096).decode()
            got.extend((time.monotonic(), line) for line in data.splitlines())
    finally:
        sock.close()
    msgs = [m for _, m in got]
    assert msgs[0] == "READY=1" and msgs[1].startswith("STATUS=watching"), msgs
    dog = [t for t, m in got if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(dog[2:], dog[3:])]  # idle by now: the run sealed
    assert max(gaps) < 1.0, gaps  # within the watchdog's second, every time
    rc, _ = d.terminate()
    assert rc == 0


def test_on_a_small_tmpfs_sealing_pauses_below_the_floor_and_resumes_after_prune(tmp_path, corpus):
    """The state dir on its own small disk: a kept 6 MiB checkpoint fills it past the floor the
    site then sets; the next run waits unsealed (status and health say why) until `prune` frees
    the space (here by the site's explicit outbox size limit), then seals by itself."""
    from fault_helpers import tmpfs

    node_key, _identity, recipient = _keys(tmp_path)
    extra = ('[redact]\nkeep_files = ["*.ckpt"]\n'
             "[retention]\ninterval_seconds = 1000000\n")  # the daemon prunes at its first turn, then not again
    cfg = _node(tmp_path, corpus, node_key, recipient, extra=extra)
    first = next((tmp_path / "watched").iterdir())
    with open(first / "files" / "model.ckpt", "wb") as f:  # incompressible, as weights are
        f.write(os.urandom(6 << 20))
    MB = 1 << 20
    with tmpfs(tmp_path / "state", "24m") as state:
        d = DaemonProc(cfg, tmp_path / "daemon.log").start()
        # The bundle shows before sealing is over (its work directory, the checkpoint's redacted
        # copy, goes after): free space is measured once the daemon says the run is sealed.
        wait_for(lambda: "sealed into" in d.output(), 60, "the first run sealed", d)
        (bundle,) = list((state / "outbox").glob(BUNDLE_GLOB))
        assert bundle.stat().st_size > 6 * MB - MB // 4, "the checkpoint went into the bundle"
        st = os.statvfs(state)
        free_mb = st.f_bavail * st.f_frsize // MB
        floor = free_mb + 3  # above what is free now, below what freeing the bundle gives back
        # The floor, and the site's explicit outbox limit that `prune` below applies.
        cfg.write_text(cfg.read_text().replace("[retention]\n", f"[retention]\nmin_free_mb = {floor}\noutbox_max_mb = 1\n"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "sealing paused" in d.output(), 60, "the daemon saying sealing is paused", d)

        second = sorted(corpus_run_dirs(corpus).values())[1]
        shutil.copytree(second, tmp_path / "watched" / second.name)
        seen = turns(state)
        wait_for(lambda: turns(state) >= seen + 4, 60, "four more turns of the loop", d)
        assert list((state / "outbox").glob(BUNDLE_GLOB)) == [bundle], "sealed below the floor"
        st_json = json.loads(agent(cfg, "status", "--json").stdout)
        assert any("sealing paused" in p and f"min_free_mb = {floor}" in p for p in st_json["problems"]), st_json
        rc, out = health(cfg)
        assert rc == 1 and "below the floor" in check_of(out, "disk")["detail"], out

        pruned = json.loads(agent(cfg, "prune", "--json").stdout)
        assert not bundle.exists(), pruned
        wait_for(lambda: len(list((state / "outbox").glob(BUNDLE_GLOB))) == 1, 60, "the second run sealed", d)
        assert "sealing resumed" in d.output()
        assert health(cfg)[0] == 0
        d.terminate()


def test_health_fails_while_a_targets_key_is_refused_and_passes_once_it_delivers(tmp_path, corpus):
    """A node with a link out whose W&B key the server refuses: nothing is delivered, however long
    it waits, so `health` fails at once (a key error, as for sealing), naming the target; with the
    right key in place the next sync delivers and `health` passes."""
    from deliver_helpers import RestartableServer, corpus_dirs, make_deliver_site, metric_rows, seal_dirs, sync

    server = RestartableServer(tmp_path).start()
    try:
        (run_dir,) = corpus_dirs(corpus)[:1]
        site = make_deliver_site(tmp_path / "site", server.url, "wrong" + "1" * 40)
        (run_id,) = seal_dirs(site, [run_dir])
        assert sync(site, check=False).returncode == 3  # key rejected
        rc, out = health(site.cfg, "--no-daemon")
        assert rc == 1 and not check_of(out, "delivery")["ok"], out
        assert "'local'" in check_of(out, "delivery")["detail"] and "reject" in check_of(out, "delivery")["detail"]
        assert "1" * 40 not in json.dumps(out)

        site.key_file.write_text(server.api_key + "\n")
        sync(site, "--retry-failed")
        assert metric_rows(server, run_id) > 0
        rc, out = health(site.cfg, "--no-daemon")
        assert rc == 0 and check_of(out, "delivery")["ok"], out
    finally:
        server.stop()
