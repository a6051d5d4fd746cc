"""Issue 16, point 5: the wandb client per target, and the server's version.

``[targets.NAME] wandb = "0.25.1"`` runs that target's ``wandb sync`` with that wandb, from a venv
the agent builds once under its state dir; ``targets check`` reads the server's version the way
wandb's own client asks (``serverInfo``) and refuses a client too new for it before anything is
sent. OpenWandb does not report a W&B Server version, so ``OldServerFrontDoor`` (below), a
stand-in for an old W&B Server's front door, answers ``serverInfo`` with an old version and
records the User-Agent of every request (the client's own word on its version); everything
else goes to a real OpenWandb through ``WandbFrontDoor``.

The wandb 0.25 venv is built once per test session (``built_once``), by the agent's own
installer; a site's state dir gets it as a link to that venv, so the agent finds it installed.
"""
from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import agent, built_once
from deliver_helpers import (RestartableServer, corpus_dirs, make_deliver_site, metric_rows, seal_dirs,
                             short_tmpdir, sync)
from wandb_standins import WandbFrontDoor, _read_body, _reply

from tfwb_agent.config import ConfigError
from tfwb_agent.deliver import clients
from tfwb_agent.deliver.settings import validate_targets
from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts

PINNED = "0.25.1"          # a wandb older than the agent's, as a site with an old W&B Server pins it
OLD_SERVER = "0.60.0"      # a W&B Server release wandb 0.26 and later no longer support


class OldServerFrontDoor(WandbFrontDoor):
    """A stand-in for the front door of an old W&B Server: ``serverInfo`` answered with
    ``version`` (OpenWandb has no such field); every request's User-Agent recorded; the rest as
    ``WandbFrontDoor`` (401 for an unknown key, on to OpenWandb)."""

    def __init__(self, upstream: str, api_key: str, version: str | None) -> None:
        self.version = version
        self.agents: list[str] = []
        super().__init__(upstream, api_key)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        self.agents.append(h.headers.get("User-Agent") or "")
        if h.path.split("?")[0].rstrip("/") == "/graphql" and self._good_key(h):
            body = _read_body(h)
            doc = json.loads(body or b"{}")
            if "serverInfo" in (doc.get("query") or "") and self.version:
                info = {"serverInfo": {"cliVersionInfo": {"max_cli_version": "0.25.1"},
                                       "latestLocalVersionInfo": {"versionOnThisInstanceString": self.version}}}
                _reply(h, 200, json.dumps({"data": info}).encode(), {"Content-Type": "application/json"})
                return
            h.rfile = _Replay(body)  # type: ignore[assignment]
            h.headers.replace_header("Content-Length", str(len(body))) if h.headers.get("Content-Length") \
                else h.headers.add_header("Content-Length", str(len(body)))
            if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
                del h.headers["Transfer-Encoding"]
        super()._handle(h)


class _Replay:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out

    def readline(self) -> bytes:
        i = self.data.find(b"\n")
        return self.read(len(self.data) if i < 0 else i + 1)


@pytest.fixture(scope="session")
def pinned_venv(tmp_path_factory) -> str:
    """wandb 0.25.1 in a venv built by the agent's own installer, once per test session."""
    def build(root: Path) -> str:
        c = clients.install(root, PINNED)
        return str(Path(c.python).parent.parent)
    return built_once(tmp_path_factory, f"wandb-{PINNED}-venv", build)


def _give_site(site, venv: str) -> None:
    """The site's state dir finds wandb 0.25.1 installed (a link to the session's venv)."""
    state = site.config().state_dir
    link = clients.venv_dir(state, PINNED)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(venv)


# --- config and the compatibility table ------------------------------------------------------------

def test_wandb_per_target_is_a_version_or_a_python(tmp_path):
    base = {"base_url": "https://wandb.example", "api_key_env": "K"}
    t = validate_targets("cfg", {"t": {**base, "wandb": "0.25.1"}}).by_name["t"]
    assert t.wandb == "0.25.1" and t.wandb_index is None
    assert validate_targets("cfg", {"t": {**base, "wandb": sys.executable}}).by_name["t"].wandb == sys.executable
    for bad in ("latest", "0.25", "relative/python", str(tmp_path / "missing-python")):
        with pytest.raises(ConfigError, match="targets.t.wandb"):
            validate_targets("cfg", {"t": {**base, "wandb": bad}})
    with pytest.raises(ConfigError, match="wandb_index"):
        validate_targets("cfg", {"t": {**base, "wandb": "0.25.1", "wandb_index": "wheels"}})  # not absolute
    with pytest.raises(ConfigError, match="share base_url"):
        validate_targets("cfg", {"a": {**base, "wandb": "0.25.1"}, "b": base})


def test_which_clients_are_too_new_for_which_servers():
    assert clients.too_new("0.31.0", "0.60.0") and "0.70.0" in clients.too_new("0.31.0", "0.60.0")
    assert "older than 0.26.0" in clients.too_new("0.31.0", "0.60.0")
    assert clients.too_new("0.25.1", "0.60.0") is None
    assert clients.too_new("0.28.0", "0.66.1") is None and clients.too_new("0.28.1", "0.66.1")
    assert "older than 0.28.1" in clients.too_new("0.28.1", "0.66.1")
    assert clients.too_new("0.31.0", None) is None  # unknown version: not refused
    assert clients.too_new("0.31.0", "0.82.2") is None


# --- targets check ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openwandb(tmp_path_factory):
    server = RestartableServer(tmp_path_factory.mktemp("ow")).start()
    yield server
    server.stop()


def test_a_client_too_new_for_the_servers_version_is_refused_before_anything_is_sent(tmp_path, corpus, openwandb):
    door = OldServerFrontDoor(openwandb.url, openwandb.api_key, OLD_SERVER)
    try:
        site = make_deliver_site(tmp_path / "site", door.url, openwandb.api_key)  # the agent's own wandb 0.31
        check = agent(site.cfg, "targets", "check", check=False)
        assert check.returncode == 3, check.stdout + check.stderr
        assert "client too new" in check.stdout and f"server reports {OLD_SERVER}" in check.stdout
        assert "wandb 0.31" in check.stdout and "older than 0.26.0" in check.stdout
        assert "Traceback" not in check.stdout + check.stderr
        dirs = corpus_dirs(corpus)[:1]
        seal_dirs(site, dirs)
        proc = sync(site, check=False)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["status"] == "client_too_new"
        assert metric_rows(openwandb, read_facts(find_log(dirs[0])).run_id) == 0  # nothing was sent
        assert not any("wandb-core" in a or "W&B" in a for a in door.agents)  # no wandb process talked
    finally:
        door.stop()


def test_a_server_that_does_not_say_its_version_is_unknown_and_delivery_goes_on(tmp_path, openwandb):
    site = make_deliver_site(tmp_path / "site", openwandb.url, openwandb.api_key)  # OpenWandb itself
    check = agent(site.cfg, "targets", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "server version unknown" in check.stdout and "client wandb 0.31" in check.stdout


def test_a_pinned_wandb_that_cannot_be_installed_is_said_plainly(tmp_path, openwandb):
    wheelhouse = tmp_path / "empty-wheelhouse"
    wheelhouse.mkdir()
    site = make_deliver_site(tmp_path / "site", openwandb.url, openwandb.api_key,
                             extra_targets=f'wandb = "{PINNED}"\nwandb_index = "{wheelhouse}"\n')
    check = agent(site.cfg, "targets", "check", check=False, timeout=300)
    out = check.stdout + check.stderr
    assert check.returncode == 3, out
    assert f"cannot install wandb {PINNED} for targets.local.wandb" in check.stdout and "wandb_index" in check.stdout
    assert f"installing wandb {PINNED}" in check.stderr
    assert "Traceback" not in out
    assert not (clients.venv_dir(site.config().state_dir, PINNED) / "bin").exists()  # nothing half-built kept


# --- a delivery by a pinned client --------------------------------------------------------------------

@pytest.mark.slow(seconds=120)
def test_a_pinned_wandb_0_25_delivers_to_an_old_server_and_is_confirmed(tmp_path, corpus, pinned_venv):
    server = RestartableServer(tmp_path / "ow").start()
    door = OldServerFrontDoor(server.url, server.api_key, OLD_SERVER)
    try:
        site = make_deliver_site(tmp_path / "site", door.url, server.api_key, extra_targets=f'wandb = "{PINNED}"\n')
        _give_site(site, pinned_venv)
        check = agent(site.cfg, "targets", "check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"server {OLD_SERVER}" in check.stdout and f"client wandb {PINNED} (venv " in check.stdout
        dirs = corpus_dirs(corpus)[:2]
        seal_dirs(site, dirs)
        # The pinned client's `wandb sync` gets a temporary directory of the test's own: its CLI
        # debug log must not land there (it goes to the upload's private directory).
        with short_tmpdir() as tmp:
            out = json.loads(sync(site, env={"TMPDIR": str(tmp)}).stdout)
            assert sorted(p.name for p in tmp.iterdir()) == [], "left in TMPDIR"
        assert out["status"] == "online", out
        for d in dirs:
            f = read_facts(find_log(d))
            assert metric_rows(server, f.run_id) == f.metric_values, f.run_id
        ledger = site.ledger()
        try:
            states = {r["run_id"]: r["state"] for r in ledger.db.execute("SELECT * FROM deliveries")}
        finally:
            ledger.close()
        assert set(states.values()) == {"confirmed"}, states
        # The client's own word on its version: wandb sends it in its User-Agent.
        sent_by = {a for a in door.agents if a and a != "tfwb-agent"}
        assert any(PINNED in a for a in sent_by), sent_by
        assert not any("0.31.0" in a for a in sent_by), sent_by
    finally:
        door.stop()
        server.stop()


def test_the_agents_own_wandb_variables_do_not_reach_wandb_sync(tmp_path, monkeypatch):
    """wandb sends ``WANDB_USERNAME`` and ``WANDB_USER_EMAIL`` as request headers, and other
    ``WANDB_*`` variables change what it does: the delivering host's own must not go with the
    runs it delivers. Only transport settings pass."""
    from tfwb_agent.deliver import upload

    monkeypatch.setenv("WANDB_USERNAME", "cnry-gw-user")
    monkeypatch.setenv("WANDB_USER_EMAIL", "cnry-gw-user@example.org")
    monkeypatch.setenv("WANDB_RUN_GROUP", "cnry-group")
    monkeypatch.setenv("WANDB_HTTP_TIMEOUT", "61")
    for own in (True, False):
        env = upload.sync_env("http://127.0.0.1:9", "k" * 40, tmp_path / f"home-{own}", own_client=own)
        assert not [k for k, v in env.items() if "cnry" in v], own
        assert env["WANDB_HTTP_TIMEOUT"] == "61" and env["WANDB_BASE_URL"] == "http://127.0.0.1:9"


def test_a_package_index_reaches_pip_by_its_environment_not_its_command_line():
    """Any user of the host reads a process's arguments: an index URL (which a site's pip
    config may give a login) is not one of them; a wheelhouse directory is."""
    args, env = clients._pip_index("https://pypi.internal.example/simple")
    assert args == [] and env == {"PIP_INDEX_URL": "https://pypi.internal.example/simple"}
    assert clients._pip_index("/srv/wheelhouse") == (["--no-index", "--find-links", "/srv/wheelhouse"], {})
