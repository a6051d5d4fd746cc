"""Issue 12, end to end: canaries planted by real wandb clients never leave the node.

``tests/writers/canary_run.py`` is run once per session by wandb 0.31 (this interpreter) and by
wandb 0.15.12 (the TF 2.13 venv); each run plants a unique canary in every place ordinary
training code puts strings (see its ``canaries.json``). Then, through the real CLI:

- **default policy** (no ``[redact]`` section): ``scan --seal`` on one node; every bundle is
  decrypted and decompressed with the standard tools and every byte of it (member names,
  the manifest, every member, the records of `.wandb` logs, anything compressed inside) is
  searched for every canary that the default policy must catch. The node's state directory
  holds a canary too (``work_path``: paths of the node must not travel in artifact records),
  and so does each writer's volume (``volume_path``).
- **site policy**: a second node with ``patterns = ["P\\d{4}", <e-mail>]`` and
  ``artifacts = "keep"`` seals the same runs; its bundles must hold no canary at all, patient
  ids and e-mails in key names, media file names and artifact fields included.
- **delivery**: the volumes (run directories, TensorBoard log dirs, wandb's artifact staging)
  are renamed away, with traps left where the runs pointed outside themselves; then the default
  node's bundles are delivered to an OpenWandb server on 127.0.0.1. Every run must be
  confirmed, its numeric rows must be those it logged, and no byte of the server's data
  directory (database and files) may hold a default-policy canary or a trap's.

Policies: the default-policy tests check the canaries marked ``policy: default`` (secret-shaped
ones, local paths, the host name); the site-policy test checks all of them.

A failure lists each leaked placement with its issue-12 path, the writer and where it was found.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli_fork import popen
from canary_helpers import (REQUIRED, SITE_PATTERNS, Canaries, Canary, CanaryRun, Hit, describe, present_in_source,
                            rnd, scan_bytes, scan_tree, session_runs)
from conftest import agent, status
from deliver_helpers import make_deliver_site
from openwandb_server import Server, _free_port, launch, start_openwandb, stop_process, wait_ready
from seal_helpers import make_site
from trainer_helpers import interpreters, require_python

from tfwb_agent.segments import read_facts

LABELS = [label for label, _ in interpreters()]
TRAIN_KEYS = ("loss", "acc")
# One worker runs this module: its module-scoped world (two nodes sealing, one delivery) is built
# once, and it alone renames the shared canary volumes away (see `delivered`). Together its
# tests are among the longest, so they start first.
pytestmark = [pytest.mark.xdist_group("canary-e2e"), pytest.mark.slow(seconds=90)]

# What the writers' wandb versions never write, so the placement cannot leak (reported, not failed).
NOT_WRITTEN_BY_WANDB = {
    "env_wandb_api_key": "wandb keeps the API key from the environment out of offline runs",
    "git_remote_token": "wandb strips the password from the git remote URL",
    "git_user_email": "wandb 0.31 records no e-mail offline (0.15 takes git's user.email)",
    "git_diff_uncommitted": "offline runs write no diff.patch",
    "username": "wandb 0.31 records no user name offline (0.15 does: the placement is checked there)",
}


@dataclass
class Sealed:
    name: str
    cfg: Path
    identity: Path
    outbox: Path
    scan: dict
    states: dict[str, str]                         # run id -> ledger state
    bundles: dict[str, list[Path]] = field(default_factory=dict)
    hits: dict[str, set[Hit]] = field(default_factory=dict)   # run id -> hits in its bundles


@dataclass
class World:
    root: Path
    runs: list[CanaryRun]
    present: dict[str, set[str]]                   # label -> placements wandb wrote into the run
    server: Server
    work_canary: Canary

    def run(self, label: str) -> CanaryRun:
        return next(r for r in self.runs if r.label == label)

    def canaries(self, policy: str) -> list[Canary]:
        """All canaries of both runs a policy must catch (site catches everything)."""
        out = [c for r in self.runs for c in r.canaries if c.policy == "default" or c.policy == policy == "site"]
        return out + [self.work_canary]


def _open_bundle(bundle: Path, identity: Path) -> bytes:
    """The tar stream inside a bundle, opened the operator's way: age, then zstd."""
    cmd = f"age -d -i '{identity}' '{bundle}' | zstd -d -q"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True)
    assert p.returncode == 0, f"{bundle.name}: cannot open: {p.stderr.decode(errors='replace')}"
    return p.stdout


def _start_seal(world: World, site_root: Path, cfg: Path, extra: str) -> subprocess.Popen:
    """`tfwb-agent scan --seal` on a node that watches both volumes (its own claims dir)."""
    roots = ", ".join(f'"{r.root}"' for r in world.runs)
    with open(cfg, "a") as f:
        f.write(f'[watch]\nroots = [{roots}]\nquiet_seconds = 1\nclaims_dir = "{site_root / "claims"}"\n{extra}')
    env = dict(os.environ, TFWB_AGENT_CONFIG=str(cfg))
    return popen([sys.executable, "-m", "tfwb_agent", "scan", "--seal", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(world: World, name: str, site_root: Path, cfg: Path, identity: Path, proc: subprocess.Popen) -> Sealed:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{name}: scan --seal exited {proc.returncode}:\n{out}\n{err[-3000:]}"
    scan = json.loads(out)
    states = {r["run_id"]: r["state"] for r in status(cfg)["runs"]}
    outbox = site_root / "node-state" / "outbox"
    sealed = Sealed(name, cfg, identity, outbox, scan, states)
    needles = Canaries(world.canaries("site" if name == "site" else "default"))
    for run in world.runs:
        bundles = sorted(outbox.glob(f"{run.run_id}-*.tar.zst.age"))
        sealed.bundles[run.run_id] = bundles
        hits: set[Hit] = set()
        for b in bundles:
            hits |= scan_bytes(needles, _open_bundle(b, identity), b.name)
            hits |= scan_bytes(needles, Path(f"{b}.minisig").read_bytes(), b.name + ".minisig")
        sealed.hits[run.run_id] = hits
    return sealed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pythons = [(label, require_python(label, py)) for label, py in interpreters()]
    root = tmp_path_factory.mktemp("canary-e2e")
    # The server starts while the runs are written (its readiness is observed below).
    port = _free_port()
    data_dir = root / f"openwandb-{port}"
    data_dir.mkdir()
    log = root / f"openwandb-{port}.log"
    proc = launch(port, data_dir, log)
    server = None
    try:
        runs, _pristine = session_runs(tmp_path_factory, pythons)
        url = f"http://127.0.0.1:{port}"
        key = wait_ready(proc, url, log, 60)
        if key is None:      # the port was taken in between: start one the careful way
            stop_process(proc)
            server = start_openwandb(root / "server")
        else:
            server = Server(url, key, data_dir / "openwandb.db", data_dir, log, proc)
        present = {r.label: present_in_source(r) for r in runs}
        work = "site-" + rnd(22)
        yield World(root, runs, present, server, Canary("work_path", "path", "9", "default", [work], run="node"))
    finally:
        stop_process(proc)
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def sealed(world: World) -> dict[str, Sealed]:
    """Two nodes seal the same runs at once, each with its own state and claims:
    "default" (no [redact] section; it is also its own gateway, for delivery) and
    "site" (site patterns, artifacts kept)."""
    d_root = world.root / world.work_canary.needles[0]
    d_site = make_deliver_site(d_root, world.server.url, world.server.api_key)
    s_root = world.root / (world.work_canary.needles[0] + "-patterns")   # its work path holds the canary too
    s_site = make_site(s_root)
    pats = ", ".join(f"'{p}'" for p in SITE_PATTERNS)
    d_proc = _start_seal(world, d_root, d_site.cfg, "")
    s_proc = _start_seal(world, s_root, s_site.node_cfg, f'[redact]\npatterns = [{pats}]\nartifacts = "keep"\n')
    return {"default": _collect(world, "default", d_root, d_site.cfg, d_root / "keys" / "gateway.agekey", d_proc),
            "site": _collect(world, "site", s_root, s_site.node_cfg, s_site.gw_identity, s_proc)}


@pytest.fixture(scope="module")
def default_sealed(sealed: dict[str, Sealed]) -> Sealed:
    return sealed["default"]


@pytest.fixture(scope="module")
def site_sealed(sealed: dict[str, Sealed]) -> Sealed:
    return sealed["site"]


@dataclass
class Delivered:
    proc: subprocess.CompletedProcess
    out: dict | None
    server_hits: set[Hit]
    traps: list[Canary]


@pytest.fixture(scope="module")
def delivered(world: World, default_sealed: Sealed, site_sealed: Sealed) -> Delivered:
    """Rename every volume away, then deliver the default node's bundles. Delivery may only read
    what the bundles carry: the run directories are gone, and wherever a run pointed outside
    itself a trap waits under the same name: in the TensorBoard log dir and behind the run's
    symlinks (wandb links saved files and event files into files/) files holding canaries that
    were never part of the run (event files the writer made after it); wandb's artifact staging
    as it was. Whatever of them reaches the server was read from the node's volume."""
    traps: list[Canary] = []
    for r in world.runs:
        gone = r.root.with_name(r.root.name + ".gone")
        os.rename(r.root, gone)
        assert not r.run_dir.exists()
        shutil.copytree(gone / "wandb-data", r.root / "wandb-data", symlinks=True)
        trap_events = next((gone / "tb-trap").glob("events.out.tfevents.*")).read_bytes()
        traps += [c for c in r.canaries if c.policy == "trap"]
        tb_gone = gone / Path(r.data["tb_logdir"]).relative_to(r.root)
        targets = [r.root / ev.relative_to(gone) for ev in tb_gone.rglob("events.out.tfevents.*")]
        for link in (gone / r.run_dir.relative_to(r.root) / "files").rglob("*"):
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(r.root):
                targets.append(Path(os.readlink(link)))
        for target in set(targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.name.startswith("events.out.tfevents."):
                target.write_bytes(trap_events)
            else:
                token = "ghp_" + rnd(36)
                traps.append(Canary(f"volume_trap:{target.name}", "ghp", "delivery", "trap", [token], run=r.label))
                target.write_text(f"trap {token}\n")
    proc = agent(default_sealed.cfg, "sync", "--to", "local", "--once", "--json", check=False, timeout=300)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    # The gateway here shares the node's state directory, so its own paths hold the work-path
    # canary; the node's paths can only reach the server through a bundle (checked above).
    needles = Canaries([c for c in world.canaries("default") if c.placement != "work_path"] + traps)
    hits = scan_tree(needles, world.server.data_dir, label="server")
    return Delivered(proc, out, hits, traps)


def _fail_leaks(hits: set[Hit], canaries: list[Canary], what: str) -> None:
    if hits:
        placements = sorted({h.placement for h in hits})
        pytest.fail(f"{what}: {len(placements)} placements leaked: {', '.join(placements)}\n"
                    + describe(hits, canaries), pytrace=False)


# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", LABELS)
def test_the_runs_carry_every_placement(world: World, label: str) -> None:
    """Not a redaction test: the canaries are really in the originals (else the others pass for
    nothing). Lists what this wandb would not log."""
    run = world.run(label)
    required = {p for ps in REQUIRED.values() for p in ps} - {"work_path"}
    missing = sorted(required - world.present[label])
    planted = {c.placement for c in run.canaries}
    planted -= {c.placement for c in run.canaries if c.policy == "trap"}
    absent = sorted(planted - world.present[label] - set(NOT_WRITTEN_BY_WANDB))
    print(f"{label}: wandb {run.data['wandb_version']}, {len(planted)} placements, "
          f"{len(world.present[label])} written; skipped: {run.data['skipped']}; notes: {run.data['notes']}; "
          f"planted but not written: {absent}")
    assert not missing, f"{label}: the run does not carry these placements' canaries: {missing}"


@pytest.mark.parametrize("label", LABELS)
def test_default_policy_bundle_holds_no_canary(world: World, default_sealed: Sealed, label: str) -> None:
    run = world.run(label)
    assert default_sealed.states.get(run.run_id) == "sealed", (label, default_sealed.states, default_sealed.scan)
    assert default_sealed.bundles[run.run_id], f"{label}: no bundle in the outbox"
    _fail_leaks(default_sealed.hits[run.run_id], world.canaries("default"),
                f"{label} (wandb {run.data['wandb_version']}), default policy, opened bundle")


@pytest.mark.parametrize("label", LABELS)
def test_site_policy_bundle_holds_no_canary(world: World, site_sealed: Sealed, label: str) -> None:
    """Patterns = patient ids and e-mails, artifacts kept: key names, media file names and
    artifact descriptions, metadata, aliases and references must all be clean."""
    run = world.run(label)
    assert site_sealed.states.get(run.run_id) == "sealed", (label, site_sealed.states, site_sealed.scan)
    assert site_sealed.bundles[run.run_id], f"{label}: no bundle in the outbox"
    _fail_leaks(site_sealed.hits[run.run_id], world.canaries("site"),
                f"{label} (wandb {run.data['wandb_version']}), site policy + artifacts keep, opened bundle")


def test_server_holds_no_canary_after_delivery(world: World, sealed: dict[str, Sealed], delivered: Delivered) -> None:
    assert any(world.server.data_dir.rglob("*")), "the server wrote nothing"
    in_bundles = {(h.placement, h.run) for hits in sealed["default"].hits.values() for h in hits}
    from_volume = sorted({f"{h.placement} ({h.run})" for h in delivered.server_hits} - {f"{p} ({r})" for p, r in in_bundles})
    _fail_leaks(delivered.server_hits, world.canaries("default") + delivered.traps,
                "OpenWandb data dir (db + files) after delivery"
                + (f"; not in any bundle, so read from the node's volume: {from_volume}" if from_volume else ""))


def _server_rows(server: Server, run_id: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for key, step, value in server.query("SELECT key, step, value FROM metrics WHERE run_id = ?", (run_id,)):
        assert step not in out.setdefault(key, {}), f"{run_id}: {key} step {step} arrived twice"
        out[key][step] = value
    return out


def _logged_rows(run: CanaryRun, log: Path) -> dict[str, dict[int, float]]:
    """Numeric top-level history values of the original log, by key and step."""
    from tfwb_agent.wandb_log import read_records
    rows: dict[str, dict[int, float]] = {}
    for _, rec in read_records(log):
        if rec.WhichOneof("record_type") != "history":
            continue
        vals = {}
        for it in rec.history.item:
            k = it.key or (it.nested_key[0] if len(it.nested_key) == 1 else None)
            if k is None:
                continue
            try:
                vals[k] = float(it.value_json)
            except ValueError:
                pass
        step = int(rec.history.step.num) if rec.history.HasField("step") else int(vals.get("_step", 0))
        for k, v in vals.items():
            if not k.startswith("_") and math.isfinite(v):
                rows.setdefault(k, {})[step] = v
    return rows


@pytest.mark.parametrize("label", LABELS)
def test_delivered_from_bundles_alone_with_every_number(world: World, delivered: Delivered, label: str,
                                                        tmp_path_factory) -> None:
    run = world.run(label)
    assert delivered.proc.returncode == 0, (f"sync failed with the volumes gone:\n{delivered.proc.stdout[-3000:]}\n"
                                            f"{delivered.proc.stderr[-3000:]}")
    assert delivered.out is not None
    mine = [o for o in delivered.out.get("outcomes", []) if o.get("run_id") == run.run_id]
    assert mine and all(o.get("state") == "confirmed" for o in mine), (label, mine, delivered.out.get("deliveries"))
    got = _server_rows(world.server, run.run_id)
    for key in TRAIN_KEYS:
        want = run.metrics[key]
        assert got.get(key) == pytest.approx(want, rel=1e-12), f"{label}: {key} on the server {got.get(key)} != logged {want}"
    # Every numeric value the original log holds, under a key free of canaries, arrived as is;
    # the keys a scrubber may rename still arrive, as many rows as logged.
    pristine = _pristine_log(tmp_path_factory, run)
    logged = _logged_rows(run, pristine)
    needles = Canaries(c for c in run.canaries)
    clean = {k: v for k, v in logged.items() if not needles.find(k.encode(), k)}
    for key, rows in clean.items():
        assert got.get(key) == pytest.approx(rows, rel=1e-12), f"{label}: {key}: server {got.get(key)} != logged {rows}"
    total_logged = read_facts(pristine).metric_values
    total_got = sum(len(v) for v in got.values())
    assert total_got >= total_logged, f"{label}: {total_got} numeric rows on the server, {total_logged} logged"


def _pristine_log(tmp_path_factory, run: CanaryRun) -> Path:
    _runs, pristine = session_runs(tmp_path_factory, [])
    d = pristine / run.label / run.root.name / run.run_dir.relative_to(run.root)
    (log,) = d.glob("run-*.wandb")
    return log
