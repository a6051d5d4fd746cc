"""What `tfwb-agent sync` prints. Where no terminal is attached (journald): for every run, when
it is handed to wandb, when wandb is done with it (runs of one upload finish one by one), and
what the server's answer made of it. On a terminal (a real pseudo-terminal here): progress bars
of segments and bytes, and one line per outcome."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import agent, built_once, tree_state
from deliver_helpers import RestartableServer, make_deliver_site, seal_dirs, write_runs


@pytest.fixture(scope="session")
def _progress_runs(tmp_path_factory) -> list[Path]:
    """Three finished runs of 300 steps, written once per session (the tests only read them)."""
    made = built_once(tmp_path_factory, "progress-3x300",
                      lambda d: [str(p) for p in write_runs(d, 3, 300, project="ct-progress")])
    return [Path(p) for p in made]


@pytest.fixture
def sealed(tmp_path: Path, _progress_runs):
    """A server of its own, and a site holding the three runs sealed for it."""
    before = tree_state(_progress_runs)
    server = RestartableServer(tmp_path).start()
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        yield server, site, seal_dirs(site, _progress_runs)
    finally:
        server.stop()
    assert tree_state(_progress_runs) == before, "a test changed the shared runs"


def test_plain_lines_follow_each_run(sealed) -> None:
    server, site, ids = sealed
    out = agent(site.cfg, "sync", "--to", "local", "--once").stdout.splitlines()
    for rid in ids:
        mine = [l for l in out if rid in l]
        kinds = [("sending" if l.startswith("sending ") else "done" if l.startswith("wandb sync is done")
                  else "outcome") for l in mine]
        assert kinds == ["sending", "done", "outcome"], mine
        assert mine[2].endswith(": confirmed: sent and confirmed"), mine[2]
    assert server.api_key not in "\n".join(out)


def _run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr; its exit status and
    everything it wrote, terminal control sequences taken out."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    return rc, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", text)


def test_a_terminal_gets_progress_bars(sealed) -> None:
    server, site, ids = sealed
    env = dict(os.environ, TFWB_AGENT_CONFIG=str(site.cfg), TERM="xterm-256color", COLUMNS="120", LINES="40")
    rc, text = _run_in_terminal([sys.executable, "-m", "tfwb_agent", "sync", "--to", "local", "--once"], env)
    assert rc == 0, text[-3000:]
    for rid in ids:
        assert f"{rid} segment 0: confirmed (sent and confirmed" in text, text[-3000:]
    # The bars as they were left: every segment settled, every byte queued sent.
    segments = re.findall(r"segments\s.*?(\d+)/(\d+)", text)
    assert segments and segments[-1] == ("3", "3"), segments[-3:]
    sent = re.findall(r"bytes sent\s.*?([\d.]+ [kMG]?B)/([\d.]+ [kMG]?B)", text)
    assert sent and sent[-1][0] == sent[-1][1] and sent[-1][0] != "0 B", sent[-3:]
    assert "sending " not in text and "INFO " not in text  # plain log lines are for non-terminals
    assert server.api_key not in text
