"""A secret in a Table's key never leaves through the name wandb derives from that key.

wandb logs a Table under key K as a run-table artifact named after K: ``run-<id>-K`` (wandb 0.31)
or ``run-<id>-`` + K with everything but letters, digits and ``_`` removed (wandb 0.15, whose
``sdk/data_types/utils.py`` does ``re.sub(r"[^a-zA-Z0-9_]+", "", key)``). The second form of
``tbl_glpat-…`` is ``tbl_glpat…`` without its dash, which no GitLab rule matches: the canary suite
found pieces of such a secret in a sealed wandb 0.15.12 bundle whenever the random tail happened to
look too regular for the high-entropy rule. These logs are written with the agent's LogWriter over
wandb's own Record protobufs, in both naming styles, with a secret that fails the entropy rule and
with random ones; every byte of the output is searched for the secret and any 12 characters of it.
"""
from __future__ import annotations

import json
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from wandb.proto import wandb_internal_pb2 as pb

from canary_helpers import Canaries, Canary, describe, scan_tree

from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import LogWriter, read_records

RUN_ID = "tblname1"
SITE_SECRET = b"table-artifact-name-test-secret-0123456789"
ALNUM = string.ascii_letters + string.digits


def _wandb015_name(key: str) -> str:
    return f"run-{RUN_ID}-{re.sub(r'[^a-zA-Z0-9_]+', '', key)}"


def _wandb031_name(key: str) -> str:
    return f"run-{RUN_ID}-{key}"


STYLES = {"wandb015": _wandb015_name, "wandb031": _wandb031_name}


def write_run(root: Path, key: str, style: str) -> Path:
    """A run that logged one Table under ``key`` at step 0, as wandb writes it."""
    src = root / f"offline-run-20260101_000000-{RUN_ID}"
    table = {"_type": "table", "columns": ["a"], "data": [[2]]}
    media = src / "files" / "media" / "table" / f"{key}_0_0123456789abcdef0123.table.json"
    media.parent.mkdir(parents=True)
    media.write_text(json.dumps(table))
    staged = src / "staging" / f"{key.replace('/', '_')}.table.json"  # wandb's artifact staging copy
    staged.parent.mkdir(parents=True)
    staged.write_text(json.dumps(table))

    recs = []
    run = pb.Record()
    run.run.run_id, run.run.project, run.run.entity = RUN_ID, "tables", "team"
    recs.append(run)
    art = pb.Record()
    a = art.artifact
    a.run_id, a.project, a.type, a.name = RUN_ID, "tables", "run_table", STYLES[style](key)
    a.digest = "0" * 32
    a.aliases.append("latest")
    a.manifest.version = 1
    a.manifest.storage_policy = "wandb-storage-policy-v1"
    e = a.manifest.contents.add()
    e.path, e.local_path, e.digest = f"{key}.table.json", str(staged), "AAAAAAAAAAAAAAAAAAAAAA=="
    recs.append(art)
    hist = pb.Record()
    hist.history.item.add(key="loss", value_json="0.5")
    hist.history.item.add(key=key, value_json=json.dumps({
        "_type": "table-file", "path": media.relative_to(src / "files").as_posix(), "ncols": 1, "nrows": 1,
        "sha256": "0" * 64, "size": media.stat().st_size,
        "artifact_path": f"wandb-client-artifact://abcdef0123456789:latest/{key}.table.json",
        "_latest_artifact_path": f"wandb-client-artifact://abcdef0123456789:latest/{key}.table.json"}))
    hist.history.item.add(key="_step", value_json="0")
    hist.history.step.num = 0
    recs.append(hist)
    ex = pb.Record()
    ex.exit.exit_code = 0
    recs.append(ex)
    with open(src / f"run-{RUN_ID}.wandb", "wb") as f:
        w = LogWriter(f)
        for rec in recs:
            w.write(rec)
    return src


def redacted(root: Path, key: str, style: str) -> tuple[Path, list]:
    src = write_run(root, key, style)
    dst = root / "out" / src.name
    redact_run(src, dst, DEFAULT_POLICY, SITE_SECRET, Path)
    return dst, [rec for _, rec in read_records(next(dst.glob("*.wandb")))]


def check(root: Path, secret: str, key: str, style: str) -> None:
    dst, recs = redacted(root, key, style)
    canary = Canary("table_key", "glpat", "5", "default", [secret])
    hits = scan_tree(Canaries([canary]), dst)
    assert not hits, f"{style}: the table key's secret left:\n" + describe(hits, [canary])
    # The run still holds its table, under the new key, and the artifact is named after that key.
    (hist,) = [r.history for r in recs if r.WhichOneof("record_type") == "history"]
    (new_key,) = [it.key for it in hist.item if it.key not in ("loss", "_step")]
    assert json.loads(next(it.value_json for it in hist.item if it.key == "loss")) == 0.5
    (art,) = [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]
    assert art.name == STYLES[style](new_key), (art.name, new_key)
    assert len(art.manifest.contents) == 1 and art.manifest.contents[0].path.endswith(".table.json")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_regular_looking_secret_in_a_table_key(tmp_path: Path, style: str) -> None:
    """Regular enough that the high-entropy rule passes it over once its dash is gone."""
    secret = "glpat-aaaaBBBB1111aaaaBBBB"
    check(tmp_path, secret, f"tbl_{secret}", style)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=st.text(alphabet=ALNUM, min_size=20, max_size=20), style=st.sampled_from(sorted(STYLES)),
       prefix=st.sampled_from(["tbl_", "val/tbl_", "", "preds "]))
def test_any_gitlab_token_in_a_table_key(tail: str, style: str, prefix: str) -> None:
    secret = f"glpat-{tail}"
    with tempfile.TemporaryDirectory() as tmp:
        check(Path(tmp), secret, prefix + secret, style)
