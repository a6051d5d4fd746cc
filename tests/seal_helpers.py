"""Helpers for the seal tests: a node and a gateway with real keys, real tools, crafted bundles."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyrage
import zstandard

from tfwb_agent import config as config_mod
from tfwb_agent.ledger import Ledger
from tfwb_agent.seal import agekeys, keys_config, minisign, open_keys, seal_keys
from tfwb_agent.seal import manifest as mf

from conftest import CORPUS_RUNS, agent

BUNDLE_GLOB = "[!.]*.tar.zst.age"  # not the outbox's .tmp-* files, still being written


def corpus_run_dirs(corpus: Path) -> dict[str, Path]:
    """run id -> its directory in a private corpus copy (never through `latest-run`)."""
    out = {}
    for rid, (version, _how) in CORPUS_RUNS.items():
        (d,) = (corpus / f"wandb-{version}" / "wandb").glob(f"offline-run-*-{rid}")
        out[rid] = d
    return out


@dataclass
class Site:
    """One node and one gateway, each with its own config and state."""
    root: Path
    node_cfg: Path
    gw_cfg: Path
    node_key: Path
    gw_identity: Path
    trusted_dir: Path

    def node(self) -> config_mod.Config:
        return config_mod.load(str(self.node_cfg))

    def gateway(self) -> config_mod.Config:
        return config_mod.load(str(self.gw_cfg))

    def node_ledger(self) -> Ledger:
        return Ledger(self.node().ledger_path)

    def gw_ledger(self) -> Ledger:
        return Ledger(self.gateway().ledger_path)

    def seal_keys(self):
        return seal_keys(keys_config(self.node()))

    def open_keys(self):
        return open_keys(keys_config(self.gateway()))

    @property
    def node_pub(self) -> Path:
        return Path(f"{self.node_key}.pub")

    @property
    def outbox(self) -> Path:
        return self.root / "node-state" / "outbox"

    @property
    def staging(self) -> Path:
        return self.root / "gw-state" / "staging"

    @property
    def quarantine(self) -> Path:
        return self.root / "gw-state" / "quarantine"


def make_site(root: Path, recipients_extra: list[str] | None = None) -> Site:
    """Keys made the way an operator would: the node's with `tfwb-agent keys init --node`,
    the gateway's identity with the stock `age-keygen`."""
    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys"
    keys.mkdir()
    gw_identity = keys / "gateway.agekey"
    subprocess.run(["age-keygen", "-o", str(gw_identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(gw_identity)], check=True, capture_output=True,
                               text=True).stdout.strip()
    node_key = keys / "node.key"
    trusted = root / "trusted"
    trusted.mkdir()
    recips = [recipient, *(recipients_extra or [])]
    node_cfg = root / "node.toml"
    node_cfg.write_text(
        f'state_dir = "{root}/node-state"\nnode_name = "gpu01"\n[keys]\nnode_key = "{node_key}"\n'
        f"recipients = {recips!r}\n".replace("'", '"'))
    gw_cfg = root / "gw.toml"
    gw_cfg.write_text(
        f'state_dir = "{root}/gw-state"\nnode_name = "gateway"\n[keys]\nidentity = "{gw_identity}"\n'
        f'trusted_nodes = ["{trusted}/*.pub"]\n')
    agent(node_cfg, "keys", "init", "--node")
    shutil.copy(f"{node_key}.pub", trusted / "gpu01.pub")
    return Site(root, node_cfg, gw_cfg, node_key, gw_identity, trusted)


def tool_list(bundle: Path, identity: Path) -> list[str]:
    """`age -d -i IDENTITY BUNDLE | zstd -d | tar -t`, the operator's way in."""
    cmd = f"age -d -i '{identity}' '{bundle}' | zstd -d -q | tar -tf -"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def minisign_ok(bundle: Path, pub: Path) -> bool:
    return subprocess.run(["minisign", "-Vm", str(bundle), "-p", str(pub), "-q"], capture_output=True).returncode == 0


def all_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*")) if d.exists() else []


def flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def resign(bundle: Path, node_key: Path, comment_from: Path | None = None) -> None:
    """Sign ``bundle`` again with the node key, keeping the trusted comment of ``comment_from``
    (a signature file): models a damaged bundle that a trusted node itself signed."""
    sk = minisign.parse_secret_key(node_key.read_text())
    old = minisign.parse_signature((comment_from or Path(f"{bundle}.minisig")).read_text())
    with open(bundle, "rb") as f:
        digest = minisign.hash_file(f)
    Path(f"{bundle}.minisig").write_text(minisign.sign_digest(sk, digest, old.trusted_comment).to_file())


def craft_bundle(out: Path, node_key: Path, recipient: str, good: dict[str, bytes],
                 extra: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], run_id: str = "crafted1",
                 manifest_override: dict[str, bytes] | None = None) -> dict:
    """A properly signed and encrypted bundle whose tar holds MANIFEST.json, the ``good`` members
    (listed in the manifest) and then the ``extra`` tar members (not listed)."""
    run_dir = "offline-run-20260101_000000-" + run_id
    listed = manifest_override or good
    import hashlib
    members = [mf.Member(f"{run_dir}/{n}", len(b), hashlib.sha256(b).hexdigest()) for n, b in listed.items()]
    bundle_id = os.urandom(8).hex()
    man = mf.build(bundle_id=bundle_id, run=mf.RunIdentity(run_id, "p", None, "0.31.0"), run_dir_name=run_dir,
                   segment=mf.Segment(0), log_name=None, log_size=None, members=members, skipped=[],
                   redaction={}, source_node="gpu01", node_key_id="0", created="2026-01-01T00:00:00Z",
                   agent_version="test")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        mb = mf.encode(man)
        ti = tarfile.TarInfo(mf.MANIFEST_NAME)
        ti.size = len(mb)
        tf.addfile(ti, io.BytesIO(mb))
        for n, b in good.items():
            ti = tarfile.TarInfo(f"{run_dir}/{n}")
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
        for item in extra:
            ti, body = item if isinstance(item, tuple) else (item, b"")
            tf.addfile(ti, io.BytesIO(body) if body else None)
    ct = pyrage.encrypt(zstandard.ZstdCompressor(level=3).compress(raw.getvalue()),
                        [agekeys.parse_recipient(recipient)])
    out.write_bytes(ct)
    sk = minisign.parse_secret_key(node_key.read_text())
    facts = mf.SignedFacts(bundle_id, man["content_id"], run_id, 0)
    sig = minisign.sign_digest(sk, __import__("hashlib").blake2b(ct, digest_size=64).digest(),
                               facts.trusted_comment(0, out.name))
    Path(f"{out}.minisig").write_text(sig.to_file())
    return man


def recipient_of(identity: Path) -> str:
    return subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                          text=True).stdout.strip()


def site_redact_secret(site_root: Path) -> Path:
    """A fresh 0600 site secret for keyed tags under ``site_root/keys`` (redact.secret_file)."""
    secret = Path(site_root) / "keys" / "redact.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    return secret
