"""The CLI points of issue 14, against real runs, a real OpenWandb and the real CLI.

- `sync --dry-run` in text says what --json says: each segment that would be sent, by run.
- `sync`'s closing line counts what THIS call did, not the ledger's all-time total.
- Off a terminal each outcome is printed once (stdout and stderr together).
- A run that only printed (no history row) delivers; a damaged unit does not abort the round:
  the others deliver, the bad one is reported with its reason and tried again on request.
- `audit verify --json`; every command that prints a result takes --json.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, agent
from deliver_helpers import RestartableServer, make_deliver_site, metric_rows, seal_dirs, write_runs

from tfwb_agent.runlog import find_log
from tfwb_agent.segments import read_facts

PRINT_ONLY = REPO / "tests" / "writers" / "print_only_run.py"


def _print_only_run(root: Path) -> Path:
    out = subprocess.run([sys.executable, str(PRINT_ONLY), str(root)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    (line,) = [l for l in out.splitlines() if l.startswith("RUN ")]
    return Path(line.split()[2]).parent


def _seal_damaged(site, run_dir: Path) -> str:
    """Seal ``run_dir`` after damaging the middle of its log's last quarter (a disk error before
    sealing): the bundle verifies, its log cannot be read past the damage."""
    from tfwb_agent import runs
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run

    facts = runs.inspect(run_dir)
    log = next(run_dir.glob("*.wandb"))
    data = bytearray(log.read_bytes())
    at = len(data) * 3 // 4
    data[at:at + 64] = b"\xee" * 64
    log.write_bytes(bytes(data))
    cfg = site.config()
    ledger = site.ledger()
    try:
        seal_run(cfg, seal_keys(keys_config(cfg)), ledger, run_dir,
                 RunIdentity(facts.run_id, facts.project, facts.entity, facts.wandb_version), 0, {"note": "damaged"})
    finally:
        ledger.close()
    return facts.run_id


@pytest.fixture
def three_sealed(tmp_path):
    """A site holding a run that only printed, a good run of 20 steps, and a damaged run."""
    printed = _print_only_run(tmp_path / "printed")
    good, bad = write_runs(tmp_path / "runs", 2, 20)
    server = RestartableServer(tmp_path).start()
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        printed_id, good_id = seal_dirs(site, [printed, good])
        bad_id = _seal_damaged(site, bad)
        site.good_rows = read_facts(find_log(good)).metric_values  # what the server must hold of it
        yield server, site, {"printed": printed_id, "good": good_id, "bad": bad_id}
    finally:
        server.stop()


def _sync(site, *args: str) -> subprocess.CompletedProcess:
    return agent(site.cfg, "sync", "--to", "local", *args, check=False, timeout=300)


@pytest.mark.slow(seconds=25)
def test_sync_says_what_it_would_send_and_what_this_call_did(three_sealed):
    server, site, ids = three_sealed

    # Dry run: the text lists the same segments as --json's would_send, one line each.
    dry_json = json.loads(_sync(site, "--dry-run", "--json").stdout)
    would = sorted(o["run_id"] for o in dry_json["outcomes"] if o["state"] == "would_send")
    assert would == sorted(ids.values()), dry_json
    dry = _sync(site, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    listed = sorted(l.split()[0] for l in dry.stdout.splitlines() if ": would send (" in l)
    assert listed == would, dry.stdout
    assert "nothing to deliver" not in dry.stdout and "this call: 3 would send" in dry.stdout, dry.stdout

    # A real round: the run that only printed and the good one arrive; the damaged one does not
    # stop them and is reported with why.
    first = _sync(site, "--once")
    assert first.returncode == 0, first.stdout + first.stderr
    both = first.stdout + first.stderr
    assert "Traceback" not in both
    for rid in ids.values():  # off a terminal, each outcome once (stdout and stderr together)
        assert both.count(f"{rid} segment 0 -> local:") == 1, both
    assert f"{ids['printed']} segment 0 -> local: confirmed" in first.stdout
    assert f"{ids['good']} segment 0 -> local: confirmed" in first.stdout
    assert f"{ids['bad']} segment 0 -> local: failed: segment 0 of {ids['bad']}: its .wandb log cannot be read" \
        in first.stdout
    assert first.stdout.splitlines()[-1] == "this call: 2 confirmed, 1 failed", first.stdout
    assert server.query("SELECT COUNT(*) FROM runs WHERE run_id = ?", (ids["printed"],))[0][0] == 1
    assert metric_rows(server, ids["printed"]) == 0
    assert metric_rows(server, ids["good"]) == site.good_rows
    assert server.query("SELECT COUNT(*) FROM runs WHERE run_id = ?", (ids["bad"],))[0][0] == 0

    # Again: nothing was done by this call, whatever the ledger holds from the first.
    again = _sync(site, "--once")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "nothing to deliver", again.stdout
    again_json = json.loads(_sync(site, "--once", "--json").stdout)
    assert again_json["this_call"] == {} and again_json["deliveries"]["counts"] == {"confirmed": 2, "failed": 1}

    # The failed one is tried again when asked (and fails again, saying so, nothing else sent).
    retried = _sync(site, "--once", "--retry-failed")
    assert retried.stdout.splitlines()[-1] == "this call: 1 failed", retried.stdout
    assert metric_rows(server, ids["good"]) == site.good_rows


# Commands that print no result of their own: a long-running service, a config template, key
# generation (its output is the public key alone, for `R=$(...)` in scripts).
NO_JSON = {("daemon",), ("config", "example"), ("keys", "init"), ("receipts", "init-key")}


def test_every_command_that_prints_a_result_takes_json():
    import click

    from tfwb_agent.cli.main import cli

    ctx = click.Context(cli)
    lacking, seen = [], 0

    def walk(cmd, path):
        nonlocal seen
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + (name,))
            return
        seen += 1
        if path not in NO_JSON and not any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option)):
            lacking.append(" ".join(path))

    walk(cli, ())
    assert seen >= 20 and not lacking, f"commands without --json: {lacking}"


def test_audit_verify_json_says_ok_or_what_broke(tmp_path):
    from tfwb_agent import audit

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\n')
    log = tmp_path / "state" / "audit.log"
    log.parent.mkdir()
    for i in range(3):
        audit.append(log, {"kind": "sealed", "run_id": f"run{i}"})
    good = agent(cfg, "audit", "verify", "--json")
    out = json.loads(good.stdout)
    assert out == {"log": str(log), "ok": True, "lines": 3, "problems": []}
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("run1", "runX")  # an edited line
    log.write_text("".join(lines))
    bad = agent(cfg, "audit", "verify", "--json", check=False)
    out = json.loads(bad.stdout)
    assert bad.returncode == 1 and out["ok"] is False and out["lines"] is None
    assert out["problems"] and all(isinstance(p, str) for p in out["problems"]), out
    text = agent(cfg, "audit", "verify", check=False)
    assert text.returncode == 1 and text.stdout == "" and "line 2" in text.stderr, text.stderr
