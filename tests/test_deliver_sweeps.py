"""Delivering sweep trials (issue 15, part 1, "On delivery").

The trials are real offline runs made by ``tfwb_trainer.sweep`` (W&B's ``sweeps`` engine, a
function trial with no TensorFlow: one process, three runs), sealed by the real agent (``scan
--seal``: redaction on) and delivered by it to a real OpenWandb.

OpenWandb has no sweeps. The W&B case goes through ``SweepsFrontDoor``, a stand-in for W&B's
sweep support (named as such: it is not W&B) in front of that OpenWandb: it answers the
has-sweeps introspection with a Mutation type that has ``upsertSweep``, answers ``UpsertSweep``
with a sweep name as W&B does, and records every ``UpsertSweep`` and ``UpsertBucket`` it sees
(the latter forwarded to OpenWandb). Whether W&B itself accepts these requests is untestable
here against a real W&B: the documents are checked against the ones wandb's client sends in
tests/test_trainer_sweep_wandb.py.
"""
from __future__ import annotations

import dataclasses

import io
import json
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deliver_helpers import RestartableServer, make_deliver_site
from trainer_helpers import ROOT, child_env
from wandb_standins import Seen, WandbFrontDoor, _read_body, _reply

SECRET = "AKIAIOSFODNN7EXAMPLE"  # an AWS key id's shape: the redaction's scrubber takes it out
SWEEP_CFG = {"method": "random", "metric": {"name": "score", "goal": "minimize"}, "run_cap": 3,
             "description": f"lr sweep, data key {SECRET}",
             "parameters": {"lr": {"min": 0.001, "max": 0.1}, "batch_size": {"values": [16, 32]}}}
TRIALS = textwrap.dedent("""\
    import json, sys, tfwb_trainer
    def train():
        run = tfwb_trainer.init(project="sw-deliver")
        for step in range(1, 4):
            run.log({"score": float(run.config["lr"]) * step}, step=step)
        tfwb_trainer.finish()
    print(json.dumps(tfwb_trainer.sweep(json.loads(sys.argv[1]), train, count=3, name="lr-sweep")))
    """)


class SweepsFrontDoor(WandbFrontDoor):
    """A stand-in for W&B's sweep support in front of OpenWandb (not W&B): the has-sweeps
    introspection and UpsertSweep answered as W&B answers them, UpsertBucket recorded and
    forwarded as it came."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.upsert_sweeps: list[dict] = []
        self.upsert_buckets: list[dict] = []
        super().__init__(upstream, api_key)

    def _handle(self, h) -> None:
        if h.path.rstrip("/") != "/graphql" or h.command != "POST":
            return super()._handle(h)
        body = _read_body(h)
        doc = json.loads(body or b"{}")
        q = doc.get("query") or ""
        variables = doc.get("variables") or {}
        if "__type(name: \"Mutation\")" in q:
            with self.lock:
                self.seen.append(Seen("POST", "/graphql", self._good_key(h), status=200))
            fields = [{"name": n} for n in ("upsertBucket", "upsertSweep", "createArtifact")]
            return _reply(h, 200, json.dumps({"data": {"__type": {"fields": fields}}}).encode(),
                          {"Content-Type": "application/json"})
        if "mutation UpsertSweep" in q:
            name = secrets.token_hex(4)
            with self.lock:
                self.upsert_sweeps.append({"variables": variables, "name": name, "query": q})
            sweep = {"name": name, "project": {"id": "p1", "name": variables.get("projectName"),
                                               "entity": {"id": "e1", "name": variables.get("entityName") or "admin"}}}
            return _reply(h, 200, json.dumps({"data": {"upsertSweep": {"sweep": sweep, "configValidationWarnings": []}}})
                          .encode(), {"Content-Type": "application/json"})
        if "mutation UpsertBucket" in q:
            with self.lock:
                self.upsert_buckets.append(dict(variables))
        # The rest is the front door's own handling, and OpenWandb's, of the same body (read
        # once already: handed over as a plain body, the connection's own stream put back after).
        del h.headers["Transfer-Encoding"]
        del h.headers["Content-Length"]
        h.headers["Content-Length"] = str(len(body))
        conn, h.rfile = h.rfile, io.BytesIO(body)
        try:
            return super()._handle(h)
        finally:
            h.rfile = conn


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sweep-trials")
    runs = base / "runs"
    runs.mkdir()
    p = subprocess.run([sys.executable, "-c", TRIALS, json.dumps(SWEEP_CFG)], env=child_env(runs), cwd=str(ROOT),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    sdir = runs / "sweeps" / "lr-sweep"
    made = [json.loads(f.read_text()) for f in sorted((sdir / "trials").glob("*.json"))]
    assert len(made) == 3
    return {"runs": runs, "trials": made, "sweep_id": json.loads((sdir / "sweep.json").read_text())["id"]}


@pytest.fixture(scope="module")
def openwandb(tmp_path_factory):
    server = RestartableServer(tmp_path_factory.mktemp("ow")).start()
    yield server
    server.stop()


def _server_runs(server, project: str) -> dict[str, tuple[dict, list, str | None]]:
    rows = server.query("SELECT r.run_id, r.config_json, r.tags_json FROM runs r "
                        "JOIN projects p ON p.id = r.project_id WHERE p.name = ?", (project,))
    return {rid: (json.loads(c), json.loads(t)) for rid, c, t in rows}


def _unwrap(config: dict) -> dict:
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in config.items()}


def test_on_a_server_with_sweeps_the_sweep_is_created_once_and_every_trial_attached(tmp_path, trials, openwandb):
    door = SweepsFrontDoor(openwandb.url, openwandb.api_key)
    try:
        site = make_deliver_site(tmp_path / "site", door.url, openwandb.api_key)
        out = site.scan_seal_sync(trials["runs"], quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": 3}, out
        # One sweep, with the sweep's config (redacted like the rest of the run), in the trials' project.
        (created,) = door.upsert_sweeps
        v = created["variables"]
        sent_cfg = yaml.safe_load(v["config"])
        assert sent_cfg["method"] == "random" and sent_cfg["parameters"] == SWEEP_CFG["parameters"]
        assert sent_cfg["metric"] == SWEEP_CFG["metric"] and sent_cfg["name"] == "lr-sweep"
        assert SECRET not in json.dumps(created) and "lr sweep, data key" in sent_cfg["description"]
        assert v["projectName"] == "sw-deliver" and v["entityName"] == "admin" and v["displayName"] == "lr-sweep"
        # Every trial's first upsertBucket (wandb sync's own) carried the sweep's name; the
        # later ones (the run's end) leave it as it is (null: unchanged).
        run_ids = {t["run_id"] for t in trials["trials"]}
        by_run: dict[str, list] = {}
        for b in door.upsert_buckets:
            by_run.setdefault(b.get("name"), []).append(b.get("sweep"))
        assert set(by_run) == run_ids, by_run
        assert all(s[0] == created["name"] and set(s) <= {created["name"], None} for s in by_run.values()), by_run
        assert {b.get("groupName") for b in door.upsert_buckets} - {None} == {"lr-sweep"}
        state_file = site.config().state_dir / "deliver" / "local.sweeps.json"
        assert json.loads(state_file.read_text()) == {f"admin/sw-deliver/{trials['sweep_id']}": created["name"]}
        # The trials are on the server too, tagged.
        got = _server_runs(openwandb, "sw-deliver")
        assert set(got) == run_ids
        assert all(f"sweep:{trials['sweep_id']}" in tags for _c, tags in got.values())

        # Once per target: a trial's log prepared again (a later segment, another round) gets
        # the same sweep from the state file, with no second UpsertSweep.
        from tfwb_agent.deliver.settings import targets
        from tfwb_agent.deliver.sweeps import Sweeps, sweep_in_log
        from tfwb_agent.segments import plan_cut, read_facts, write_cut
        from trainer_helpers import run_files

        log = tmp_path / "again.wandb"
        shutil.copy(run_files(trials["runs"])[0], log)
        rows = read_facts(log).history_rows
        cfg = site.config()
        sw = Sweeps(cfg, targets(cfg)["local"], openwandb.api_key)
        assert sweep_in_log(log)["id"] == trials["sweep_id"]
        cut = plan_cut(read_facts(log), 0)
        cut = dataclasses.replace(cut, sweep_id=sw.sweep_id_for(log, "sw-deliver", "admin"))
        sent = tmp_path / "sent.wandb"
        assert write_cut(log, sent, cut) == sent.stat().st_size
        assert len(door.upsert_sweeps) == 1
        assert run_record(sent).sweep_id == created["name"] and read_facts(sent).history_rows == rows
    finally:
        door.stop()


def run_record(log: Path):
    from tfwb_agent.wandb_log import read_records

    return next(rec.run for _, rec in read_records(log) if rec.WhichOneof("record_type") == "run")


def test_on_openwandb_trials_arrive_grouped_tagged_with_the_sweep_config_and_no_sweep(tmp_path, trials):
    server = RestartableServer(tmp_path / "ow").start()  # run ids are unique on an OpenWandb
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        out = site.scan_seal_sync(trials["runs"], quiet_seconds=1)
        assert out["deliveries"]["counts"] == {"confirmed": 3}, out
        got = _server_runs(server, "sw-deliver")
        assert set(got) == {t["run_id"] for t in trials["trials"]}
        for t in trials["trials"]:
            config, tags = got[t["run_id"]]
            c = _unwrap(config)
            for k, v in t["params"].items():
                assert c[k] == v
            assert c["tfwb"]["sweep"]["config"]["parameters"] == SWEEP_CFG["parameters"]
            assert c["tfwb"]["sweep"]["name"] == "lr-sweep"
            assert SECRET not in json.dumps(config)  # redaction applies to a trial like any run
            assert f"sweep:{trials['sweep_id']}" in tags
        # No sweep was created or recorded: OpenWandb has none.
        assert not (site.config().state_dir / "deliver" / "local.sweeps.json").exists()
    finally:
        server.stop()
