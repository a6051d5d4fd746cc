"""Finding and classifying runs: the corpus, bad inputs, symlinks, staging files."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tfwb_agent import runs
from tfwb_agent.wandb_log import BLOCK_LEN

from conftest import CORPUS_RUNS, agent, by_run_id, status


def test_every_corpus_run_is_found_once_and_classified(corpus, make_config):
    cfg = make_config([corpus], quiet_seconds=60)
    agent(cfg, "scan")
    st = status(cfg)
    assert len(st["runs"]) == 4, [r["path"] for r in st["runs"]]  # latest-run links don't double a run
    got = by_run_id(st)
    assert set(got) == set(CORPUS_RUNS)
    for run_id, (version, ended) in CORPUS_RUNS.items():
        r = got[run_id]
        assert r["ended"] == ended, r
        assert r["state"] == "ended"
        assert r["wandb_version"] == version
        assert r["project"] == "ct-classifier"
        assert "latest-run" not in r["path"]
    torn = got["s900mviu"]
    assert torn["torn_at"] == 65463 and "torn tail" in torn["reason"]
    assert got["5okzpcus"]["steps"] == 153 and got["itokze55"]["steps"] == 304


def test_a_fresh_crash_waits_for_the_quiet_period(corpus, make_config):
    # The same crashed run, just written: live until quiet_seconds have passed.
    run = next(corpus.glob("wandb-0.15.12/wandb/offline-run-*-5okzpcus"))
    log = next(run.glob("*.wandb"))
    facts = runs.inspect(run)
    assert runs.classify(facts, facts.mtime + 5, 60).state == "live"
    v = runs.classify(facts, facts.mtime + 61, 60)
    assert (v.state, v.ended) == ("ended", "crashed")
    os.utime(log)  # touched now
    cfg = make_config([corpus], quiet_seconds=600)
    agent(cfg, "scan")
    assert by_run_id(status(cfg))["5okzpcus"]["state"] == "live"


def test_staging_files_are_found_through_path_map(corpus, make_config, tmp_path):
    cfg = make_config([corpus], quiet_seconds=60)
    agent(cfg, "scan")
    got = by_run_id(status(cfg))
    assert got["3salp52t"]["staging_missing"] == []
    staging = corpus / "wandb-0.31.0/wandb-data/artifacts/staging"
    shutil.rmtree(staging)
    facts = runs.inspect(Path(got["3salp52t"]["path"]))
    rep = runs.staging_report(facts, lambda p: corpus / p.removeprefix("/runs/"))
    assert rep["found"] == [] and len(rep["missing"]) == 1 and rep["missing"][0].startswith(str(corpus))


def test_symlink_out_of_the_root_is_never_followed(tmp_path, corpus, make_config):
    outside = tmp_path / "outside"
    shutil.copytree(next(corpus.glob("wandb-0.15.12/wandb/offline-run-*-itokze55")),
                    outside / "offline-run-20260101_000000-outside1")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "offline-run-20260101_000000-linked22").symlink_to(outside / "offline-run-20260101_000000-outside1")
    run = root / "offline-run-20260101_000000-inside33"
    run.mkdir()
    (run / "run-inside33.wandb").symlink_to(outside / "offline-run-20260101_000000-outside1" / "run-itokze55.wandb")
    cfg = make_config([root], quiet_seconds=60)
    agent(cfg, "scan")
    st = status(cfg)
    assert [r["path"] for r in st["runs"]] == [str(run)]  # only the real directory
    assert st["runs"][0]["state"] != "ended"  # its .wandb is a link: not read
    assert list(runs.discover(root)) == [run]


def _bad_runs(root: Path, corpus: Path) -> dict[str, Path]:
    made = {}

    def mk(name: str) -> Path:
        d = root / f"offline-run-20260101_000000-{name}"
        d.mkdir(parents=True)
        made[name] = d
        return d

    (mk("header1") / "run-header1.wandb").write_bytes(b":W&B\xe1\xbe\x00")
    (mk("garbage1") / "run-garbage1.wandb").write_bytes(b"GARBAGE!" * 1000)
    good = next(corpus.glob("wandb-0.31.0/wandb/offline-run-*-3salp52t/*.wandb")).read_bytes()
    damaged = bytearray(good)
    damaged[BLOCK_LEN + 200] ^= 0x55
    (mk("crcmid11") / "run-crcmid11.wandb").write_bytes(bytes(damaged))
    (mk("nolog111") / "files").mkdir()
    unread = mk("unread11") / "run-unread11.wandb"
    unread.write_bytes(good)
    unread.chmod(0)
    old = 1_700_000_000
    for d in made.values():
        for p in [d, *d.rglob("*")]:
            os.utime(p, (old, old), follow_symlinks=False)
    return made


def test_bad_inputs_each_get_a_clear_state_and_reason(tmp_path, corpus, make_config):
    root = tmp_path / "bad"
    made = _bad_runs(root, corpus)
    cfg = make_config([root], quiet_seconds=5)
    # Root reads a mode-0 file anyway; without the DAC capabilities it cannot, as the agent's own
    # unprivileged user could not.
    cmd = ["tfwb-agent", "scan"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, env=dict(os.environ, TFWB_AGENT_CONFIG=str(cfg)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = {Path(r["path"]).name.rsplit("-", 1)[-1]: r for r in status(cfg)["runs"]}
    assert set(got) == set(made)
    for name, r in got.items():
        assert r["state"] == "invalid", (name, r)
        assert r["last_error"], (name, r)
    assert "header" in got["header1"]["last_error"]
    assert "not a wandb run log" in got["garbage1"]["last_error"]
    assert "corrupt" in got["crcmid11"]["last_error"] and "offset" in got["crcmid11"]["last_error"]
    assert "no run-*.wandb file" in got["nolog111"]["last_error"]
    assert "permission denied" in got["unread11"]["last_error"]


def test_a_run_deleted_before_sealing_is_marked_not_forgotten(corpus, make_config):
    cfg = make_config([corpus], quiet_seconds=60)
    agent(cfg, "scan")
    path = by_run_id(status(cfg))["5okzpcus"]["path"]
    shutil.rmtree(path)
    agent(cfg, "scan")
    r = by_run_id(status(cfg))["5okzpcus"]
    assert r["state"] == "invalid" and "disappeared" in r["last_error"]
    assert by_run_id(status(cfg))["itokze55"]["state"] == "ended"
