"""Helpers for the fault-injection tests: runs with fresh ids, sites that seal them, and checks
made with the stock tools (age, zstd, tar, minisign) on what the agent wrote."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyrage
import pytest
import zstandard

from tfwb_agent.seal import agekeys, minisign
from tfwb_agent.seal import manifest as mf
from tfwb_agent.seal.keystore import load_identities, write_file
from tfwb_agent.wandb_log import LogWriter, read_records

from cli_fork import popen
from conftest import CORPUS_RUNS
from seal_helpers import Site, corpus_run_dirs, minisign_ok

HOUR_AGO = time.time() - 3600


def clone_run(src: Path, root: Path, run_id: str) -> Path:
    """A copy of the run ``src`` under ``root`` as the run ``run_id``: its `.wandb` file written
    again record by record with the new id (the torn tail of a crashed run is left out), its
    files copied; every mtime an hour back, so it counts as ended."""
    dst = root / f"offline-run-20260101_000000-{run_id}"
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.wandb"))
    (src_log,) = src.glob("run-*.wandb")
    with open(dst / f"run-{run_id}.wandb", "wb") as f:
        w = LogWriter(f)
        for _offset, rec in read_records(src_log):
            if rec.WhichOneof("record_type") == "run":
                rec.run.run_id = run_id
            w.write(rec)
    for p in [dst, *dst.rglob("*")]:
        if not p.is_symlink():
            os.utime(p, (HOUR_AGO, HOUR_AGO))
    return dst


def many_runs(corpus: Path, n: int, prefix: str = "f") -> dict[str, Path]:
    """``n`` runs with distinct ids (``<prefix>0000``...) cloned from the corpus runs in turn,
    in ``corpus/many`` (the corpus's artifact staging files stay where path_map says)."""
    sources = list(corpus_run_dirs(corpus).values())
    root = corpus / "many"
    root.mkdir(exist_ok=True)
    return {rid: clone_run(sources[i % len(sources)], root, rid)
            for i in range(n) for rid in [f"{prefix}{i:04d}x"]}


def node_keys(node_key: Path) -> None:
    """What `tfwb-agent keys init --node` writes (its own functions, without a process start)."""
    sk = minisign.generate()
    write_file(node_key, sk.to_file(), 0o600)
    write_file(Path(f"{node_key}.pub"), sk.public().to_file(), 0o644)


def gateway_site(root: Path) -> Site:
    """A node's keys and a gateway that trusts the node (``seal_helpers.make_site``'s layout, the
    keys made in this process: the tests here start enough processes of their own)."""
    keys = root / "keys"
    trusted = root / "trusted"
    keys.mkdir(parents=True)
    trusted.mkdir()
    gw_identity = keys / "gateway.agekey"
    write_file(gw_identity, agekeys.identity_file_text(agekeys.generate()), 0o600)
    node_key = keys / "node.key"
    node_keys(node_key)
    shutil.copy(f"{node_key}.pub", trusted / "gpu01.pub")
    gw_cfg = root / "gw.toml"
    gw_cfg.write_text(f'state_dir = "{root}/gw-state"\nnode_name = "gateway"\n[keys]\nidentity = "{gw_identity}"\n'
                      f'trusted_nodes = ["{trusted}/*.pub"]\n')
    return Site(root, root / "node.toml", gw_cfg, node_key, gw_identity, trusted)


def recipient_of(site: Site) -> str:
    return str(agekeys.recipients_of(load_identities(site.gw_identity))[0])


def sealing_site(root: Path, runs_root: Path, node_name: str = "gpu01", keys_from: Site | None = None,
                 lease_seconds: float | None = None, extra: str = "", map_root: Path | None = None) -> Site:
    """A node (and its gateway) whose config watches ``runs_root`` and may seal: keys, a site
    secret for keyed tags; path_map "/runs" is ``map_root`` (default: ``runs_root``).
    ``keys_from``: a second node of the same site (its own state and key, the same gateway)."""
    if keys_from is None:
        site = gateway_site(root)
    else:
        root.mkdir(parents=True)
        site = Site(root, root / "node.toml", keys_from.gw_cfg, root / "node.key", keys_from.gw_identity,
                    keys_from.trusted_dir)
        node_keys(site.node_key)
        shutil.copy(f"{site.node_key}.pub", site.trusted_dir / f"{node_name}.pub")
    secret = root / "redact.key"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o600)
    watch = f"lease_seconds = {lease_seconds}\n" if lease_seconds is not None else ""
    site.node_cfg.write_text(
        f'state_dir = "{root}/node-state"\nnode_name = "{node_name}"\n'
        f'[watch]\nroots = ["{runs_root}"]\nquiet_seconds = 1\nreconcile_seconds = 1\n{watch}'
        f'[path_map]\n"/runs" = "{map_root or runs_root}"\n'
        f'[redact]\nsecret_file = "{secret}"\n'
        f'[keys]\nnode_key = "{site.node_key}"\nrecipients = ["{recipient_of(site)}"]\n' + extra)
    return site


def ledger_rows(state_dir: Path, sql: str = "SELECT * FROM runs") -> list[dict]:
    """Rows of a ledger, read directly (a process start per poll would cost more than the test)."""
    path = state_dir / "ledger.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    except sqlite3.OperationalError:  # not made yet
        return []
    finally:
        db.close()


def run_counts(state_dir: Path) -> dict[str, int]:
    return {r["state"]: r["n"] for r in ledger_rows(state_dir, "SELECT state, COUNT(*) AS n FROM runs GROUP BY state")}


def popen_agent(config: Path, *args: str) -> subprocess.Popen:
    return popen([sys.executable, "-m", "tfwb_agent", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, TFWB_AGENT_CONFIG=str(config)))


class HeldLock:
    """The test itself holding a state directory's lock, as another tfwb-agent would."""

    def __init__(self, state_dir: Path, command: str = "held-by-test") -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(state_dir / "state.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()} {command}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def read_line_with(stream, word: str) -> str:
    """Read ``stream`` line by line until one holds ``word`` (the process's own output is the
    synchronisation); fail if the stream ends first."""
    seen = []
    for line in stream:
        seen.append(line)
        if word in line:
            return line
    raise AssertionError(f"the output ended without {word!r}:\n{''.join(seen)[-3000:]}")


def open_with_tools(bundle: Path, identity: Path, pub: Path, out: Path) -> dict:
    """Verify ``bundle`` with stock minisign, open it with age | zstd | tar into ``out``, and check
    that what it holds is exactly what its manifest lists (every name, size and SHA-256, nothing
    more, nothing less). Returns the manifest."""
    assert minisign_ok(bundle, pub), f"{bundle.name}: the signature does not verify"
    out.mkdir(parents=True)
    subprocess.run(["bash", "-o", "pipefail", "-c",
                    f"age -d -i '{identity}' '{bundle}' | zstd -d -q | tar -xf - -C '{out}'"], check=True)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    listed = {m["name"]: (m["size"], m["sha256"]) for m in manifest["members"]}
    found = {str(p.relative_to(out)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert found == listed, f"{bundle.name}: members differ from the manifest: " \
                            f"missing {sorted(set(listed) - set(found))}, extra {sorted(set(found) - set(listed))}"
    run_dir = out / manifest["run_dir"]
    assert any(run_dir.glob("run-*.wandb")), f"{bundle.name}: no .wandb log"
    assert (run_dir / "files").is_dir(), f"{bundle.name}: no files/ directory"
    return manifest


def sealed_events(state_dir: Path) -> list[dict]:
    """The audit log's 'sealed' lines that made a new bundle (not a reuse of one already there)."""
    log = state_dir / "audit.log"
    lines = [json.loads(x)["event"] for x in log.read_text().splitlines()] if log.exists() else []
    return [e for e in lines if e.get("kind") == "sealed" and not e.get("reused")]


def craft_with_id(out: Path, site: Site, bundle_id: str, run_id: str, files: dict[str, bytes],
                  tail: bytes = b"") -> dict:
    """A bundle that a trusted node signed and encrypted to the gateway, whose manifest and
    signed comment carry ``bundle_id`` as given (any string: the hostile ids under test).
    ``tail``: bytes after the end of the tar archive (what a decompression bomb hides there)."""
    recipient = recipient_of(site)
    run_dir = f"offline-run-20260101_000000-{run_id}"
    members = [mf.Member(f"{run_dir}/{n}", len(b), hashlib.sha256(b).hexdigest()) for n, b in files.items()]
    man = mf.build(bundle_id=bundle_id, run=mf.RunIdentity(run_id, "p", None, "0.31.0"), run_dir_name=run_dir,
                   segment=mf.Segment(0), log_name=None, log_size=None, members=members, skipped=[],
                   redaction={}, source_node="gpu01", node_key_id="0", created="2026-01-01T00:00:00Z",
                   agent_version="test")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, body in [(mf.MANIFEST_NAME, mf.encode(man)),
                           *((f"{run_dir}/{n}", b) for n, b in files.items())]:
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
    ct = pyrage.encrypt(zstandard.ZstdCompressor(level=3).compress(raw.getvalue() + tail),
                        [agekeys.parse_recipient(recipient)])
    out.write_bytes(ct)
    sk = minisign.parse_secret_key(site.node_key.read_text())
    facts = mf.SignedFacts(bundle_id, man["content_id"], run_id, 0)
    sig = minisign.sign_digest(sk, hashlib.blake2b(ct, digest_size=64).digest(), facts.trusted_comment(0, out.name))
    Path(f"{out}.minisig").write_text(sig.to_file())
    return man


@contextlib.contextmanager
def tmpfs(path: Path, size: str, nr_inodes: int | None = None):
    """A small tmpfs at ``path`` for the test: a full disk (or a full medium) really simulated.
    Mounting needs root (CAP_SYS_ADMIN); CI and the development machines run the tests as root.
    A failed mount fails the test, never skips it: a full-disk promise left untested must show."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tfwb-test", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed ({r.stderr.strip() or r.returncode}): this test simulates a full disk "
                    "with a small tmpfs and needs root (CAP_SYS_ADMIN) to mount it; run the suite as root, as CI "
                    "does", pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


def inodes_used(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last byte with one file (returned: delete it to free)."""
    filler = path / "filler"
    block = b"\1" * (1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, block[:size]):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def unprivileged(cmd: list[str]) -> list[str]:
    """As root, drop the capabilities that let root read and write any file, as the agent's own
    user would be without them."""
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd] if os.geteuid() == 0 else cmd


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative name -> SHA-256): to show a tree is byte-identical."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


__all__ = ["CORPUS_RUNS", "clone_run", "many_runs", "sealing_site", "gateway_site", "ledger_rows", "run_counts", "popen_agent", "HeldLock", "read_line_with",
           "open_with_tools", "sealed_events", "craft_with_id", "tree_digest", "tmpfs", "remount", "inodes_used",
           "fill", "unprivileged"]
