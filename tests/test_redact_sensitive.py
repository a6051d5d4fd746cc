"""A fresh run written through the trainer plugin: keys it declared sensitive are hashed even
under a policy that keeps everything; `tfwb-agent redact` shows and writes the result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import built_once
from redact_helpers import all_files, png_tag
from tfwb_agent.redact.policy import parse_policy
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import read_records

WRITER = r'''
import os, sys
os.environ["WANDB_MODE"] = "offline"; os.environ["WANDB_SILENT"] = "true"
import numpy as np, wandb, tfwb_trainer
run = tfwb_trainer.init(project="sens", config={"lr": 0.1, "cache": "/home/bob/cache/x"},
                        sensitive=["scans/*", "patient_score"], runs_dir=sys.argv[1], id="sensrun1")
s = tfwb_trainer.current()
for step in range(5):
    s.log({"loss": 1.0 / (step + 1), "patient_score": 40.0 + step}, step=step)
img = (np.random.default_rng(1).random((8, 6, 3)) * 255).astype("uint8")
s.log_media({"scans/ct": wandb.Image(img), "public/chart": wandb.Image(img[:, ::-1])})
tfwb_trainer.finish()
print("DIR", os.path.dirname(run.dir), flush=True)
'''

KEEP_ALL = {"rule": [{"key": "*", "media": ["any"], "action": "keep"}], "config_keys": []}


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run, written once per session for every worker; the tests only read it."""
    def write(root: Path) -> str:
        proc = subprocess.run([sys.executable, "-c", WRITER, str(root)], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [x for x in proc.stdout.splitlines() if x.startswith("DIR ")][-1][4:]

    return Path(built_once(tmp_path_factory, "sensitive-run", write))


def _history(run_dir: Path) -> list[dict]:
    rows = []
    for _, rec in read_records(next(run_dir.glob("*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for it in rec.history.item:
                key = it.key or "/".join(it.nested_key)
                row[key] = it.value_json
            rows.append(row)
    return rows


def test_declared_sensitive_keys_are_hashed_whatever_the_policy(fresh_run: Path, tmp_path: Path) -> None:
    dst = tmp_path / fresh_run.name
    report = redact_run(fresh_run, dst, parse_policy("t", KEEP_ALL), b"sensitive-test-secret-0123456789", lambda p: Path(p))
    assert set(report.sensitive_keys) >= {"scans/*", "patient_score"}
    orig, red = _history(fresh_run), _history(dst)
    assert len(orig) == len(red) == 5   # the media join the last step's row
    for o, r in zip(orig, red):
        if "loss" in o:
            assert r["loss"] == o["loss"]
        if "patient_score" in o:
            assert json.loads(r["patient_score"]).startswith("hash:")
    src_imgs = {p.name: p.read_bytes() for p in (fresh_run / "files" / "media" / "images").rglob("*.png")}
    out_imgs = {p.relative_to(dst / "files").as_posix(): p.read_bytes()
                for p in (dst / "files" / "media" / "images").rglob("*.png")}
    scans = [k for k in out_imgs if "/scans/" in k]
    public = [k for k in out_imgs if "/public/" in k]
    assert len(scans) == 1 and png_tag(out_imgs[scans[0]]) is not None     # hashed: sensitive
    assert len(public) == 1 and out_imgs[public[0]] in src_imgs.values()     # kept: the rule said so
    assert not any(b in out_imgs[scans[0]] for b in src_imgs.values())


def test_cli_dry_run_and_out(fresh_run: Path, tmp_path: Path) -> None:
    key = tmp_path / "redact.key"
    key.write_bytes(b"cli-test-secret-0123456789abcdef")
    key.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[redact]\nsecret_file = "{key}"\n')
    base = [sys.executable, "-m", "tfwb_agent", "--config", str(cfg), "redact"]
    dry = subprocess.run(base + ["--dry-run", str(fresh_run)], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] is True
    by_key = {(m["key"], m["action"]): m["items"] for m in shown["report"]["media_by_key"]}
    assert by_key[("scans/ct", "hash")] == by_key[("public/chart", "hash")] >= 1  # default policy hashes all
    assert "/home/bob" not in dry.stdout and not (tmp_path / "out").exists()
    out = subprocess.run(base + ["--out", str(tmp_path / "out"), str(fresh_run)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dst = tmp_path / "out" / fresh_run.name
    assert next(dst.glob("*.wandb")).is_file()
    for f in all_files(dst):
        assert b"/home/bob" not in f.read_bytes(), f
    assert json.loads(out.stdout)["report"] == shown["report"] | {"bytes": json.loads(out.stdout)["report"]["bytes"]}
    again = subprocess.run(base + ["--out", str(tmp_path / "out"), str(fresh_run)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr


NESTED_WRITER = r'''
import os, sys
os.environ["WANDB_MODE"] = "offline"; os.environ["WANDB_SILENT"] = "true"
import numpy as np, wandb, tfwb_trainer
run = tfwb_trainer.init(project="sens", sensitive=["patient"], runs_dir=sys.argv[1])
s = tfwb_trainer.current()
s.log({"patient": {"id": "P7204", "age": 71265}, "loss": 0.5}, step=1)
s.log({"patient": wandb.Histogram(np.array([71265.0, 71266.0])), "loss": 0.25}, step=2)
tfwb_trainer.finish()
print("DIR", os.path.dirname(run.dir), flush=True)
'''


def test_a_dict_or_histogram_logged_under_a_sensitive_key_is_hashed(tmp_path: Path) -> None:
    """Found by a tester: ``sensitive=["patient"]`` and ``log({"patient": {"id": "P7204"}})``:
    wandb 0.31 writes the dict as nested items ``patient.id``, which the glob ``patient`` did not
    match, and the id left; so did a Histogram's bins (the data's range)."""
    from tfwb_agent.redact.policy import DEFAULT_POLICY
    (tmp_path / "runs").mkdir()
    proc = subprocess.run([sys.executable, "-c", NESTED_WRITER, str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    src = Path([x for x in proc.stdout.splitlines() if x.startswith("DIR ")][-1][4:])
    assert b"P7204" in next(src.glob("*.wandb")).read_bytes()
    dst = tmp_path / "out" / src.name
    redact_run(src, dst, DEFAULT_POLICY, b"k" * 32, lambda p: Path(p))
    leaked = [str(f) for f in all_files(dst) if b"P7204" in f.read_bytes() or b"71265" in f.read_bytes()]
    assert not leaked, leaked
    assert [row["loss"] for row in _history(dst)] == ["0.5", "0.25"]      # the rest as it was


@pytest.mark.parametrize("glob", ["patient", "patient/*", "patient/id", "patient.*", "patient.id"])
def test_every_way_of_writing_a_nested_keys_glob_names_it(glob: str) -> None:
    from tfwb_agent.redact.items import sensitive_path
    from tfwb_agent.redact.policy import is_sensitive
    asks = lambda key: is_sensitive(key, (glob,))  # noqa: E731
    assert sensitive_path(("patient", "id"), asks)
    assert not sensitive_path(("patients", "id"), asks) and not sensitive_path(("_step",), asks)
    assert not sensitive_path(("loss",), asks)
