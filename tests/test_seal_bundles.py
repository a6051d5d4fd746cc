"""Sealing corpus runs: the stock age, zstd, tar and minisign open and verify every bundle."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from tfwb_agent import runs
from tfwb_agent.seal import RunIdentity, Segment, open_bundle, seal_run
from tfwb_agent.seal import manifest as mf

from conftest import agent
from seal_helpers import corpus_run_dirs, make_site, minisign_ok, tool_list


def test_every_corpus_run_seals_and_opens_with_stock_tools(corpus: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    dirs = corpus_run_dirs(corpus)
    # A link inside a run directory is never followed into the bundle.
    os.symlink("/etc/passwd", dirs["3salp52t"] / "files" / "leak.txt")
    sealed = {}
    for rid, d in dirs.items():
        out = json.loads(agent(site.node_cfg, "seal", str(d)).stdout)
        assert out["run_id"] == rid and out["reused"] is False
        sealed[rid] = out
    bundles = sorted(site.outbox.glob("*.tar.zst.age"))
    assert [b.name for b in bundles] == sorted(f"{rid}-0.tar.zst.age" for rid in dirs)
    for rid, d in dirs.items():
        b = Path(sealed[rid]["bundle"])
        assert minisign_ok(b, site.node_pub)
        names = tool_list(b, site.gw_identity)
        assert names[0] == "MANIFEST.json"
        # Every regular file of the run, nothing else, under the run directory's name.
        expect = sorted(f"{d.name}/{p.relative_to(d)}" for p in d.rglob("*") if p.is_file() and not p.is_symlink())
        assert sorted(names[1:]) == expect
        # Extracted by the stock tools, every byte equals the original and the manifest's hash.
        x = tmp_path / f"x-{rid}"
        x.mkdir()
        subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"age -d -i '{site.gw_identity}' '{b}' | zstd -d -q | tar -xf - -C '{x}'"], check=True)
        man = json.loads((x / "MANIFEST.json").read_text())
        assert man["run"]["run_id"] == rid and man["source_node"] == "gpu01"
        assert man["segment"] == {"number": 0, "byte_start": 0, "byte_end": (d / f"run-{rid}.wandb").stat().st_size,
                                  "log": f"{d.name}/run-{rid}.wandb"}
        for e in man["members"]:
            data = (x / e["name"]).read_bytes()
            assert data == (d / e["name"].split("/", 1)[1]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["size"]
    man = json.loads(subprocess.run(
        ["bash", "-c", f"age -d -i '{site.gw_identity}' '{sealed['3salp52t']['bundle']}' | zstd -d -q | tar -xOf - MANIFEST.json"],
        capture_output=True, text=True, check=True).stdout)
    assert {"name": "files/leak.txt", "why": "symlink (never followed)"} in man["skipped"]

    # Sealing the same content again: the same bundle (idempotent), and from a fresh state
    # directory a new bundle with a new id but the same content id.
    again = json.loads(agent(site.node_cfg, "seal", str(dirs["itokze55"])).stdout)
    assert again["reused"] is True and again["bundle_id"] == sealed["itokze55"]["bundle_id"]
    other = make_site(tmp_path / "site2")
    fresh = json.loads(agent(other.node_cfg, "seal", str(dirs["itokze55"])).stdout)
    assert fresh["bundle_id"] != sealed["itokze55"]["bundle_id"]
    assert fresh["content_id"] == sealed["itokze55"]["content_id"]
    led = site.node_ledger()
    rows = led.db.execute("SELECT run_id, state, run_key FROM bundles ORDER BY run_id").fetchall()
    assert [(r["run_id"], r["state"]) for r in rows] == sorted((rid, "sealed") for rid in dirs)
    assert all(r["run_key"] for r in rows)


def test_segment_byte_range_limits_the_log_and_images_are_stored(corpus: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    d = corpus_run_dirs(corpus)["3salp52t"]
    f = runs.inspect(d)
    ident = RunIdentity(f.run_id, f.project, f.entity, f.wandb_version)
    cfg, led = site.node(), site.node_ledger()
    s1 = seal_run(cfg, site.seal_keys(), led, d, ident, Segment(1, 0, 65536), {"policy": "p1"})
    assert s1.path.name == "3salp52t-1.tar.zst.age" and s1.byte_end == 65536
    opened = open_bundle(s1.path, site.open_keys())
    log = next(m for m in opened.members if m["name"].endswith(".wandb"))
    assert log["size"] == 65536
    with open(d / "run-3salp52t.wandb", "rb") as fh:
        assert log["sha256"] == hashlib.sha256(fh.read(65536)).hexdigest()
    assert opened.manifest["redaction"] == {"policy": "p1"}
    # PNG members come last, in raw (stored) zstd frames: their bytes appear verbatim in the
    # decrypted stream, which a compressed frame would not show.
    names = [m["name"] for m in opened.members]
    pngs = [n for n in names if n.endswith(".png")]
    assert pngs and names[-len(pngs):] == pngs
    plain = subprocess.run(["age", "-d", "-i", str(site.gw_identity), str(s1.path)], capture_output=True, check=True).stdout
    png = (d / pngs[0].split("/", 1)[1]).read_bytes()
    assert png[:4096] in plain
    assert plain.count(b"\x28\xb5\x2f\xfd") >= 2  # more than one zstd frame
    # A log shorter than the range asked for cannot be sealed.
    import pytest
    from tfwb_agent.seal import SealError
    with pytest.raises(SealError, match="fewer than"):
        seal_run(cfg, site.seal_keys(), led, d, ident, Segment(2, 0, 10**9), {})
    assert not (site.outbox / "3salp52t-2.tar.zst.age").exists()
    assert not [p for p in site.outbox.iterdir() if p.name.startswith(".tmp-")]
    # And the segment's content id differs from the whole run's.
    s0 = seal_run(cfg, site.seal_keys(), led, d, ident, 0, {})
    assert s0.content_id != s1.content_id
    assert mf.SignedFacts.from_comment(open_bundle(s0.path, site.open_keys()).verified.signature.trusted_comment).segment == 0


def test_an_extraction_is_fsynced_unless_it_is_a_work_copy(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """An import's staging is the only copy once the medium is gone: every file and directory of
    it reaches the disk before it is named. Delivery's work copy is removed after its upload and
    opened afresh after a crash: none of it is fsynced (its fsyncs took the disk from the
    server's database writes)."""
    site = make_site(tmp_path / "site")
    d = corpus_run_dirs(corpus)["3salp52t"]
    f = runs.inspect(d)
    sealed = seal_run(site.node(), site.seal_keys(), site.node_ledger(), d,
                      RunIdentity(f.run_id, f.project, f.entity, f.wandb_version), 0, {})
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    for durable in (True, False):
        synced.clear()
        root = tmp_path / f"open-{durable}"
        opened = open_bundle(sealed.path, site.open_keys(), staging_root=root, durable=durable)
        staged = opened.staged
        assert staged is not None and staged.parent == root
        files = {str(p) for p in staged.rglob("*") if p.is_file()}
        dirs = {str(p) for p in staged.rglob("*") if p.is_dir()} | {str(staged), str(root)}
        assert len(files) == len(opened.members) > 3
        now = {_named(s, root, staged) for s in synced}
        if durable:
            assert files | dirs <= now, sorted(files | dirs - now)[:5]
        else:
            assert not {s for s in synced if s.startswith(str(root))}, synced[:5]


def _named(path: str, root: Path, staged: Path) -> str:
    """``path`` as named after the commit: what was fsynced was still under its staging name."""
    if not path.startswith(f"{root}/"):
        return path
    _tmp, _, rest = path[len(f"{root}/"):].partition("/")
    return str(staged / rest) if rest else str(staged)
