"""The leak test and the sync test over every corpus run (real wandb runs, a real server)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from openwandb_server import start_openwandb, wandb_sync
from redact_helpers import (all_files, copy_corpus, corpus_policy, corpus_runs, leaks, map_path_for,
                            png_tag, tree_digest)
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import read_records

SECRET = b"corpus-test-site-secret-0123456789"


@pytest.fixture(scope="module")
def redacted(tmp_path_factory: pytest.TempPathFactory):
    root = copy_corpus(tmp_path_factory.mktemp("corpus") / "runs")
    before = tree_digest(root)
    out = tmp_path_factory.mktemp("redacted")
    results = []
    for src in corpus_runs(root):
        dst = out / src.parent.parent.name / src.name
        report = redact_run(src, dst, corpus_policy(), SECRET, map_path_for(root))
        results.append((src, dst, report))
    return root, before, results


def _metadata_hosts(src: Path) -> set[bytes]:
    """Host and user names the original run recorded (from its own records)."""
    hosts: set[bytes] = set()
    for _, rec in read_records(next(src.glob("*.wandb"))):
        t = rec.WhichOneof("record_type")
        if t == "run" and rec.run.host:
            hosts.add(rec.run.host.encode())
        if t == "environment":
            hosts |= {v.encode() for v in (rec.environment.host, rec.environment.username) if v}
    meta = src / "files" / "wandb-metadata.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        hosts |= {m[k].encode() for k in ("host", "username") if m.get(k)}
    assert hosts, f"{src}: found no host name to look for"
    return hosts


def _quoted(values: set[bytes]) -> list[bytes]:
    # Host names are short ("vm"); look for them as whole values, as JSON and protobuf carry
    # them, so a chance match inside compressed image bytes cannot hide or fake a leak.
    return [b'"' + v + b'"' for v in values] + [b"\x12" + bytes([len(v)]) + v for v in values if len(v) < 128]


def test_no_listed_string_leaves(redacted) -> None:
    root, _, results = redacted
    originals = {p.read_bytes() for p in root.glob("wandb-*/wandb/offline-run-*/files/media/images/**/*.png")}
    assert len(originals) == 9  # the runs share a seed: the same 9 images recur
    for src, dst, report in results:
        hosts = _metadata_hosts(src)
        files = list(all_files(dst))
        assert any(f.suffix == ".wandb" for f in files)
        for f in files:
            data = f.read_bytes()
            found = leaks(data)
            found += [h.decode(errors="replace") for h in hosts
                      for q in _quoted({h}) if q in data]
            assert not found, f"{f.relative_to(dst)} leaks {found}"
            assert data not in originals, f"{f.relative_to(dst)} is an original image"
            for orig in originals:
                assert orig[8:200] not in data, f"{f.relative_to(dst)} holds original image bytes"
        assert not (dst / "logs").exists() and not list(dst.glob("**/debug*.log"))


def test_original_untouched(redacted) -> None:
    root, before, _ = redacted
    assert tree_digest(root) == before


def test_every_reference_rewritten_together(redacted) -> None:
    """Files named by records exist; no record names an original media file or staging path."""
    root, _, results = redacted
    for src, dst, report in results:
        named: set[str] = set()
        for _, rec in read_records(next(dst.glob("*.wandb"))):
            t = rec.WhichOneof("record_type")
            if t == "files":
                named |= {f.path for f in rec.files.files}
            elif t == "history":
                for it in rec.history.item:
                    for v in (it.value_json,):
                        if "media/" in v:
                            val = json.loads(v)
                            paths = val if isinstance(val, list) else [val]
                            named |= {p for p in paths if isinstance(p, str) and p.startswith("media/")}
                            if isinstance(val, dict):
                                named |= {val[k] for k in ("path",) if isinstance(val.get(k), str)}
                                named |= set(val.get("filenames", []))
            elif t == "artifact":
                for e in rec.artifact.manifest.contents:
                    # No path of the node's in the copy: the gateway puts its own run dir in front.
                    assert e.local_path.startswith("/_staging/"), "an artifact record names a node path"
                    data = (dst / e.local_path.lstrip("/")).read_bytes()
                    assert e.size == len(data)
        media = {n for n in named if n.startswith("media/")}
        assert media, f"{src.name}: no media references found"
        for n in media:
            assert (dst / "files" / n).is_file(), f"{src.name}: {n} is named but missing"
            assert not (src / "files" / n).exists(), f"{src.name}: {n} is an original file name"
        on_disk = {p.relative_to(dst / "files").as_posix() for p in (dst / "files" / "media").rglob("*") if p.is_file()}
        assert on_disk == media, f"{src.name}: files nobody names, or names without files"
        assert report.to_dict()["media_by_rule"], "the report counts nothing"


def test_placeholders_same_shape_and_tagged(redacted) -> None:
    from PIL import Image
    root, _, results = redacted
    src, dst, _ = results[0]
    for p in (dst / "files" / "media" / "images").rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (32, 32)
        tag = png_tag(p.read_bytes())
        assert tag is not None and len(tag) == 64


def test_report_names_no_original_value(redacted) -> None:
    _, _, results = redacted
    for _, _, report in results:
        blob = json.dumps(report.to_dict()).encode()
        assert not leaks(blob), leaks(blob)
        assert report.records_out > 100


def _history_rows(server, run_id: str) -> list[dict]:
    p = server.data_dir / "files" / server.entity
    files = list(p.glob(f"*/{run_id}/wandb-history.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_redacted_runs_sync_like_the_originals(redacted, tmp_path: Path) -> None:
    """Originals to one server, redacted copies to another: same rows, same scalars; media
    rows point at placeholders; the table arrives hashed and without the dropped column; and
    nothing the second server stored (database included) carries a listed string."""
    from tfwb_agent.redact.run import relocate_staging
    root, _, results = redacted
    plain = start_openwandb(tmp_path / "plain")
    server = start_openwandb(tmp_path / "redacted")
    try:
        for src, dst, _ in results:
            run_id = src.name.rsplit("-", 1)[1]
            # Sync copies: wandb sync writes into the directory it syncs.
            orig_copy = tmp_path / "orig" / src.name
            shutil.copytree(src, orig_copy, symlinks=True)
            wandb_sync(plain, orig_copy, "ct")
            red_copy = tmp_path / "red" / dst.name
            shutil.copytree(dst, red_copy, symlinks=True)
            relocate_staging(red_copy)   # the copy moved: its artifact files are now here
            proc = wandb_sync(server, red_copy, "ct")
            sql = "SELECT key, step, value FROM metrics WHERE run_id = ? ORDER BY key, step"
            orig_metrics, red_metrics = plain.query(sql, (run_id,)), server.query(sql, (run_id,))
            orig_rows, red_rows = _history_rows(plain, run_id), _history_rows(server, run_id)
            assert len(orig_metrics) >= 400 and len(orig_rows) >= 140  # crashed runs stop near step 150
            assert red_metrics == orig_metrics, proc.stderr[-2000:]
            assert len(red_rows) == len(orig_rows)
            assert [r.get("_step") for r in red_rows] == [r.get("_step") for r in orig_rows]
            media_rows = [r for r in red_rows if "samples/ct" in r]
            assert len(media_rows) == len([r for r in orig_rows if "samples/ct" in r]) >= 2
            for r in media_rows:
                assert r["samples/ct"]["_type"] == "images/separated"
                for name in r["samples/ct"]["filenames"]:
                    stored = next((server.data_dir / "files").glob(f"*/*/{run_id}/{name}"))
                    assert png_tag(stored.read_bytes()) is not None
            table_rows = [r["predictions"] for r in red_rows if "predictions" in r]
            if "finished" in plain.query("SELECT display_name FROM runs WHERE run_id = ?", (run_id,))[0][0]:
                assert len(table_rows) == 1
                stored = next((server.data_dir / "files").glob(f"*/*/{run_id}/{table_rows[0]['path']}"))
                table = json.loads(stored.read_text())
                assert table["columns"] == ["patient_id", "pred", "label"]
                assert all(str(row[0]).startswith("hash:") for row in table["data"])
                assert [row[1:] for row in table["data"]] == [[i % 2, int(i % 3 == 0)] for i in range(20)]
            state = server.graphql("query($p: String!, $e: String!, $r: String!) { project(name: $p, entityName: $e)"
                                   " { run(name: $r) { state summaryMetrics } } }",
                                   {"p": "ct", "e": server.entity, "r": run_id})
            assert state["data"]["project"]["run"] is not None
        server.stop()  # flush the database before reading every byte of it
        plain.stop()
        # The check can fail: the server that got the originals does hold the listed strings.
        assert any(leaks(f.read_bytes()) for f in all_files(plain.data_dir))
        for f in all_files(server.data_dir):
            data = f.read_bytes()
            assert not leaks(data), f"server file {f} leaks {leaks(data)}"
            assert b'"vm"' not in data, f"server file {f} holds the original host name"
    finally:
        plain.stop()
        server.stop()
