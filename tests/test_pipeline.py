"""The daemon's whole node-side pipeline: watch → classify → redact → seal, on the corpus."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from seal_helpers import make_site, minisign_ok, site_redact_secret, tool_list

from conftest import CORPUS_RUNS, agent, status
from daemon_helpers import DaemonProc, run_states, wait_for
from redact_helpers import leaks

POLICY = """
[redact]
secret_file = "{secret}"
console = "scrub"
metadata = "redact"
config_keys = ["*token*", "*secret*", "*password*", "*api_key*", "data_dir"]
patterns = ['hf_[A-Za-z0-9]{{30,}}']
[[redact.rule]]
key = "samples/*"
media = ["image"]
action = "hash"
[[redact.rule]]
key = "predictions"
media = ["table"]
columns = {{ "patient_id" = "hash", "email" = "drop" }}
"""


def node_site(tmp_path: Path, corpus: Path):
    site = make_site(tmp_path / "site")
    secret = site_redact_secret(tmp_path / "site")
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{corpus}"]\nquiet_seconds = 2\nreconcile_seconds = 30\n'
                f'[path_map]\n"/runs" = "{corpus}"\n' + POLICY.format(secret=secret))
    return site


def test_daemon_redacts_and_seals_every_ended_run(tmp_path, corpus):
    site = node_site(tmp_path, corpus)
    d = DaemonProc(site.node_cfg, tmp_path / "daemon.log").start()
    st = wait_for(lambda: (s := run_states(site.node_cfg)) and len(s) == 4
                  and all(r["state"] == "sealed" for r in s.values()) and s, 120, "4 runs sealed", d)
    assert {rid: r["ended"] for rid, r in st.items()} == {rid: how for rid, (_, how) in CORPUS_RUNS.items()}
    bundles = sorted(site.outbox.glob("*.tar.zst.age"))
    assert [b.name.split("-")[0] for b in bundles] == sorted(CORPUS_RUNS)

    originals = {p.read_bytes() for p in corpus.glob("wandb-*/wandb/offline-run-*/files/media/images/**/*.png")}
    assert originals
    for b in bundles:
        assert minisign_ok(b, site.node_pub)
        names = tool_list(b, site.gw_identity)
        assert names[0] == "MANIFEST.json"
        assert not any(n.startswith(("logs/", "/")) or "/logs/" in n or ".." in n for n in names), names
        # Open with the standard tools and look at every byte for what must not leave.
        out = tmp_path / "opened" / b.name
        out.mkdir(parents=True)
        subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"age -d -i '{site.gw_identity}' '{b}' | zstd -d -q | tar -xf - -C '{out}'"], check=True)
        manifest = json.loads((out / "MANIFEST.json").read_text())
        assert manifest["run"]["run_id"] == b.name.split("-")[0]
        assert manifest["redaction"]  # the report travels with the bundle
        for f in out.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not leaks(data), f"{b.name}:{f.relative_to(out)} leaks {leaks(data)}"
                assert not any(o[8:200] in data for o in originals), f"{b.name}:{f.name} holds an original image"

    # A restart changes nothing: the same bundles, no second copy.
    before = {b.name: b.stat().st_mtime_ns for b in bundles}
    d.kill()
    d = DaemonProc(site.node_cfg, tmp_path / "daemon2.log").start()
    wait_for(lambda: "watching" in d.output(), 10, "restart", d)
    agent_status = status(site.node_cfg)
    assert agent_status["counts"] == {"sealed": 4}
    assert {b.name: b.stat().st_mtime_ns for b in site.outbox.glob("*.tar.zst.age")} == before
    d.terminate()


def test_runs_wait_unsealed_without_keys_and_say_why(tmp_path, corpus, make_config):
    cfg = make_config([corpus], quiet_seconds=2, reconcile_seconds=30)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    wait_for(lambda: (s := run_states(cfg)) and len(s) == 4 and all(r["state"] == "ended" for r in s.values()),
             30, "4 ended runs", d)
    wait_for(lambda: "runs wait unsealed" in d.output(), 10, "a warning about missing keys", d)
    assert "keys init --node" in d.output()
    d.terminate()


def test_a_name_someone_gave_a_run_directory_or_its_log_does_not_leave(tmp_path, corpus):
    """Found by a tester: a run directory named after a patient (``offline-run-…-P7126``, its run
    id another) and a log renamed ``run-P7126.wandb`` went into the bundle under those names (its
    members, its manifest's ``run_dir``), and so to the gateway's staging and ``inspect``. In the
    bundle a run's directory is named from its time and its run id, its log from its run id."""
    import os
    import shutil

    runs = sorted(corpus.glob("wandb-*/wandb/offline-run-*"))[:2]
    root = tmp_path / "named"
    a = root / "a" / "wandb" / (runs[0].name.rsplit("-", 1)[0] + "-P7126")
    shutil.copytree(runs[0], a)
    b = root / "b" / "wandb" / runs[1].name
    shutil.copytree(runs[1], b)
    (log_b,) = b.glob("run-*.wandb")
    log_b.rename(b / "run-P7126.wandb")
    for p in root.rglob("*"):        # ended long ago: no quiet period to wait out
        os.utime(p, (1e9, 1e9))
    site = make_site(tmp_path / "site")
    secret = site_redact_secret(tmp_path / "site")
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{root}"]\nquiet_seconds = 2\n[redact]\nsecret_file = "{secret}"\n'
                "patterns = ['\\\\bP\\\\d{4}\\\\b']\n")
    agent(site.node_cfg, "scan", "--seal")
    bundles = sorted(site.outbox.glob("*.tar.zst.age"))
    assert len(bundles) == 2, bundles
    run_ids = set()
    for bundle in bundles:
        out = tmp_path / "opened" / bundle.name
        out.mkdir(parents=True)
        subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"age -d -i '{site.gw_identity}' '{bundle}' | zstd -d -q | tar -xf - -C '{out}'"], check=True)
        names = [str(p.relative_to(out)) for p in out.rglob("*")]
        assert not [n for n in names if "P7126" in n], names
        manifest = (out / "MANIFEST.json").read_text()
        assert "P7126" not in manifest
        run_id = json.loads(manifest)["run"]["run_id"]
        run_ids.add(run_id)
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        assert run_dir.name.endswith("-" + run_id) and (run_dir / f"run-{run_id}.wandb").is_file()
    assert len(run_ids) == 2


def test_a_sealed_run_directory_takes_nothing_from_its_name_but_wandbs_time():
    """Whatever the directory is called on the volume (a patient id, a path, an option, nothing
    of wandb's scheme), the bundle's name for it is wandb's: its time, if the name has one, and
    the run id (checked before)."""
    import re
    from tfwb_agent.sealing import sealed_dir_name
    for name in ("offline-run-20260101_000000-P7126", "run-20260101_000000-P7126", "P7126",
                 "offline-run-20260101_000000-../../etc", "--rm -rf", "offline-run-2026_x-abc", "",
                 "offline-run-20260101_000000", "offline-run-20260101_000000-"):
        got = sealed_dir_name(name, "abc123")
        assert re.fullmatch(r"(?:offline-)?run-\d{8}_\d{6}-abc123", got), (name, got)
        assert "P7126" not in got and ".." not in got
