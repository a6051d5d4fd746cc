"""wandb 0.15's service writes its port file before it listens; a training process that connects
in between must still get its run (seen in CI on a loaded machine: ``wandb.init`` failed with
``ManagerConnectionRefusedError`` and the training never started).

The window is made wide and certain, not hoped for: a ``sitecustomize`` in both processes holds
the service's ``listen()`` until the training process has been refused once (a marker file),
so without the retry the first connect is always refused, and with it the run is written."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import PY38_LABEL, child_env, interpreters, read_run, require_python, run_training

_SITECUSTOMIZE = r'''
import os, socket, time

_marker = os.environ["TFWB_TEST_LATE_LISTEN"]
_connect, _listen = socket.socket.connect, socket.socket.listen


def connect(self, address):
    try:
        return _connect(self, address)
    except ConnectionRefusedError:
        open(_marker, "a").close()  # the service may listen now
        raise


def listen(self, *args):
    deadline = time.monotonic() + 60
    while not os.path.exists(_marker):  # hold listen() until a client was refused
        if time.monotonic() > deadline:
            raise RuntimeError("no client was refused within 60 s")
        time.sleep(0.02)
    return _listen(self, *args)


socket.socket.connect, socket.socket.listen = connect, listen
'''

_TRAIN = r'''
import tfwb_trainer
run = tfwb_trainer.init(project="late-listen")
run.log({"x": 1.0}, step=0)
tfwb_trainer.finish()
print("FINISHED")
'''


@pytest.mark.slow(seconds=15)
def test_a_service_that_listens_late_still_gets_the_run(tmp_path: Path) -> None:
    python = dict(interpreters())[PY38_LABEL]
    py = require_python(PY38_LABEL, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    marker = tmp_path / "refused-once"
    env = child_env(runs, PYTHONPATH=str(site), TFWB_TEST_LATE_LISTEN=str(marker))
    # (run_training waits for the training process only: wandb's service, in a session of its
    # own, outlives a failed init for minutes, holding any pipe it inherited.)
    p = run_training([py, "-c", _TRAIN], env, timeout=180)
    assert marker.exists(), "the training process was never refused: the test did not open the window"
    assert p.returncode == 0 and "FINISHED" in p.stdout, p.stderr[-3000:]
    (wandb_file,) = runs.glob("wandb/*run-*/run-*.wandb")
    rd = read_run(wandb_file)
    assert rd.exited and rd.rows[0]["x"] == 1.0
