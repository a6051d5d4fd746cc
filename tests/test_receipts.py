"""Receipts across the gap, end to end on one machine: a node seals ten runs written by real
wandb, exports them; a gateway imports them, delivers them to OpenWandb and writes a signed
receipt; the node takes the receipt in and prunes. Old, untrusted and altered receipts are refused."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import agent, status
from deliver_helpers import write_runs
from openwandb_server import start_openwandb
from seal_helpers import BUNDLE_GLOB, make_site


def add_receipt_keys(site, name: str = "receipt") -> Path:
    """The gateway signs receipts with keys.receipt_key; the node trusts <root>/gateways/*.pub."""
    key = site.root / "keys" / f"{name}.key"
    with open(site.gw_cfg, "a") as f:  # the gateway's config ends in its [keys] table
        f.write(f'receipt_key = "{key}"\n')
    agent(site.gw_cfg, "receipts", "init-key")
    gateways = site.root / "gateways"
    gateways.mkdir(exist_ok=True)
    with open(site.node_cfg, "a") as f:  # so does the node's
        f.write(f'trusted_gateways = ["{gateways}/*.pub"]\n')
    shutil.copy(f"{key}.pub", gateways / "gw.pub")
    return key


def receipt_files(d: Path) -> list[Path]:
    return sorted(d.glob("tfwb-receipt-*.json"))


def export_receipt(cfg: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    out = json.loads(agent(cfg, "receipts", "export", "--to", str(dest), "--json").stdout)
    return Path(out["file"])


def take(cfg: Path, directory: Path, check: bool = True) -> tuple[int, list[dict]]:
    proc = agent(cfg, "receipts", "import", str(directory), "--json", check=check)
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow(seconds=70)
def test_ten_runs_there_and_the_receipt_back(tmp_path: Path) -> None:
    server = start_openwandb(tmp_path)
    try:
        _there_and_back(tmp_path, server)
    finally:
        server.stop()


def _there_and_back(tmp_path: Path, server) -> None:
    site = make_site(tmp_path / "site")
    runs_root = tmp_path / "runs"
    run_dirs = write_runs(runs_root, 10, steps=5, project="ct-receipts")
    api_key = site.root / "keys" / "wandb-key"
    api_key.write_text(server.api_key + "\n")
    api_key.chmod(0o600)
    receipt_key = add_receipt_keys(site)
    with open(site.node_cfg, "a") as f:
        f.write(f'[watch]\nroots = ["{runs_root}"]\nquiet_seconds = 1\n')
    with open(site.gw_cfg, "a") as f:
        f.write(f'[targets.local]\nbase_url = "{server.url}"\napi_key_file = "{api_key}"\nentity = "admin"\n'
                f'timeout = 10\n[sync]\nmax_parallel = 2\nbackoff_base = 1\nbackoff_cap = 3\n'
                f'[[policy]]\nprojects = ["*"]\ntargets = ["local"]\n')

    # The node: seal the ten runs, export them.
    agent(site.node_cfg, "scan", "--seal")
    run_ids = sorted(r["run_id"] for r in status(site.node_cfg)["runs"])
    assert len(run_ids) == 10 and len(run_dirs) == 10
    assert len(list(site.outbox.glob(BUNDLE_GLOB))) == 10
    usb = tmp_path / "usb"
    usb.mkdir()
    agent(site.node_cfg, "export", "--to", str(usb))
    # Exported is not arrived: prune removes nothing, and status says what waits and since when.
    pruned = json.loads(agent(site.node_cfg, "prune", "--json").stdout)
    assert pruned["removed"] == [] and pruned["kept_unconfirmed"] == 10
    st = status(site.node_cfg)
    assert len(st["unconfirmed"]) == 10 and all(u["age_seconds"] >= 0 for u in st["unconfirmed"])
    assert "unconfirmed: 10 bundle(s)" in agent(site.node_cfg, "status").stdout

    # The gateway: import, deliver, write a receipt.
    agent(site.gw_cfg, "import", str(usb))
    agent(site.gw_cfg, "sync", "--to", "local", "--once", "--json")
    assert set(run_ids) <= {r[0] for r in server.query("SELECT run_id FROM runs")}
    confirmed = site.gw_ledger().db.execute(
        "SELECT run_id FROM deliveries WHERE target = 'local' AND state = 'confirmed'").fetchall()
    assert sorted(r[0] for r in confirmed) == run_ids
    back = tmp_path / "back"
    first = export_receipt(site.gw_cfg, back)
    # The stock minisign checks a receipt with the gateway's public key.
    assert subprocess.run(["minisign", "-Vm", str(first), "-p", f"{receipt_key}.pub", "-q"]).returncode == 0
    doc = json.loads(first.read_text())
    assert sorted(e["run_id"] for e in doc["bundles"] if e["status"] == "delivered") == run_ids
    assert all(e["targets"][0]["target"] == "local" for e in doc["bundles"])
    # The gateway's staging goes once delivered; its prune keeps nothing of what arrived.
    assert len(list(site.staging.iterdir())) == 10
    gw_pruned = json.loads(agent(site.gw_cfg, "prune", "--json").stdout)
    assert sorted(r["kind"] for r in gw_pruned["removed"]) == ["staging"] * 10
    assert list(site.staging.iterdir()) == []

    # The node takes the receipt in: every run delivered; prune empties the outbox.
    rc, outcomes = take(site.node_cfg, back)
    assert rc == 0 and [o["status"] for o in outcomes] == ["applied"], outcomes
    assert outcomes[0]["marked"] == {"delivered": 10} and outcomes[0]["runs_delivered"] == 10
    assert {r["state"] for r in status(site.node_cfg)["runs"]} == {"delivered"}
    assert status(site.node_cfg)["unconfirmed"] == []
    dry = json.loads(agent(site.node_cfg, "prune", "--dry-run", "--json").stdout)
    assert len(dry["removed"]) == 10 and len(list(site.outbox.glob(BUNDLE_GLOB))) == 10  # a dry run removes nothing
    pruned = json.loads(agent(site.node_cfg, "prune", "--json").stdout)
    assert len(pruned["removed"]) == 10 and pruned["freed_bytes"] > 0
    assert {r["why"] for r in pruned["removed"]} == {"delivered, says a gateway's receipt"}
    assert [p.name for p in site.outbox.iterdir() if not p.name.startswith(".")] == []
    assert json.loads(agent(site.node_cfg, "prune", "--json").stdout)["removed"] == []  # done once

    # Replay: the same receipt again, and an older one after a newer, are refused.
    rc, outcomes = take(site.node_cfg, back, check=False)
    assert rc == 1 and outcomes[0]["reason"] == "replay", outcomes
    old = tmp_path / "old"
    shutil.copytree(back, old)
    newer = tmp_path / "newer"
    second = export_receipt(site.gw_cfg, newer)
    assert json.loads(second.read_text())["sequence"] > doc["sequence"]
    assert take(site.node_cfg, newer)[1][0]["status"] == "applied"
    rc, outcomes = take(site.node_cfg, old, check=False)
    assert rc == 1 and outcomes[0]["status"] == "refused" and outcomes[0]["reason"] == "replay", outcomes
    # Both on one medium: the newest is taken, the older one beside it is superseded (not an error).
    both = tmp_path / "both"
    shutil.copytree(newer, both)
    for p in old.iterdir():
        shutil.copy(p, both / p.name)
    third = export_receipt(site.gw_cfg, both)
    rc, outcomes = take(site.node_cfg, both)
    assert rc == 0 and {o["file"]: o["status"] for o in outcomes} == {
        first.name: "superseded", second.name: "superseded", third.name: "applied"}

    # Altered receipts are refused: a changed byte, a renamed file.
    tampered = tmp_path / "tampered"
    fourth = export_receipt(site.gw_cfg, tampered)
    text = fourth.read_text()
    fourth.write_text(text.replace('"delivered"', '"refused"', 1))
    rc, outcomes = take(site.node_cfg, tampered, check=False)
    assert rc == 1 and outcomes[0]["reason"] == "bad_signature", outcomes
    fourth.write_text(text)
    renamed = fourth.with_name(fourth.name.replace(str(json.loads(text)["sequence"]), "999999999999"))
    fourth.rename(renamed)
    Path(f"{fourth}.minisig").rename(f"{renamed}.minisig")
    rc, outcomes = take(site.node_cfg, tampered, check=False)
    assert rc == 1 and outcomes[0]["reason"] == "malformed" and "signed as" in outcomes[0]["detail"], outcomes

    # A receipt from a gateway the node does not trust: refused, and marks nothing.
    stranger = tmp_path / "stranger.toml"
    stranger.write_text(site.gw_cfg.read_text().replace(f'receipt_key = "{receipt_key}"',
                                                        f'receipt_key = "{tmp_path}/other.key"'))
    agent(stranger, "receipts", "init-key")
    foreign = tmp_path / "foreign"
    export_receipt(stranger, foreign)
    rc, outcomes = take(site.node_cfg, foreign, check=False)
    assert rc == 1 and outcomes[0]["reason"] == "untrusted", outcomes
