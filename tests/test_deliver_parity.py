"""What the agent delivers is what plain `wandb sync` delivers, and nothing less.

The same runs (the corpus and a fresh one that prints to its console) go to two OpenWandb
servers: through the agent (sealed without redaction, opened, cut, uploaded with the installed
wandb) and through plain `wandb sync` of copies. Everything each server stored is compared. The
agent may hold more, never less: for wandb 0.15 logs plain sync stops at the exit record and
drops what was written after it (summary, system metrics), which the agent delivers. Allowed
differences, by design: the run's `program` (the agent names itself instead of this host's path
to the wandb executable) and the random id wandb gives the environment entry of `_wandb`.
An earlier agent ran wandb sync with WANDB_CONSOLE=off and silently lost every console line;
this comparison is what would have caught it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

import cli_fork as forks
from deliver_helpers import (RestartableServer, corpus_dirs, make_deliver_site, seal_dirs, server_console, sync,
                             write_runs)


def stored(server, run_id: str) -> dict:
    (project, name, state, config, summary, tags, notes), = server.query(
        "SELECT p.name, r.display_name, r.state, r.config_json, r.summary_json, r.tags_json, r.notes "
        "FROM runs r JOIN projects p ON p.id = r.project_id WHERE r.run_id = ?", (run_id,))
    return {
        "head": (project, name, state, tags, notes),
        "config": _env_by_value(json.loads(config)),
        "summary": json.loads(summary),
        "metrics": sorted(server.query("SELECT key, step, value FROM metrics WHERE run_id = ?", (run_id,))),
        "system": sorted(server.query("SELECT key, value FROM system_metrics WHERE run_id = ?", (run_id,))),
        "artifacts": sorted(server.query("SELECT name, artifact_type, size FROM artifacts WHERE run_id = ?", (run_id,))),
        # The content as stored (the database's md5 column is empty for some media the server
        # registered from a history row before the file came).
        "files": {name: _content(Path(path)) for name, path in
                  server.query("SELECT name, path FROM files WHERE run_id = ?", (run_id,))},
    }


def _env_by_value(config: dict) -> dict:
    env = config.get("_wandb", {}).get("value", {}).get("e") if isinstance(config, dict) else None
    if isinstance(env, dict):  # keyed by an id wandb draws at sync time
        config["_wandb"]["value"]["e"] = sorted(env.values(), key=json.dumps)
    return config


def _content(path: Path) -> object:
    """A stored file's content, compared as data where key order is the writer's whim (Go maps)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if path.suffix == ".json":
        return json.loads(data)
    if path.name == "config.yaml":
        return _env_by_value(yaml.safe_load(data))
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow(seconds=60)
def test_the_agent_delivers_everything_plain_wandb_sync_does(tmp_path, corpus):
    dirs = corpus_dirs(corpus) + write_runs(tmp_path / "fresh", 1, 40)
    via_agent = RestartableServer(tmp_path / "agent").start()
    plain = RestartableServer(tmp_path / "plain").start()
    try:
        site = make_deliver_site(tmp_path / "site", via_agent.url, via_agent.api_key)
        run_ids = seal_dirs(site, dirs)
        out = json.loads(sync(site).stdout)
        assert out["deliveries"]["counts"] == {"confirmed": len(dirs)}, out["deliveries"]
        env = plain.sync_env()
        for d in dirs:
            copy = tmp_path / "plain-runs" / d.name
            shutil.copytree(d, copy, symlinks=True)
            p = forks.run(["wandb", "sync", "--entity", "admin", str(copy)], env=env,  # the site's entity
                          capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
        for rid in run_ids:
            a, b = stored(via_agent, rid), stored(plain, rid)
            assert a["head"] == b["head"], rid
            assert a["config"] == b["config"], rid
            assert a["metrics"] == b["metrics"] and a["metrics"], rid
            assert a["artifacts"] == b["artifacts"], rid
            assert set(b["system"]) <= set(a["system"]), rid
            assert b["summary"].items() <= a["summary"].items(), rid
            assert set(b["files"]) <= set(a["files"]), (rid, set(b["files"]) - set(a["files"]))
            # Same content, except the summary file where plain sync of a 0.15 log lost the summary,
            # and the console, whose streamed lines the server stamps with the time they arrived.
            differ = {n for n in b["files"] if a["files"][n] != b["files"][n]} - {"output.log"}
            assert differ <= {"wandb-summary.json"} and (not differ or not b["summary"]), (rid, differ)
            if "output.log" in b["files"]:
                assert server_console(via_agent, rid) == server_console(plain, rid), rid
        assert server_console(via_agent, run_ids[-1])  # the fresh run printed: its console is there
    finally:
        via_agent.stop()
        plain.stop()

