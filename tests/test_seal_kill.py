"""SIGKILL the real `tfwb-agent seal` at random moments: the outbox only ever holds whole,
verifiable bundles, and sealing again finishes every run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_fork import popen
from seal_helpers import corpus_run_dirs, make_site, minisign_ok, tool_list

SEED = 20261127
KILLS = 12


def check_outbox(site) -> set[str]:
    """Every bundle under its final name is whole: signature verifies (stock minisign) and the
    stock tools decrypt and list it to the end. Returns the bundle names."""
    names = set()
    for p in site.outbox.iterdir():
        if p.name.startswith(".tmp-") or p.name == ".locks":
            continue  # leftovers of a killed sealer; cleaned at the next start
        if p.name.endswith(".minisig"):
            continue  # a signature alone is not a bundle (checked below for bundles)
        assert p.name.endswith(".tar.zst.age"), p.name
        assert minisign_ok(p, site.node_pub), f"{p.name}: signature does not verify"
        assert tool_list(p, site.gw_identity)[0] == "MANIFEST.json"
        names.add(p.name)
    # The ledger is never ahead of the disk.
    for r in site.node_ledger().db.execute("SELECT name, path, state FROM bundles"):
        assert r["name"] in names, f"ledger says {r['state']} but {r['name']} is not whole in the outbox"
    return names


@pytest.mark.slow(seconds=60)
def test_sigkill_at_random_moments_leaves_only_whole_bundles(corpus: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    site = make_site(tmp_path / "site")
    dirs = list(corpus_run_dirs(corpus).values())[:3]
    # Enough bytes that a seal takes many steps: incompressible "images" and text.
    for i, d in enumerate(dirs):
        media = d / "files" / "media" / "images"
        media.mkdir(parents=True, exist_ok=True)
        (media / "big.png").write_bytes(random.Random(i).randbytes(6 << 20))
        (d / "files" / "big.log").write_text("".join(f"step {n} loss {n * 0.001:.5f}\n" for n in range(150_000)))
    env = dict(os.environ, TFWB_AGENT_CONFIG=str(site.node_cfg))
    kills = finished = 0
    moments: list[tuple[str, int, str]] = []
    attempted: list[tuple[Path, int]] = []
    # Where to kill: on reading the n-th progress event of a kind, over every phase of a seal.
    phases = ["hashed", "write", "packing", "packed", "fsynced", "renamed_sig", "renamed", "recorded"]
    segment = 0
    while kills < KILLS:
        d = rng.choice(dirs)
        phase = rng.choice(phases)
        nth = rng.randint(1, 4) if phase in ("hashed", "packing", "packed") else 1
        segment += 1  # a new bundle each time, so every attempt runs every phase
        attempted.append((d, segment))
        proc = popen([sys.executable, "-m", "tfwb_agent", "seal", "--progress", "--segment",
                                 str(segment), str(d)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        seen, last = 0, ""
        for line in proc.stderr:  # progress is the synchronisation: no sleeps
            if line.startswith("{"):
                last = json.loads(line)["event"]
                seen += last == phase
                if seen >= nth:
                    proc.send_signal(signal.SIGKILL)
                    break
        rc = proc.wait()
        proc.stderr.close()
        if rc == -signal.SIGKILL:
            kills += 1
            moments.append((d.name[-8:], segment, last))
        else:
            assert rc == 0, f"seal exited {rc}"
            finished += 1
        check_outbox(site)
    print("kill moments:", moments, "finished:", finished)
    # The kills landed in many phases, including between the renames and the ledger.
    assert len({m[2] for m in moments}) >= 4, moments
    assert {m[2] for m in moments} & {"fsynced", "renamed_sig", "renamed"}, moments

    # Restart: sealing again finishes every run; nothing temporary or orphaned remains.
    for d, seg in attempted:
        out = subprocess.run([sys.executable, "-m", "tfwb_agent", "seal", "--segment", str(seg), str(d)], env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    names = check_outbox(site)
    want = {(d.name.rsplit("-", 1)[1], seg) for d, seg in attempted}
    assert names == {f"{r}-{seg}.tar.zst.age" for r, seg in want}
    leftovers = [p.name for p in site.outbox.iterdir() if p.name.startswith(".tmp-")
                 or (p.name.endswith(".minisig") and p.name[:-8] not in names)]
    assert leftovers == []
    rows = site.node_ledger().db.execute("SELECT run_id, segment, state FROM bundles").fetchall()
    assert sorted((r["run_id"], r["segment"], r["state"]) for r in rows) == sorted((r, s, "sealed") for r, s in want)
