"""Helpers for the delivery tests: a site that seals and opens its own bundles, a restartable
OpenWandb on a fixed port, fresh runs written by real wandb, and what arrived on the server.

``tests/openwandb_server.py`` (shared) starts a server on a free port; delivery tests also need to
stop one and start it again on the same port and data directory, which ``RestartableServer``
adds on top of it (same readiness rule: the key from its output, then the port answers).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from openwandb_server import Server, _free_port, launch, stop_process, wait_ready

from cli_fork import popen
from conftest import REPO, agent

WRITER = REPO / "tests" / "writers" / "write_run.py"


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A temporary directory of the test's own, to give processes as ``TMPDIR`` and see what they
    leave there; removed after. Short: wandb's service may put its socket in it."""
    tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RestartableServer:
    """OpenWandb on one port and data directory that a test may kill and start again."""

    def __init__(self, root: Path, key_check_seconds: float = 0.0) -> None:
        self.key_check_seconds = key_check_seconds  # see openwandb_server.launch
        self.port = _free_port()
        self.data_dir = root / f"openwandb-{self.port}"
        self.data_dir.mkdir(parents=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.api_key: str | None = None
        self.starts = 0

    @property
    def db_path(self) -> Path:
        return self.data_dir / "openwandb.db"

    def start(self, timeout: float = 60.0, die_after_chunks: int = 0) -> "RestartableServer":
        """Start it (again); ``die_after_chunks``: see ``openwandb_server.launch``."""
        self.starts += 1
        log_path = self.data_dir.parent / f"openwandb-{self.port}-{self.starts}.log"
        self.proc = launch(self.port, self.data_dir, log_path, self.key_check_seconds, die_after_chunks)
        key = wait_ready(self.proc, self.url, log_path, timeout)
        if key is None:
            raise RuntimeError(f"openwandb did not come up: {log_path.read_text(errors='replace')[-2000:]}")
        self.api_key = key
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return Server.query(self, sql, params)  # type: ignore[arg-type]

    def sync_env(self) -> dict[str, str]:
        return Server.sync_env(self)  # type: ignore[arg-type]


def metric_rows(server, run_id: str) -> int:
    if not Path(server.db_path).exists():
        return 0
    return server.query("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (run_id,))[0][0]


def duplicate_rows(server, run_id: str) -> int:
    return server.query("SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM metrics WHERE run_id = ? "
                        "GROUP BY key, step)", (run_id,))[0][0]


def server_summary(server, run_id: str) -> dict:
    rows = server.query("SELECT summary_json FROM runs WHERE run_id = ?", (run_id,))
    return json.loads(rows[0][0]) if rows else {}


def server_files(server, run_id: str) -> set[str]:
    return {r[0] for r in server.query("SELECT name FROM files WHERE run_id = ?", (run_id,))}


def server_console(server, run_id: str) -> set[str] | None:
    """The run's console lines as the server stored them (None: no output.log). OpenWandb keeps
    the uploaded output.log and appends the streamed lines to it, stamped with the time they
    arrived (as it does for a plain `wandb sync`): the stamp is taken off."""
    rows = server.query("SELECT path FROM files WHERE run_id = ? AND name = 'output.log'", (run_id,))
    if not rows:
        return None
    text = Path(rows[0][0]).read_text(errors="replace")
    return {re.sub(r"^\d{4}-\d\d-\d\dT[\d:.]+ ", "", line) for line in text.splitlines() if line.strip()}


@dataclass
class DeliverSite:
    root: Path
    cfg: Path
    key_file: Path

    def config(self):
        from tfwb_agent import config as config_mod
        return config_mod.load(str(self.cfg))

    def ledger(self):
        from tfwb_agent.ledger import Ledger
        return Ledger(self.config().ledger_path)

    def scan_seal_sync(self, root: Path, quiet_seconds: float, container_root: str | None = None) -> dict:
        """Watch ``root`` too (the first time), then do what cron would without a daemon:
        `scan --seal`, then `sync --to local --once`; returns sync's JSON report."""
        if "[watch]" not in self.cfg.read_text():
            with open(self.cfg, "a") as f:
                f.write(f'[watch]\nroots = ["{root}"]\nquiet_seconds = {quiet_seconds}\n')
                if container_root:
                    f.write(f'[path_map]\n"{container_root}" = "{root}"\n')
        agent(self.cfg, "scan", "--seal")
        return json.loads(agent(self.cfg, "sync", "--to", "local", "--once", "--json").stdout)


def make_deliver_site(root: Path, server_url: str, api_key: str, *, policy: str | None = None,
                      sync: str = "max_parallel = 2\nbackoff_base = 1\nbackoff_cap = 3\n",
                      target: str = "local", entity: str = "admin", extra_targets: str = "") -> DeliverSite:
    """One host that seals, opens its own bundles and delivers (a node with a link out). The
    API key is in a 0600 file named by the config, never inline."""
    from seal_helpers import make_site

    site = make_site(root)
    key_file = root / "keys" / "wandb-key"
    key_file.write_text(api_key + "\n")
    key_file.chmod(0o600)
    policy = policy if policy is not None else f'[[policy]]\nprojects = ["*"]\ntargets = ["{target}"]\n'
    with open(site.node_cfg, "a") as f:
        f.write(f'identity = "{site.gw_identity}"\ntrusted_nodes = ["{site.node_key}.pub"]\n'
                f'[targets.{target}]\nbase_url = "{server_url}"\napi_key_file = "{key_file}"\nentity = "{entity}"\n'
                f'timeout = 10\n{extra_targets}[sync]\n{sync}{policy}')
    return DeliverSite(root, site.node_cfg, key_file)


def seal_dirs(site: DeliverSite, run_dirs: list[Path]) -> list[str]:
    """Seal each run directory (plain, as the tests' input) into the site's outbox, in-process."""
    from tfwb_agent import runs
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run

    cfg = site.config()
    keys = seal_keys(keys_config(cfg))
    ledger = site.ledger()
    ids = []
    try:
        for d in run_dirs:
            facts = runs.inspect(d)
            seal_run(cfg, keys, ledger, d, RunIdentity(facts.run_id, facts.project, facts.entity, facts.wandb_version),
                     0, {"note": "test input, not redacted"})
            ids.append(facts.run_id)
    finally:
        ledger.close()
    return ids


def write_runs(root: Path, n: int, steps: int, project: str = "ct-fresh") -> list[Path]:
    """``n`` finished runs of ``steps`` steps written by real wandb (offline): two processes at
    once, each writing its half one run after another (a wandb process per run cost most of
    the suite's run-writing CPU in its own start-up)."""
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WRITER_PROJECT=project)
    env.pop("WANDB_MODE", None)
    halves = [(f"w{j}", len(range(j, n, 2))) for j in range(2) if range(j, n, 2)]
    procs = [popen([sys.executable, str(WRITER), str(root / name), "many", str(steps), str(count)], env=env,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, count in halves]
    dirs: list[Path] = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        dirs += [Path(line.split()[2]).parent for line in out.splitlines() if line.startswith("RUN ")]
    assert len(dirs) == n, (len(dirs), n)
    return dirs


def corpus_dirs(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.glob("wandb-*/wandb/offline-run-*") if not p.is_symlink())


def sync(site: DeliverSite, *args: str, check: bool = True, timeout: float = 600, env: dict | None = None):
    return agent(site.cfg, "sync", "--to", "local", "--json", *args, check=check, timeout=timeout, env=env)
