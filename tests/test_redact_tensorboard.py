"""TensorBoard under the default policy: the scalars leave as history rows, nothing else does.

A real wandb 0.31 run with ``sync_tensorboard=True`` writes TensorBoard scalars (through
tf.summary) and a text summary holding a token. wandb records the event files' directory (a
path on the node's volume) in a TensorBoard record and copies the event file under files/;
delivery must read neither. After redaction: the TensorBoard record and the event file are
gone (and reported), the scalar's rows are there with their values, and the token is nowhere.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import tf_forkserver
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import read_records

WRITER = r'''
import os, sys
root = sys.argv[1]
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
for d in ("data", "cache", "config"):
    os.environ[f"WANDB_{d.upper()}_DIR"] = os.path.join(root, "wandb-" + d)
import tensorflow as tf, wandb
token = "ghp_" + "Tb7q" * 9
run = wandb.init(project="tb", dir=root, sync_tensorboard=True)
w = tf.summary.create_file_writer(os.path.join(root, "tb-logs"))
with w.as_default():
    for i in range(6):
        tf.summary.scalar("tb/loss", 1.0 / (i + 1), step=i)
    tf.summary.text("notes", "uploading with " + token, step=0)
w.flush()
run.finish()
print("RUN", run.dir)
'''


def test_tensorboard_scalars_leave_as_history_and_nothing_else(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
    # TensorFlow preloaded (tf_forkserver): the writer imports it before wandb either way.
    proc = tf_forkserver.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True,
                             timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    src = next((tmp_path / "wandb").glob("offline-run-*"))
    token = "ghp_" + "Tb7q" * 9
    types = [rec.WhichOneof("record_type") for _, rec in read_records(next(src.glob("*.wandb")))]
    assert "tbrecord" in types, "wandb wrote no TensorBoard record: the test would prove nothing"
    # wandb copies the event files under files/ when its watcher catches them before the run
    # ends (not always, for a run this short): put the real one there if it did not.
    if not any("tfevents" in p.name for p in (src / "files").rglob("*")):
        ev = next((tmp_path / "tb-logs").glob("*tfevents*"))
        (src / "files" / "tb-logs").mkdir(parents=True, exist_ok=True)
        (src / "files" / "tb-logs" / ev.name).write_bytes(ev.read_bytes())

    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, os.urandom(32), lambda p: Path(p))

    rows: dict[int, float] = {}
    out_types = []
    for _, rec in read_records(next(dst.glob("*.wandb"))):
        out_types.append(rec.WhichOneof("record_type"))
        if rec.WhichOneof("record_type") == "history":
            items = {("/".join(i.nested_key) if len(i.nested_key) else i.key): i.value_json for i in rec.history.item}
            if "tb/loss" in items:
                rows[int(float(items["global_step"]))] = float(items["tb/loss"])
    assert "tbrecord" not in out_types
    assert rows == {i: pytest.approx(1.0 / (i + 1)) for i in range(6)}
    assert not [p for p in dst.rglob("*") if "tfevents" in p.name]
    for p in dst.rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), f"the token left in {p.relative_to(dst)}"
    d = report.to_dict()
    assert d["records"]["dropped_by_type"].get("tbrecord (tensorboard)") == types.count("tbrecord")
    assert any(f["action"] == "dropped: tensorboard" for f in d["files_dropped_or_scrubbed"])
