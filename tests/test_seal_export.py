"""`export` to removable media: all or nothing, checked copies, a clear message when it is full."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import agent
from fault_helpers import tmpfs
from seal_helpers import all_files, corpus_run_dirs, make_site, minisign_ok


def states(site) -> list[tuple[str, str, object]]:
    return [(r["name"], r["state"], r["exported_at"]) for r in
            site.node_ledger().db.execute("SELECT name, state, exported_at FROM bundles ORDER BY name")]


def seal_padded(site, corpus: Path, megabytes: float) -> None:
    for i, d in enumerate(list(corpus_run_dirs(corpus).values())[:2]):
        (d / "files" / "sample.png").write_bytes(random.Random(i).randbytes(int(megabytes * (1 << 20))))
        agent(site.node_cfg, "seal", str(d))


@pytest.mark.slow(seconds=25)
def test_export_to_a_full_medium_marks_nothing_and_leaves_nothing(corpus: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    seal_padded(site, corpus, 0.7)  # two bundles of ~0.75 MB: more than a 1 MB medium holds
    before = states(site)
    assert [s[1] for s in before] == ["sealed", "sealed"]
    with tmpfs(tmp_path / "usb", "1m") as usb:
        out = agent(site.node_cfg, "export", "--to", str(usb), check=False)
        assert out.returncode != 0
        assert "not enough space" in out.stderr and str(usb) in out.stderr and "nothing was exported" in out.stderr
        assert all_files(usb) == []
    assert states(site) == before
    # Room for the bytes but not for the files (inodes run out mid-copy): same outcome, and
    # the copies already made are removed again.
    with tmpfs(tmp_path / "usb2", "8m", 4) as usb:
        out = agent(site.node_cfg, "export", "--to", str(usb), check=False)
        assert out.returncode != 0
        assert "ran out of space" in out.stderr and "nothing was marked exported" in out.stderr
        assert all_files(usb) == []
    assert states(site) == before
    # With room: every bundle copied, checked, indexed and only then marked.
    with tmpfs(tmp_path / "usb3", "8m") as usb:
        out = json.loads(agent(site.node_cfg, "export", "--to", str(usb)).stdout)
        names = sorted(p.name for p in usb.iterdir())
        assert names == sorted([*(s[0] for s in before), *(f"{s[0]}.minisig" for s in before), "tfwb-index.json"])
        for s in before:
            assert minisign_ok(usb / s[0], site.node_pub)
            assert (usb / s[0]).read_bytes() == (site.outbox / s[0]).read_bytes()
        index = json.loads((usb / "tfwb-index.json").read_text())
        assert sorted(e["name"] for e in index["bundles"]) == [s[0] for s in before]
        assert len(out["exported"]) == 2
        # The gateway imports straight from the medium.
        imp = json.loads(agent(site.gw_cfg, "import", "--json", str(usb)).stdout)
        assert [o["status"] for o in imp] == ["imported", "imported"]
    after = states(site)
    assert [s[1] for s in after] == ["exported", "exported"] and all(s[2] for s in after)
    # Nothing left to export: a second export copies nothing.
    with tmpfs(tmp_path / "usb4", "1m") as usb:
        out = json.loads(agent(site.node_cfg, "export", "--to", str(usb)).stdout)
        assert out["exported"] == [] and all_files(usb) == []
