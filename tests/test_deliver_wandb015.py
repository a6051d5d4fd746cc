"""Runs written by wandb 0.15.12 with explicit steps reach the server whole.

wandb 0.15 writes a run's last history row (and its summary) after the exit record when steps
are given (``log(..., step=n)``: the row is flushed at exit), and wandb 0.31's ``wandb sync``
stops at the exit record. The agent moves the exit record last in what it uploads
(segments.write_cut); this test shows both the loss with plain ``wandb sync`` and that the
agent's delivery carries every row, for a first run and for its resumed second part.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deliver_helpers import make_deliver_site
from openwandb_server import start_openwandb
from trainer_helpers import PY38_LABEL, interpreters, require_python

from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts

RUN_ID = "w015exit"
WRITER = """
import sys, wandb
from tfwb_trainer.service_connect import tolerate_late_listen
tolerate_late_listen()  # wandb 0.15's service tells its port before it listens
start, end = int(sys.argv[1]), int(sys.argv[2])
run = wandb.init(project="ct-w015", id=sys.argv[3], resume="allow", mode="offline", dir=sys.argv[4])
for s in range(start, end):
    wandb.log({"loss": 1.0 / (s + 1), "acc": s / 100}, step=s)
run.finish()
"""


def write_part(python: str, root: Path, start: int, end: int, run_id: str) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    before = set(root.glob("wandb/offline-run-*"))
    subprocess.run([python, "-c", WRITER, str(start), str(end), run_id, str(root)], env=env, check=True,
                   capture_output=True, timeout=300)
    (new,) = set(root.glob("wandb/offline-run-*")) - before
    return new


def steps_on_server(server, run_id: str) -> list[int]:
    return [s for (s,) in server.query("SELECT step FROM metrics WHERE run_id = ? AND key = 'loss' ORDER BY step",
                                       (run_id,))]


@pytest.mark.slow(seconds=40)
def test_last_row_after_exit_arrives(tmp_path: Path) -> None:
    py = require_python(PY38_LABEL, dict(interpreters())[PY38_LABEL])
    runs = tmp_path / "runs"
    runs.mkdir()
    first = write_part(py, runs, 0, 5, RUN_ID)
    facts = read_facts(find_log(first))
    assert facts.history_rows == 5 and facts.exit_code == 0
    assert facts.data_after_exit, "wandb 0.15.12 no longer writes the last row after exit: revisit write_cut"

    server = start_openwandb(tmp_path / "server")
    try:
        # Plain wandb sync (0.31) of a copy, under another id: the row after the exit is lost.
        plain = tmp_path / "plain"
        plain.mkdir()
        write_part(py, plain, 0, 5, "w015plain")
        copy = next(plain.glob("wandb/offline-run-*"))
        subprocess.run(["wandb", "sync", "--project", "ct-w015", "--entity", "admin", str(copy)],
                       env=server.sync_env(), check=True, capture_output=True, timeout=300)
        assert steps_on_server(server, "w015plain") == [0, 1, 2, 3], "plain wandb sync no longer drops the row"

        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        out = site.scan_seal_sync(runs, quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": 1}, out
        assert steps_on_server(server, RUN_ID) == [0, 1, 2, 3, 4]

        # The resumed second part, a separate run directory with the same id.
        write_part(py, runs, 5, 10, RUN_ID)
        out = site.scan_seal_sync(runs, quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": 2}, out
        assert steps_on_server(server, RUN_ID) == list(range(10))
        summary = server.query("SELECT summary_json FROM runs WHERE run_id = ?", (RUN_ID,))
        assert summary and summary[0][0] and '"loss"' in summary[0][0], summary
    finally:
        server.stop()
        shutil.rmtree(runs, ignore_errors=True)
