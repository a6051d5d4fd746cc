"""`tfwb-agent demo`: the whole pipeline on a temporary volume, with embedded defaults.

Train (a finished and a crashed run, through the trainer plugin) → classify → redact with the
default policy → seal → export to a "USB stick" folder → import on a "gateway" → check that no
byte of what must stay home is in any bundle. Everything lives under one work directory.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import statedir
from .demo_train import DEMO_DATA_DIR, DEMO_TOKEN
from .ledger import Ledger
from .pipeline import seal_stage
from .reconcile import reconcile
from .seal import agekeys, keys_config, keystore, minisign, open_keys
from .seal.carry import export_to, import_dir
from .seal.keystore import load_public_key

Say = Callable[[str], None]


@dataclass
class DemoReport:
    work: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    imported: list[dict[str, Any]] = field(default_factory=list)
    redaction: dict[str, int] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    checked_files: int = 0
    delivered: list[dict[str, Any]] = field(default_factory=list)
    to_url: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        delivered = not self.to_url or (len(self.delivered) == len(self.imported)
                                         and all(d["state"] == "confirmed" for d in self.delivered))
        return (bool(self.runs) and all(r["state"] == "exported" for r in self.runs)
                and len(self.imported) == len(self.runs) and not self.leaks and delivered)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "work": str(self.work), "runs": self.runs, "bundles": self.bundles,
                "imported": self.imported, "redaction": self.redaction, "leaks": self.leaks,
                "checked_files": self.checked_files, "delivered": self.delivered, "seconds": round(self.seconds, 1)}


def _write_configs(work: Path) -> tuple[Path, Path]:
    keys = work / "keys"
    keys.mkdir(mode=0o700)
    sk = minisign.generate()
    keystore.write_file(keys / "node.key", sk.to_file(), 0o600)
    keystore.write_file(keys / "node.key.pub", sk.public().to_file(), 0o644)
    (keys / "trusted").mkdir()
    keystore.write_file(keys / "trusted" / "demo-node.pub", sk.public().to_file(), 0o644)
    ident = agekeys.generate()
    keystore.write_file(keys / "gateway.agekey", agekeys.identity_file_text(ident), 0o600)
    volume = work / "volume"
    node = work / "node.toml"
    node.write_text(
        f'state_dir = "{work / "node-state"}"\nnode_name = "demo-node"\n'
        f'[watch]\nroots = ["{volume}"]\nquiet_seconds = 2\n'
        f'[path_map]\n"{volume}" = "{volume}"\n'
        f'[keys]\nnode_key = "{keys / "node.key"}"\nrecipients = ["{ident.to_public()}"]\n')
    gateway = work / "gateway.toml"
    gateway.write_text(
        f'state_dir = "{work / "gateway-state"}"\nnode_name = "demo-gateway"\n'
        f'[keys]\nidentity = "{keys / "gateway.agekey"}"\ntrusted_nodes = ["{keys / "trusted"}/*.pub"]\n')
    return node, gateway


def _train(volume: Path, how: str, say: Say) -> None:
    env = dict(os.environ, TFWB_RUNS_DIR=str(volume), WANDB_SILENT="true", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TFWB_RUN_ID", None)
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "tfwb_agent.demo_train", how], env=env,
                          capture_output=True, text=True)
    expected = -9 if how == "crashed" else 0
    if proc.returncode != expected:
        raise RuntimeError(f"the demo's {how} training run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    say(f"  trained a {how} run in {time.time() - t:.0f}s")


def _wait_until_ended(ledger: Ledger, cfg: config_mod.Config, timeout: float = 60) -> None:
    """Reconcile until no run is live (the crashed one needs its quiet period)."""
    deadline = time.time() + timeout
    while True:
        reconcile(ledger, cfg)
        live = ledger.runs_in_state("live")
        if not live:
            return
        if time.time() > deadline:
            raise RuntimeError(f"{len(live)} run(s) still live after {timeout:.0f}s")
        time.sleep(0.5)  # the crashed run's quiet period is running out


def _forbidden(volume: Path) -> tuple[list[bytes], list[bytes]]:
    """What must not leave: the demo's secrets, host and home, and every original media file."""
    home = os.path.expanduser("~").rstrip("/")
    # Short names ("vm", "/root") only count where they stand as a whole value or path.
    strings = [DEMO_TOKEN.encode(), DEMO_DATA_DIR.encode(), json.dumps(socket.gethostname()).encode(),
               json.dumps(home).encode(), f"{home}/".encode()]
    media = [p.read_bytes() for p in volume.rglob("files/media/**/*") if p.is_file() and p.suffix != ".json"]
    return strings, media


def _leak_check(staged: list[Path], volume: Path, report: DemoReport) -> None:
    strings, media = _forbidden(volume)
    for root in staged:
        for f in root.rglob("*"):
            if not f.is_file():
                continue
            report.checked_files += 1
            data = f.read_bytes()
            rel = f"{root.name}/{f.relative_to(root)}"
            report.leaks += [f"{rel}: a secret or local name ({s[:12].decode(errors='replace')}…)"
                             for s in strings if s in data]
            report.leaks += [f"{rel}: bytes of an original media file" for m in media if len(m) > 64 and m[16:80] in data]


def run_demo(work: Path, say: Say, to_url: str | None = None, api_key_env: str = "WANDB_API_KEY") -> DemoReport:
    t0 = time.time()
    report = DemoReport(work, to_url=to_url)
    volume = work / "volume"
    volume.mkdir(parents=True)
    node_cfg_path, gw_cfg_path = _write_configs(work)
    node_cfg, gw_cfg = config_mod.load(str(node_cfg_path)), config_mod.load(str(gw_cfg_path))

    say("1. training on a temporary volume (TensorFlow on the CPU, wandb offline, the trainer plugin)")
    _train(volume, "finished", say)
    _train(volume, "crashed", say)

    say("2. the agent classifies, redacts with the default policy, and seals")
    ledger = Ledger(node_cfg.ledger_path)
    _wait_until_ended(ledger, node_cfg)
    seal_stage(ledger, node_cfg)
    for r in ledger.runs():
        report.runs.append({"run_id": r["run_id"], "project": r["project"], "ended": r["ended"], "state": r["state"],
                            "steps": r["steps"], "reason": r["reason"], "last_error": r["last_error"]})
    for b in sorted(ledger.bundles(), key=lambda b: b["run_id"]):
        size = (statedir.outbox(node_cfg) / b["name"]).stat().st_size
        report.bundles.append({"run_id": b["run_id"], "bundle": b["name"], "bytes": size})

    say("3. export to removable media, import on the gateway")
    usb = work / "usb"
    usb.mkdir()
    node_pub = load_public_key(Path(f"{keys_config(node_cfg).node_key}.pub"))
    export_to(node_cfg, ledger, usb, node_pub)
    now_in = {r["run_id"]: r["state"] for r in ledger.runs()}  # export moved them to exported
    report.runs = [dict(r, state=now_in.get(r["run_id"], r["state"])) for r in report.runs]
    gw_ledger = Ledger(gw_cfg.ledger_path)
    outcomes = import_dir(gw_cfg, open_keys(keys_config(gw_cfg)), gw_ledger, usb)
    report.imported = [o.as_dict() for o in outcomes if o.status == "imported"]
    refused = [o.as_dict() for o in outcomes if o.status != "imported"]
    if refused:
        report.leaks.append(f"the gateway refused {len(refused)} bundle(s): {refused}")

    say("4. leak check: every decrypted bundle against the originals")
    _leak_check([Path(o["staged"]) for o in report.imported], volume, report)
    # The gateway's audit log carries each imported manifest's redaction report.
    for line in statedir.audit_log(gw_cfg).read_text().splitlines():
        event = json.loads(line).get("event", {})
        if event.get("kind") == "imported":
            for k, v in _redaction_counts(event.get("redaction") or {}).items():
                report.redaction[k] = report.redaction.get(k, 0) + v

    if to_url:
        say(f"5. delivering to {to_url}")
        report.delivered = _deliver(gw_cfg_path, gw_ledger, to_url, api_key_env, say)
    report.seconds = time.time() - t0
    return report


def _redaction_counts(red: dict[str, Any]) -> dict[str, int]:
    """The report's counts in a few lines (numbers and names only, never values)."""
    out: dict[str, int] = {}

    def add(k: str, n: int) -> None:
        out[k] = out.get(k, 0) + n

    for m in red.get("media_by_rule", []):
        add(f"media {m['kind']} {m['action']}ed", m["items"])
    for c in red.get("table_columns", []):
        add(f"table cells {c['action']}ed", c["cells"])
    add("config keys redacted", len(red.get("config_keys_redacted", [])))
    add("metadata fields redacted", len(red.get("metadata_fields_redacted", [])))
    for name, n in red.get("secrets_scrubbed", {}).items():
        add(f"secrets scrubbed ({name})", n)
    for how, n in red.get("console_lines", {}).items():
        add(f"console lines {how}", n)
    return {k: v for k, v in out.items() if v}


def _deliver(gw_cfg_path: Path, gw_ledger: Ledger, url: str, api_key_env: str, say: Say) -> list[dict[str, Any]]:
    if not os.environ.get(api_key_env):
        raise RuntimeError(f"--to needs the server's API key in ${api_key_env}")
    with open(gw_cfg_path, "a") as f:
        f.write(f'[targets.demo]\nbase_url = "{url}"\napi_key_env = "{api_key_env}"\n'
                '[[policy]]\nprojects = ["*"]\ntargets = ["demo"]\n')
    proc = subprocess.run([sys.executable, "-m", "tfwb_agent", "--config", str(gw_cfg_path), "sync", "--to", "demo",
                           "--once", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"delivery failed:\n{proc.stderr[-3000:]}")
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"delivery printed no report:\n{proc.stdout[-2000:]}") from None
    rounds = result if isinstance(result, list) else [result]
    return [row for r in rounds for row in r.get("deliveries", {}).get("rows", [])]
