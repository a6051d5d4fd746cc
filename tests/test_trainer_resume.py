"""SIGKILL mid-training, start again with the same TFWB_RUN_ID: one run, continuous steps,
and once the agent has delivered both parts to a real server (OpenWandb), its rows are the
steps logged, each once."""
from __future__ import annotations

import re
from pathlib import Path


import pytest
from deliver_helpers import make_deliver_site
from openwandb_server import start_openwandb

from trainer_helpers import (child_env, config_value, read_run, require_python, run_example, run_files,
                             run_until_hold_then_kill, trainer_interpreters)

PAIRS = trainer_interpreters()
IDS = [l for l, _ in PAIRS]
EPOCHS, SAMPLES, EVERY, HOLD = 4, 320, 5, 27  # 10 steps an epoch: killed 7 steps after a checkpoint
STEPS = EPOCHS * SAMPLES // 32
RUN_ID = "resume7x"


@pytest.mark.parametrize("script,metric,ckpt_step", [("train_keras.py", "batch/loss", 20),
                                                     ("train_custom_loop.py", "train/loss", 20)])
@pytest.mark.slow(seconds=45)
@pytest.mark.parametrize("label,python", PAIRS, ids=IDS)
def test_sigkill_then_restart_is_one_continuous_run(tmp_path: Path, label: str, python: str | None,
                                                   script: str, metric: str, ckpt_step: int) -> None:
    py = require_python(label, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    env = child_env(runs, TFWB_RUN_ID=RUN_ID)
    args = ["--epochs", str(EPOCHS), "--train-samples", str(SAMPLES), "--log-every", str(EVERY)]
    if script == "train_custom_loop.py":
        args += ["--ckpt-every", "20"]
    first = run_until_hold_then_kill(py, script, args + ["--hold-at-step", str(HOLD)], env, preloaded=True)
    assert "START step=0 epoch=0" in first
    part1 = run_files(runs)
    assert len(part1) == 1

    second = run_example(py, script, args, env, preloaded=True).stdout
    # It continued from the last checkpoint, not from scratch and not from the kill point.
    m = re.search(r"START step=(\d+)", second)
    assert m and int(m.group(1)) == ckpt_step, second
    assert f"DONE step={STEPS}" in second

    files = run_files(runs)
    assert len(files) == 2 and all(f.parent.name.endswith(f"-{RUN_ID}") for f in files)
    parts = [read_run(f) for f in files]
    assert all(p.run_id in (None, RUN_ID) for p in parts)  # None: killed before anything hit disk
    assert parts[1].run_id == RUN_ID and parts[1].exited
    assert config_value(parts[1], "tfwb")["run"]["resumed"] is True

    # Union of both parts: every logged step exactly once, none missing.
    seen: dict[int, int] = {}
    for p in parts:
        for s, r in p.rows.items():
            if metric in r:
                seen[s] = seen.get(s, 0) + p.row_count[s]
    assert sorted(seen) == list(range(EVERY, STEPS + 1, EVERY))
    assert set(seen.values()) == {1}, {s: n for s, n in seen.items() if n != 1}
    # The second part never repeats a step the first part has on disk.
    assert not set(parts[0].rows) & set(parts[1].rows)
    epochs = sorted(r["epoch/epoch"] for p in parts for r in p.rows.values() if "epoch/epoch" in r)
    assert epochs == list(range(EPOCHS))

    # The agent scans, redacts, seals and delivers both parts: one run on the server. (For
    # wandb 0.15.12 this needs the exit record moved last: tests/test_deliver_wandb015.py.)
    server = start_openwandb(tmp_path / "server")
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        out = site.scan_seal_sync(runs, quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": len([p for p in parts if p.run_id])}, out
        per_step = server.query("SELECT step, COUNT(*) FROM metrics WHERE run_id = ? AND key = ? GROUP BY step "
                                "ORDER BY step", (RUN_ID, metric))
        assert [s for s, _ in per_step] == list(range(EVERY, STEPS + 1, EVERY))
        assert {n for _, n in per_step} == {1}
    finally:
        server.stop()
