"""One run through every state the README names, each written by the transition that causes
it, shown by `status --json` and in the audit log; illegal transitions refused, nothing changed.

The node side (ended, invalid, sealed, exported) and the gateway's import (imported, a
quarantined bundle) run through the real CLI. Delivery is the ledger's confirmation as the
engine records the server's answer (``set_delivery``): a wandb sync to a server is what the
delivery tests exercise, at a cost this walk does not need.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import agent
from seal_helpers import corpus_run_dirs, flip, make_site
from tfwb_agent.ledger import IllegalTransition, Ledger

RUN = "3salp52t"  # wandb 0.31.0, finished


def _status(cfg: Path) -> dict:
    return json.loads(agent(cfg, "status", "--json").stdout)


def _audit(state_dir: Path) -> list[dict]:
    log = state_dir / "audit.log"
    return [json.loads(line)["event"] for line in log.read_text().splitlines()] if log.exists() else []


def _run_states(events: list[dict], run_id: str) -> list[tuple]:
    return [(e["was"], e["state"]) for e in events if e["kind"] == "run" and e["run_id"] == run_id]


def _tables(ledger_path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(ledger_path)
    try:
        return {t: sorted(map(tuple, db.execute(f"SELECT * FROM {t}"))) for t in
                ("runs", "bundles", "imports", "deliveries", "approvals")}
    finally:
        db.close()


@pytest.fixture
def site(corpus: Path, tmp_path: Path):
    site = make_site(tmp_path / "site")
    root = tmp_path / "volume"
    root.mkdir()
    shutil.copytree(corpus_run_dirs(corpus)[RUN], root / corpus_run_dirs(corpus)[RUN].name, symlinks=True)
    # Not a run: a run directory with no .wandb file in it.
    (root / "offline-run-20240101_000000-notarun1" / "files").mkdir(parents=True)
    old = time.time() - 3600  # and quiet for an hour: not a run that is just starting
    for p in (root / "offline-run-20240101_000000-notarun1", root / "offline-run-20240101_000000-notarun1" / "files"):
        os.utime(p, (old, old))
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{root}"]\nquiet_seconds = 1\n')
    site.volume = root
    return site


def test_one_run_through_every_state(site, tmp_path: Path) -> None:
    node_state, gw_state = site.root / "node-state", site.root / "gw-state"

    # Node: the watcher finds the run ended, the empty directory invalid.
    agent(site.node_cfg, "scan")
    st = _status(site.node_cfg)
    by_id = {r["run_id"]: r for r in st["runs"]}
    assert by_id[RUN]["state"] == "ended"
    (bad,) = [r for r in st["runs"] if r["path"].endswith("notarun1")]
    assert bad["state"] == "invalid" and bad["reason"]
    events = _audit(node_state)
    assert _run_states(events, RUN) == [(None, "ended")]
    assert [(e["was"], e["state"]) for e in events if e["kind"] == "run" and e["run_dir"] == bad["path"]] \
        == [(None, "invalid")]

    # Sealed, by the pipeline.
    agent(site.node_cfg, "scan", "--seal")
    assert {r["run_id"]: r for r in _status(site.node_cfg)["runs"]}[RUN]["state"] == "sealed"
    events = _audit(node_state)
    assert _run_states(events, RUN) == [(None, "ended"), ("ended", "sealed")]
    assert [e["run_id"] for e in events if e["kind"] == "sealed"] == [RUN]

    # Exported, by `export` (the README's state; before, status still said sealed).
    usb = tmp_path / "usb"
    usb.mkdir()
    agent(site.node_cfg, "export", "--to", str(usb))
    assert {r["run_id"]: r for r in _status(site.node_cfg)["runs"]}[RUN]["state"] == "exported"
    events = _audit(node_state)
    assert _run_states(events, RUN)[-1] == ("sealed", "exported")
    assert [e["run_id"] for e in events if e["kind"] == "exported"] == [RUN]

    # Gateway: a damaged copy of the bundle is refused and quarantined; the good one imported.
    (bundle,) = usb.glob("*.tar.zst.age")
    bad_medium = tmp_path / "bad"
    bad_medium.mkdir()
    (bad_medium / bundle.name).write_bytes(flip(bundle.read_bytes(), bundle.stat().st_size // 2))
    shutil.copy(f"{bundle}.minisig", bad_medium / f"{bundle.name}.minisig")
    agent(site.gw_cfg, "import", str(bad_medium), check=False)
    agent(site.gw_cfg, "import", str(usb))
    gw = _status(site.gw_cfg)
    (imp,) = gw["imported"]
    assert imp["run_id"] == RUN and imp["state"] == "imported" and gw["import_counts"] == {"imported": 1}
    (q,) = gw["quarantined"]
    assert q["name"] == bundle.name and q["reason"]
    kinds = [e["kind"] for e in _audit(gw_state)]
    assert kinds == ["quarantined", "imported"]

    # The import keeps the project the manifest carries: delivery never reads the log for it.
    led = Ledger(gw_state / "ledger.sqlite3")
    row = led.imports()[0]
    assert row["project"] and row["project"] == imp["project"]
    assert led.deliverable()[0]["run_project"] == row["project"]

    # Delivered: a target confirmed it.
    b = led.bundle(imp["bundle_id"])
    led.set_delivery(run_id=RUN, segment=b["segment"], content_id=b["content_id"], bundle_id=b["bundle_id"],
                     target="local", state="confirmed", audit={"kind": "delivered", "run_id": RUN,
                                                               "bundle_id": b["bundle_id"], "target": "local"})
    led.close()
    gw = _status(site.gw_cfg)
    assert gw["imported"][0]["state"] == "delivered" and gw["import_counts"] == {"delivered": 1}
    assert [e["kind"] for e in _audit(gw_state)][-1] == "delivered"


def test_illegal_transitions_are_refused_and_change_nothing(site, tmp_path: Path) -> None:
    node_state, gw_state = site.root / "node-state", site.root / "gw-state"
    agent(site.node_cfg, "scan", "--seal")
    usb = tmp_path / "usb"
    usb.mkdir()
    (run_dir,) = [p for p in site.volume.iterdir() if p.name.endswith(RUN)]
    node = Ledger(node_state / "ledger.sqlite3")
    (bundle,) = node.bundles("sealed")

    # A run that is sealed cannot be quarantined, nor go back to invalid; an unknown bundle
    # cannot be exported.
    before, audit_before = _tables(node.path), (node_state / "audit.log").read_bytes()
    with pytest.raises(IllegalTransition, match=f"run {run_dir} is sealed; it cannot be quarantined"):
        node.quarantine_run(str(run_dir), "a reason")
    with pytest.raises(IllegalTransition, match="is sealed; it cannot be invalid"):
        node.mark_invalid(str(run_dir), "gone")
    with pytest.raises(IllegalTransition, match="bundle nosuchbundle is not in the ledger; it cannot be exported"):
        node.mark_exported([bundle["bundle_id"], "nosuchbundle"], [])
    assert _tables(node.path) == before and (node_state / "audit.log").read_bytes() == audit_before

    # Exported once; exporting the same bundle again is refused.
    agent(site.node_cfg, "export", "--to", str(usb))
    before, audit_before = _tables(node.path), (node_state / "audit.log").read_bytes()
    with pytest.raises(IllegalTransition, match=f"bundle {bundle['bundle_id']} is exported; it cannot be exported"):
        node.mark_exported([bundle["bundle_id"]], [{"kind": "exported"}])
    assert _tables(node.path) == before and (node_state / "audit.log").read_bytes() == audit_before
    node.close()

    # Gateway: a quarantined bundle is never delivered.
    (medium_bundle,) = usb.glob("*.tar.zst.age")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / medium_bundle.name).write_bytes(flip(medium_bundle.read_bytes(), 200))
    shutil.copy(f"{medium_bundle}.minisig", bad / f"{medium_bundle.name}.minisig")
    agent(site.gw_cfg, "import", str(bad), check=False)
    gw = Ledger(gw_state / "ledger.sqlite3")
    (q,) = gw.bundles("quarantined")
    before, audit_before = _tables(gw.path), (gw_state / "audit.log").read_bytes()
    with pytest.raises(IllegalTransition, match=f"bundle {q['bundle_id']} is quarantined; it cannot be delivered"):
        gw.set_delivery(run_id=q["run_id"], segment=q["segment"], content_id=q["content_id"],
                        bundle_id=q["bundle_id"], target="local", state="confirmed",
                        audit={"kind": "delivered", "run_id": q["run_id"]})
    assert _tables(gw.path) == before and (gw_state / "audit.log").read_bytes() == audit_before
    # A confirmed delivery of a content stays confirmed.
    agent(site.gw_cfg, "import", str(usb))
    (b,) = gw.bundles("imported")
    fields = dict(run_id=b["run_id"], segment=b["segment"], content_id=b["content_id"], bundle_id=b["bundle_id"],
                  target="local")
    gw.set_delivery(state="confirmed", **fields)
    before = _tables(gw.path)
    with pytest.raises(IllegalTransition, match="is confirmed; it cannot be pending"):
        gw.set_delivery(state="pending", **fields)
    assert _tables(gw.path) == before
    gw.close()


def test_a_quarantined_run_is_written_by_its_transition_and_stays(site) -> None:
    node_state = site.root / "node-state"
    agent(site.node_cfg, "scan")
    (run_dir,) = [p for p in site.volume.iterdir() if p.name.endswith(RUN)]
    node = Ledger(node_state / "ledger.sqlite3")
    node.quarantine_run(str(run_dir), "redaction failed: a test's reason")
    assert {r["run_id"]: r for r in _status(site.node_cfg)["runs"]}[RUN]["state"] == "quarantined"
    assert _run_states(_audit(node_state), RUN)[-1] == ("ended", "quarantined")
    with pytest.raises(IllegalTransition, match="is quarantined; it cannot be sealed"):
        node.mark_run_sealed(str(run_dir))
    # The seal stage leaves it alone.
    agent(site.node_cfg, "scan", "--seal")
    assert {r["run_id"]: r for r in _status(site.node_cfg)["runs"]}[RUN]["state"] == "quarantined"
    node.close()
