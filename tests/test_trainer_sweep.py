"""Offline sweeps: real trainer processes drawing trials from one sweep on a shared directory.

The trials train the digits example with TensorFlow through the plugin (real wandb, offline);
the sweep's search is W&B's own engine (the `sweeps` package). A killed container is a real
SIGKILL of the runner's process group; the delivery is the real agent to a real OpenWandb.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tf_forkserver import ForkServerPopen
from trainer_helpers import ROOT, child_env, config_value, read_run, run_files

HELPERS = ROOT / "tests" / "trainer_helpers.py"
IN_PROCESS = [sys.executable, str(HELPERS), "sweep-digits-in-process"]
LIGHT = [sys.executable, str(HELPERS), "sweep-light-trial"]  # no TensorFlow: the lease test
RANDOM_CFG = textwrap.dedent("""\
    method: random
    metric: {name: epoch/val_loss, goal: minimize}
    run_cap: 6
    parameters:
      lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}
      batch_size: {values: [16, 32, 64]}
      dropout: {min: 0.0, max: 0.5}
    """)


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfwb_trainer.sweep", *args]


def runs_by_id(runs: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in run_files(runs):
        rd = read_run(f)
        out.setdefault(rd.run_id, []).append(rd)
    return out


def run_record(wandb_file: Path):
    from tfwb_agent.wandb_log import read_records

    for _, rec in read_records(wandb_file):
        if rec.WhichOneof("record_type") == "run":
            return rec.run
    raise AssertionError(f"no run record in {wandb_file}")


def digits_sweep(base: Path) -> dict:
    """A random sweep of 6 trials drawn by 3 trainer processes at once, 2 each, each training
    its trials in process (``tfwb_trainer.sweep`` with a function). The runner that starts a
    process per trial (``python -m tfwb_trainer.sweep … -- command``) is the one the lease and
    hyperband tests drive."""
    runs = base / "runs"
    runs.mkdir()
    (base / "sweep.yaml").write_text(RANDOM_CFG)
    env = child_env(runs)
    procs = [ForkServerPopen([*IN_PROCESS, str(base / "sweep.yaml"), "digits-rand", "2"],  # TensorFlow preloaded
                             env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=420) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"sweep runner exited {p.returncode}\n{out}\n{err[-4000:]}"
    return {"base": base, "runs": runs, "env": env, "outs": outs,
            "dir": runs / "sweeps" / "digits-rand"}


@pytest.mark.slow(seconds=70)
def test_digits_sweep_three_processes_ranked_plotted_delivered(tmp_path: Path) -> None:
    """One sweep, checked three ways (one test: the trials are the expensive part)."""
    sweep = digits_sweep(tmp_path)
    check_six_trials_each_run_once(sweep)
    check_results_ranked_and_plotted(sweep)
    check_delivered_to_openwandb_grouped_with_params(sweep, tmp_path / "deliver")


def check_six_trials_each_run_once(digits_sweep: dict) -> None:
    sdir, runs = digits_sweep["dir"], digits_sweep["runs"]
    trials = [json.loads(f.read_text()) for f in sorted((sdir / "trials").glob("*.json"))]
    assert [t["number"] for t in trials] == list(range(6))
    ran = [r for out, _ in digits_sweep["outs"] for r in json.loads(out.strip().splitlines()[-1])["ran"]]
    assert sorted(ran) == sorted(t["run_id"] for t in trials), "each trial run exactly once, by one process"
    holders = {t["lease"]["holder"] for t in trials}
    assert len(holders) == 3, f"all three processes drew trials: {holders}"
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 6, "6 distinct trials"
    done = sorted(f.name for f in (sdir / "done").iterdir())
    assert done == [f"{n:06d}.1.json" for n in range(6)], done

    on_disk = runs_by_id(runs)
    assert set(on_disk) == {t["run_id"] for t in trials}
    for t in trials:
        (rd,) = on_disk[t["run_id"]]  # one run directory: the trial ran once
        p = t["params"]
        assert 0.001 <= p["lr"] <= 0.1 and p["batch_size"] in (16, 32, 64) and 0.0 <= p["dropout"] <= 0.5, p
        for k, v in p.items():
            assert config_value(rd, k) == v, (k, rd.config.get(k), v)
        sweep = config_value(rd, "tfwb")["sweep"]
        assert sweep["id"] == "digits-rand" and sweep["trial"] == t["number"] and sweep["config"]["method"] == "random"
        assert rd.exited
        rec = run_record(rd.path)
        assert rec.run_group == "digits-rand" and "sweep:digits-rand" in list(rec.tags), (rec.run_group, rec.tags)
        # The metric the engine sees is the one the run logged.
        out = json.loads((sdir / "done" / f"{t['number']:06d}.1.json").read_text())
        logged = [row["epoch/val_loss"] for _, row in sorted(rd.rows.items()) if "epoch/val_loss" in row]
        assert out["state"] == "finished" and logged and math.isclose(out["metric"], logged[-1], rel_tol=1e-9)


def check_results_ranked_and_plotted(digits_sweep: dict) -> None:
    env, out_html = digits_sweep["env"], digits_sweep["base"] / "plot.html"
    res = subprocess.run(sweep_cmd("results", "digits-rand", "--json", "--plot", str(out_html)), env=env,
                         cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    metrics = [r["metric"] for r in data["trials"]]
    assert len(metrics) == 6 and metrics == sorted(metrics) and [r["rank"] for r in data["trials"]] == list(range(1, 7))
    assert all(r["state"] == "finished" and set(r["params"]) == {"lr", "batch_size", "dropout"} for r in data["trials"])
    page = out_html.read_text()
    assert page.count("<figure>") == 3 and page.count("<circle") == 18
    assert "<script" not in page and not re.search(r"(src|href)=\"?https?:", page), "self-contained"
    text = subprocess.run(sweep_cmd("results", "digits-rand"), env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=120)
    assert text.returncode == 0 and "6 trials" in text.stdout and "dropout" in text.stdout, text.stdout


def check_delivered_to_openwandb_grouped_with_params(digits_sweep: dict, tmp_path: Path) -> None:
    from deliver_helpers import make_deliver_site
    from openwandb_server import start_openwandb
    from tfwb_trainer.sweep_wandb import HAS_SWEEPS_QUERY, server_has_sweeps

    runs = digits_sweep["runs"]
    tmp_path.mkdir(exist_ok=True)
    trials = [json.loads(f.read_text()) for f in sorted((digits_sweep["dir"] / "trials").glob("*.json"))]
    server = start_openwandb(tmp_path / "server")
    try:
        # OpenWandb has no sweeps (no upsertSweep in its schema): the trials stay a group.
        assert not server_has_sweeps(server.graphql(HAS_SWEEPS_QUERY).get("data") or {})
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        out = site.scan_seal_sync(runs, quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": 6}, out
        rows = {r: (json.loads(c), json.loads(tg)) for r, c, tg in
                server.query("SELECT run_id, config_json, tags_json FROM runs")}
        assert set(rows) == {t["run_id"] for t in trials}
        for t in trials:
            config, tags = rows[t["run_id"]]
            unwrap = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in config.items()}
            for k, v in t["params"].items():
                assert unwrap[k] == v, (k, unwrap.get(k), v)
            sweep = unwrap["tfwb"]["sweep"]
            assert sweep["name"] == "digits-rand" and sweep["config"]["parameters"]["batch_size"] == {"values": [16, 32, 64]}
            assert "sweep:digits-rand" in tags, tags
    finally:
        server.stop()


@pytest.mark.slow(seconds=40)
def test_killed_trial_rerun_once_after_its_lease(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tmp_path / "one.yaml"
    cfg.write_text(RANDOM_CFG.replace("run_cap: 6", "run_cap: 1"))
    env = child_env(runs)
    args = [str(cfg), "--name", "lease", "--lease", "3", "--count", "1", "--"]
    # The first container: its trial holds at step 2 and the whole process group is SIGKILLed.
    a = subprocess.Popen(sweep_cmd(*args, *LIGHT, "--hold-at", "2"), env=env, cwd=str(ROOT), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        assert a.stdout is not None
        for line in a.stdout:  # blocks on the trial's output
            if line.startswith("HOLD "):
                break
        else:
            raise AssertionError(f"the trial never held: {a.stderr.read() if a.stderr else ''}")
        os.killpg(a.pid, signal.SIGKILL)
        assert a.wait(timeout=60) == -signal.SIGKILL
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    sdir = runs / "sweeps" / "lease"
    (trial_file,) = (sdir / "trials").glob("*.json")
    trial = json.loads(trial_file.read_text())
    assert not any((sdir / "done").iterdir())

    # Two more containers: one waits out the lease and runs the trial again (attempt 2) under
    # the same run id; the run cap is reached, so the other finds nothing left.
    b = subprocess.run(sweep_cmd(*args, *LIGHT), env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-4000:]
    assert "lease ran out; running it again (attempt 2 of 2)" in b.stderr
    assert json.loads(b.stdout.strip().splitlines()[-1])["ran"] == [trial["run_id"]]
    c = subprocess.run(sweep_cmd(*args, *LIGHT), env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert c.returncode == 0 and json.loads(c.stdout.strip().splitlines()[-1])["ran"] == [], c.stderr[-3000:]
    assert sorted(f.name for f in (sdir / "done").iterdir()) == ["000000.2.json"]
    assert len(list((sdir / "trials").iterdir())) == 1
    parts = runs_by_id(runs)[trial["run_id"]]
    assert any(p.exited for p in parts), "the re-run finished the same run"
    assert config_value(parts[-1], "tfwb")["sweep"]["attempt"] == 2
    for k, v in trial["params"].items():
        assert config_value(parts[-1], k) == v


GRID_AND_BAYES = textwrap.dedent("""\
    import json, sys, tfwb_trainer
    cfg = json.loads(sys.argv[1])
    def train():
        run = tfwb_trainer.init(project="fn-sweep")
        c = run.config
        x = float(c["x"]) if "x" in c else float(c["a"] * 10 + len(c["b"]))
        run.log({"score": (x - 0.3) ** 2}, step=1)
        tfwb_trainer.finish()
    count = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(tfwb_trainer.sweep(cfg, train, count=count, name=sys.argv[2])))
    """)


def _fn_sweep(tmp_path: Path, cfg: dict, name: str, count: int | None = None) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", GRID_AND_BAYES, json.dumps(cfg), name] + ([str(count)] if count else [])
    p = subprocess.run(argv, env=child_env(runs), cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return runs / "sweeps" / name


@pytest.mark.slow(seconds=40)
def test_grid_covers_its_grid_exactly_then_bayes_uses_metrics(tmp_path: Path) -> None:
    grid = {"method": "grid", "metric": {"name": "score", "goal": "minimize"},
            "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "yy"]}}}
    gdir = _fn_sweep(tmp_path, grid, "grid")  # no count: until the grid is exhausted
    got = sorted((t["params"]["a"], t["params"]["b"]) for t in
                 (json.loads(f.read_text()) for f in (gdir / "trials").glob("*.json")))
    assert got == [(1, "x"), (1, "yy"), (2, "x"), (2, "yy")]
    scores = {json.loads(f.read_text())["metric"] for f in (gdir / "done").glob("*.json")}
    assert scores == {(x - 0.3) ** 2 for x in (11.0, 12.0, 21.0, 22.0)}, "metrics read back from the runs"

    bayes = {"method": "bayes", "metric": {"name": "score", "goal": "minimize"},
             "parameters": {"x": {"min": 0.0, "max": 1.0}}}
    bdir = _fn_sweep(tmp_path, bayes, "bayes", count=4)
    from tfwb_trainer.sweep_runner import sweep_runs
    from tfwb_trainer.sweepstore import SweepStore
    import numpy as np
    import sweeps

    store = SweepStore(bdir)
    trials = store.trials()
    assert len(trials) == 4 and all(t.state() == "finished" for t in trials)
    runs = sweep_runs(bayes, trials)
    for t, r in zip(trials, runs):  # the engine is fed the metric each run logged
        assert r.summary_metrics["score"] == pytest.approx((t.params["x"] - 0.3) ** 2)
    # The engine proposes from those metrics: fed runs of the same kind (``sweeps.SweepRun``, as
    # ``sweep_runs`` makes them) at points spread over the range, it proposes near the minimum
    # of the score, and far from it when the score's sign is flipped, for every random state.
    # (The 4 trials above are at random points; where they bunch together the engine's Gaussian
    # process degenerates and proposes the same point either way, so they cannot show this.)
    assert all(isinstance(r, sweeps.SweepRun) for r in runs)
    spread = (0.05, 0.35, 0.65, 0.95)

    def fed(sign: float) -> list:
        return [sweeps.SweepRun(name=f"t{i}", state="finished", config={"x": {"value": x}},
                                summaryMetrics={"score": sign * (x - 0.3) ** 2}) for i, x in enumerate(spread)]

    def proposal(trials: list, seed: int) -> float:
        np.random.seed(seed)
        return sweeps.next_run(bayes, trials).config["x"]["value"]

    for seed in range(7, 10):
        assert abs(proposal(fed(1.0), seed) - 0.3) < abs(proposal(fed(-1.0), seed) - 0.3), seed


BAD = [
    ({"method": "annealing", "parameters": {"lr": {"values": [1]}}}, "method: 'annealing' is not one of grid, random, bayes"),
    ({"method": "random"}, "parameters: give at least one parameter"),
    ({"method": "bayes", "parameters": {"lr": {"min": 0.1, "max": 0.2}}}, "bayes needs metric"),
    ({"method": "random", "parameters": {"lr": {"min": 0.5, "max": 0.1}}}, "min"),
    ({"method": "random", "parameters": {"lr": {"min": 1, "max": "x"}}}, "bad min/max"),
    ({"method": "random", "run_cap": 0, "parameters": {"lr": {"values": [1]}}}, "run_cap: 0 is not a positive"),
    ({"method": "random", "metric": {"name": "l"}, "early_terminate": {"type": "median"},
      "parameters": {"lr": {"values": [1]}}}, "early_terminate"),
    ({"method": "grid", "parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}}, "method grid"),
]


def test_bad_sweep_configs_get_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml
    from tfwb_trainer.sweep import main

    for i, (cfg, words) in enumerate(BAD):
        f = tmp_path / f"bad{i}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        assert main(["check", str(f)]) == 2, cfg
        err = capsys.readouterr().err
        assert err.startswith("tfwb sweep: error: ") and words in err and "Traceback" not in err, (cfg, err)
    (tmp_path / "broken.yaml").write_text("method: [random\n")
    assert main(["check", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # The real command, as a person runs it: one line, no traceback, exit 2.
    p = subprocess.run(sweep_cmd(str(tmp_path / "bad0.yaml"), "--count", "1", "--", "true"), cwd=str(ROOT),
                       env=child_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "annealing" in p.stderr, p.stderr


HYPERBAND_TRIAL = textwrap.dedent("""\
    import time, tfwb_trainer
    run = tfwb_trainer.init(project="sweep-hb", config={"lr": 0.01})
    s = tfwb_trainer.current()
    for epoch in range(1, 41):
        s.log({"epoch/val_loss": float(run.config["lr"]) * (1 + 1 / epoch)}, step=epoch)
        s.drain()
        print(f"EPOCH {epoch}", flush=True)
        time.sleep(0.15)
    tfwb_trainer.finish()
    """)


@pytest.mark.slow(seconds=45)
def test_hyperband_stops_the_poor_trial_while_it_runs(tmp_path: Path) -> None:
    """W&B's hyperband (the ``sweeps`` engine's stop_runs) through the runner, on trials whose
    epochs are far shorter than wandb's flush interval (no TensorFlow): the grid's last trial is
    far worse than the two before it, so past band 2 the engine says stop, and the runner stops
    it while it runs — it never reaches its last epoch — and marks it stopped, once."""
    import yaml

    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = {"method": "grid", "metric": {"name": "epoch/val_loss", "goal": "minimize"},
           "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
           "parameters": {"lr": {"values": [0.01, 0.02, 0.5]}}}
    (tmp_path / "hb.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(sweep_cmd(str(tmp_path / "hb.yaml"), "--name", "hb", "--lease", "1.5", "--",
                                 sys.executable, "-c", HYPERBAND_TRIAL),
                       env=child_env(runs), cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    sdir = runs / "sweeps" / "hb"
    trials = {json.loads(f.read_text())["params"]["lr"]: json.loads(f.read_text())
              for f in (sdir / "trials").glob("*.json")}
    assert sorted(trials) == [0.01, 0.02, 0.5]
    done = {f.name: json.loads(f.read_text()) for f in (sdir / "done").iterdir()}
    # One attempt each: the stopped trial is marked and never handed out again.
    assert sorted(done) == sorted(f"{t['number']:06d}.1.json" for t in trials.values()), sorted(done)
    by_lr = {lr: done[f"{t['number']:06d}.1.json"] for lr, t in trials.items()}
    assert by_lr[0.01]["state"] == by_lr[0.02]["state"] == "finished", by_lr
    assert by_lr[0.5]["state"] == "stopped", (by_lr[0.5], p.stderr[-3000:])
    assert f"trial {trials[0.5]['number']}: stopped early by hyperband" in p.stderr
    # The effect: the two good trials ran every epoch; the poor one was cut off past band 2.
    assert p.stdout.count("EPOCH 40") == 2, p.stdout[-2000:]
    poor_epochs = [int(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("EPOCH ")][80:]
    assert poor_epochs and 2 <= max(poor_epochs) < 40, poor_epochs
