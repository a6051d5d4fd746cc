"""Import on the gateway: what is accepted, and every way a bundle is refused and quarantined."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tfwb_agent import runs
from tfwb_agent.seal import RunIdentity, minisign, seal_run
from tfwb_agent.seal.carry import import_dir

from conftest import agent
from seal_helpers import (all_files, corpus_run_dirs, craft_bundle, flip, make_site, recipient_of, resign)


@pytest.fixture
def site(tmp_path: Path):
    return make_site(tmp_path / "site")


def seal_one(site, run_dir: Path, media: Path) -> Path:
    f = runs.inspect(run_dir)
    sb = seal_run(site.node(), site.seal_keys(), site.node_ledger(), run_dir,
                  RunIdentity(f.run_id, f.project, f.entity, f.wandb_version), 0, {})
    media.mkdir(exist_ok=True)
    shutil.copy(sb.path, media / sb.path.name)
    shutil.copy(sb.sig_path, media / sb.sig_path.name)
    return media / sb.path.name


def import_only(site, media: Path):
    return import_dir(site.gateway(), site.open_keys(), site.gw_ledger(), media)


def assert_refused(site, outcomes, reason: str) -> None:
    assert [o.status for o in outcomes] == ["refused"], outcomes
    assert outcomes[0].reason == reason, outcomes[0]
    # Nothing staged (no directory, no temporary leftovers); the bundle sits in quarantine.
    assert all_files(site.staging) == []
    q = Path(outcomes[0].quarantined)
    assert json.loads((q / "reason.json").read_text())["reason"] == reason
    assert (q / outcomes[0].name).is_file()
    assert site.gw_ledger().db.execute("SELECT COUNT(*) FROM imports").fetchone()[0] == 0


def test_import_stages_verified_runs_and_refuses_a_replay(corpus: Path, tmp_path: Path, site) -> None:
    dirs = corpus_run_dirs(corpus)
    media = tmp_path / "media"
    for rid in ("itokze55", "s900mviu"):
        seal_one(site, dirs[rid], media)
    proc = agent(site.gw_cfg, "import", str(media), "--json")
    out = json.loads(proc.stdout)
    assert [o["status"] for o in out] == ["imported", "imported"]
    for o in out:
        staged = Path(o["staged"])
        assert staged.parent == site.staging and staged.name == o["bundle_id"]
        (run_dir,) = staged.iterdir()
        src = dirs[o["run_id"]]
        assert run_dir.name == src.name
        for p in src.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert (run_dir / p.relative_to(src)).read_bytes() == p.read_bytes()
        assert o["signer"].startswith("gpu01 (")
    led = site.gw_ledger()
    assert {r["run_id"] for r in led.db.execute("SELECT run_id FROM imports")} == {"itokze55", "s900mviu"}
    assert {r["state"] for r in led.db.execute("SELECT state FROM bundles")} == {"imported"}
    # The same media again: each bundle refused as a replay, staging unchanged.
    before = all_files(site.staging)
    again = agent(site.gw_cfg, "import", str(media), check=False)
    assert again.returncode == 1
    assert again.stdout.count("refused") == 2 and "replay" in again.stdout
    assert all_files(site.staging) == before
    # The same content sealed again elsewhere (a new bundle id) is a replay as well.
    other = make_site(tmp_path / "other")
    shutil.copy(other.node_pub, site.trusted_dir / "gpu02.pub")
    # The second node encrypts to the same gateway.
    cfg_text = other.node_cfg.read_text().replace(recipient_of(other.gw_identity), recipient_of(site.gw_identity))
    other.node_cfg.write_text(cfg_text)
    media2 = tmp_path / "media2"
    seal_one(other, dirs["itokze55"], media2)
    outcomes = import_only(site, media2)
    assert outcomes[0].reason == "replay" and outcomes[0].signer.startswith("gpu02")
    assert all_files(site.staging) == before


def test_damaged_ciphertext_is_refused_wherever_the_damage(corpus: Path, tmp_path: Path, site) -> None:
    run_dir = corpus_run_dirs(corpus)["itokze55"]
    (run_dir / "files" / "blob.bin").write_bytes(random.Random(7).randbytes(300_000))  # several age chunks
    pristine = seal_one(site, run_dir, tmp_path / "pristine")
    data = pristine.read_bytes()
    sig = Path(f"{pristine}.minisig")
    header_end = data.index(b"\n---") + 1
    mac_at = header_end + 5             # inside the header's MAC
    body = data.index(b"\n", header_end) + 1 + 16  # after the payload nonce
    cases = {
        "header": lambda d: flip(d, mac_at),
        "middle": lambda d: flip(d, body + (len(d) - body) // 2),
        "last_chunk": lambda d: flip(d, len(d) - 3),
        "cut_short": lambda d: d[: len(d) - 1000],
    }
    assert len(data) - body > 2 * 65536 + 16  # several chunks: "middle" and "last" differ
    n = 0
    for label, damage in cases.items():
        for resigned in (False, True):
            n += 1
            media = tmp_path / f"m{n}"
            media.mkdir()
            b = media / pristine.name
            b.write_bytes(damage(data))
            shutil.copy(sig, f"{b}.minisig")
            if resigned:  # a trusted node signed the damaged bytes: decryption must catch it
                resign(b, site.node_key, comment_from=sig)
            outcomes = import_only(site, media)
            want = "bad_signature" if not resigned else ("corrupt_header" if label == "header" else "damaged_ciphertext")
            assert_refused(site, outcomes, want)
    # Another X25519 share makes the stanza unopenable: not for this identity. (The share is
    # random: a bit flip can leave base64 altogether, 'A' -> '@', which is a corrupt header
    # instead; so one base64 character is replaced by another.)
    media = tmp_path / "share"
    media.mkdir()
    b = media / pristine.name
    at = data.index(b"X25519 ") + 10
    b.write_bytes(data[:at] + (b"B" if data[at:at + 1] == b"A" else b"A") + data[at + 1:])
    resign(b, site.node_key, comment_from=sig)
    assert_refused(site, import_only(site, media), "not_for_this_identity")
    # The undamaged bundle still imports.
    assert [o.status for o in import_only(site, pristine.parent)] == ["imported"]


def test_unknown_signer_and_wrong_recipient(corpus: Path, tmp_path: Path, site) -> None:
    run_dir = corpus_run_dirs(corpus)["5okzpcus"]
    b = seal_one(site, run_dir, tmp_path / "media")
    stranger = minisign.generate()
    with open(b, "rb") as fh:
        Path(f"{b}.minisig").write_text(minisign.sign_digest(stranger, minisign.hash_file(fh), "x").to_file())
    assert_refused(site, import_only(site, b.parent), "unknown_signer")
    # Sealed for somebody else: signed by a trusted node, encrypted to another identity.
    other = make_site(tmp_path / "other")
    shutil.copy(other.node_pub, site.trusted_dir / "gpu02.pub")
    b2 = seal_one(other, run_dir, tmp_path / "media2")
    assert_refused(site, import_only(site, b2.parent), "not_for_this_identity")
    # `inspect` tells the same, and names the signer.
    out = agent(site.gw_cfg, "inspect", str(b2), check=False)
    assert out.returncode == 1 and json.loads(out.stdout)["refused"] == "not_for_this_identity"
    assert json.loads(out.stdout)["signature"]["signer"].startswith("gpu02")


def _ti(name: str, kind: bytes, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def test_crafted_bundles_with_bad_members_are_refused(tmp_path: Path, site) -> None:
    rcp = recipient_of(site.gw_identity)
    rd = "offline-run-20260101_000000-crafted1"
    escape_rel = tmp_path / "site" / "gw-state" / "escaped.txt"  # where ../../escaped.txt would land
    absolute = tmp_path / "absolute-target.txt"
    good = {"files/output.log": b"fine\n" * 1000}
    cases = {
        "dotdot": [(_ti(f"{rd}/../../escaped.txt", tarfile.REGTYPE, size=6), b"owned\n")],
        "absolute": [(_ti(str(absolute), tarfile.REGTYPE, size=6), b"owned\n")],
        "symlink": [_ti(f"{rd}/files/link", tarfile.SYMTYPE, linkname="/etc/passwd")],
        "hardlink": [_ti(f"{rd}/files/hard", tarfile.LNKTYPE, linkname="/etc/passwd")],
        "device": [_ti(f"{rd}/files/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "fifo": [_ti(f"{rd}/files/fifo", tarfile.FIFOTYPE)],
        "unexpected": [(_ti(f"{rd}/files/extra.txt", tarfile.REGTYPE, size=3), b"hi\n")],
    }
    for n, (label, extra) in enumerate(cases.items()):
        media = tmp_path / f"c-{label}"
        media.mkdir()
        craft_bundle(media / f"crafted{n}-0.tar.zst.age", site.node_key, rcp, good, extra, run_id=f"crafted{n}")
        outcomes = import_only(site, media)
        assert_refused(site, outcomes, "bad_member")
        assert not escape_rel.exists() and not absolute.exists()
    # A member whose bytes differ from the manifest's hash: manifest mismatch.
    media = tmp_path / "c-mismatch"
    media.mkdir()
    craft_bundle(media / "crafted9-0.tar.zst.age", site.node_key, rcp, good, [], run_id="crafted9",
                 manifest_override={"files/output.log": b"other\n" * 1000})
    assert_refused(site, import_only(site, media), "manifest_mismatch")
    # The control: the same crafting with no bad member imports.
    media = tmp_path / "c-good"
    media.mkdir()
    craft_bundle(media / "crafted10-0.tar.zst.age", site.node_key, rcp, good, [], run_id="crafted10")
    assert [o.status for o in import_only(site, media)] == ["imported"]


def test_stock_tar_of_a_crafted_bundle_would_have_escaped(tmp_path: Path, site) -> None:
    """The control for the test above: the crafted member really points outside."""
    rcp = recipient_of(site.gw_identity)
    media = tmp_path / "m"
    media.mkdir()
    rd = "offline-run-20260101_000000-crafted1"
    b = media / "crafted1-0.tar.zst.age"
    craft_bundle(b, site.node_key, rcp, {"a": b"1"}, [(_ti(f"{rd}/../../escaped.txt", tarfile.REGTYPE, size=6), b"owned\n")])
    listing = subprocess.run(["bash", "-c", f"age -d -i '{site.gw_identity}' '{b}' | zstd -d -q | tar -tf -"],
                             capture_output=True, text=True, check=True).stdout
    assert f"{rd}/../../escaped.txt" in listing.splitlines()
