"""Driving real daemons and real wandb writer processes from tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_fork import popen
from conftest import REPO, status

WRITER = REPO / "tests" / "writers" / "write_run.py"


STARTED: list["DaemonProc"] = []  # conftest stops whatever a failing test left running


class DaemonProc:
    def __init__(self, config: Path, log: Path, unprivileged: bool = False) -> None:
        self.config, self.log = config, log
        # As root, drop the capabilities that let root read any file, as the agent's own user would.
        self.prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if (
            unprivileged and os.geteuid() == 0) else []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DaemonProc":
        self._out = open(self.log, "ab")
        self.proc = popen([*self.prefix, sys.executable, "-m", "tfwb_agent", "daemon"], stdout=self._out,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, TFWB_AGENT_CONFIG=str(self.config)))
        STARTED.append(self)
        wait_for(lambda: b"watching" in self.log.read_bytes(), 30, "daemon start", self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> tuple[int, float]:
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        return rc, time.monotonic() - t0

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(cond, timeout: float, what: str, daemon: DaemonProc | None = None, interval: float = 0.2):
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"daemon died while waiting for {what}:\n{daemon.output()[-3000:]}")
        time.sleep(interval)  # polling a condition, with a deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f"\ndaemon log:\n{daemon.output()[-3000:]}" if daemon else ""))


class Writer:
    """A real wandb process writing one offline run (``mode="many"``: ``rate`` runs one after
    another, all their ids in ``run_ids``)."""

    def __init__(self, root: Path, mode: str, steps: int, rate: float = 0.05, project: str = "ct-writer") -> None:
        self.mode = mode
        self.proc = popen([sys.executable, str(WRITER), str(root), mode, str(steps), str(rate)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, WRITER_PROJECT=project), text=True)
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.run_ids: list[str] = []

    def read_until(self, word: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("RUN "):
                _, self.run_id, files_dir = line.split()
                self.run_dir = Path(files_dir).parent
            if line.startswith(word):
                return line
        raise AssertionError(f"writer exited ({self.proc.wait()}) before printing {word}")

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self) -> int:
        rc = self.proc.wait(timeout=120)
        if self.proc.stdout:
            for line in self.proc.stdout:
                if line.startswith("RUN "):
                    _, self.run_id, files_dir = line.split()
                    self.run_dir = Path(files_dir).parent
                    self.run_ids.append(self.run_id)
        return rc


def run_states(config: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in status(config)["runs"] if r["run_id"]}


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
