"""What a third round of testers got through the default policy (real wandb 0.31 and 0.15.12
runs), each fixed and checked here on the scrubber or the choke point, then on a real run:

- a random token after "=" behind a name that says nothing (``-e GITHUB_PAT=…``, a Hydra
  override ``hub.pat=…``, ``--cookie session=…``, ``--resume-from=…``) in the program's argv,
  which wandb records; Atlassian API tokens; Azure DevOps PATs (lower-case base32);
- a token cut short where it is printed (a Keras summary's column: ``dense_ghp_Hwvv…``);
- a git commit that is no commit (a CI job's token exported as ``WANDB_GIT_COMMIT``): it was
  one of the identifiers never scrubbed; an alert's level, the same;
- an artifact's type and distributed id (with ``artifacts = "keep"``): never scrubbed, and
  now refused as a run's own identifiers are;
- ``tfwb-agent redact --out`` leaving the header of a refused run behind.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agent
from redact_helpers import WRITER_PREAMBLE, default_outgoing, history_items, site_tag
from tfwb_agent.redact import meta
from tfwb_agent.redact.errors import RedactError
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secrets import Scrubber, compile_patterns

ALNUM = string.ascii_letters + string.digits
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _rnd(n: int, alphabet: str = ALNUM) -> str:
    """A random token: mixed case and a digit, as one of that alphabet has. Up to 62 characters of
    letters and digits are drawn without repeats, so its spread is a random token's, not left to
    chance (the entropy rule's threshold misses a few in a hundred of 32 drawn with repeats)."""
    rng = secrets.SystemRandom()
    if alphabet == ALNUM and n <= len(ALNUM):
        return "".join(rng.sample("aZ7", 3) + rng.sample([c for c in ALNUM if c not in "aZ7"], n - 3))
    return ("aZ7" if alphabet == ALNUM else "a7b") + "".join(rng.choice(alphabet) for _ in range(n - 3))


def _scrubber() -> Scrubber:
    return Scrubber(compile_patterns(), site_tag, True)


def _gone(secret: str, new: str) -> bool:
    """No 12-character piece of ``secret`` is left in ``new``."""
    return not any(secret[i:i + 12] in new for i in range(max(1, len(secret) - 11)))


def _atlassian() -> str:
    return "ATATT3xFfGF0" + _rnd(180, ALNUM + "-_") + "=" + secrets.token_hex(4).upper()


# -- tokens in argv and text -------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: ["-e", "GITHUB_PAT=" + _rnd(40)],
    lambda: ["hub.pat=" + _rnd(40)],
    lambda: ["--cookie", "session=" + _rnd(32)],
    lambda: ["--resume-from=" + _rnd(40)],
    lambda: ["--jira", _atlassian()],
    lambda: ["--pat", _rnd(52, BASE32)],
    lambda: ["-e", "AZURE_DEVOPS_EXT_PAT=" + _rnd(52, BASE32)],
    lambda: ["--github-pat", "short-pat-value-1"],
], ids=["env-line", "hydra-override", "cookie", "flag-equals", "atlassian", "ado-pat-flag", "ado-pat-env",
        "pat-flag"])
def test_a_token_in_argv_goes_whatever_names_it(make):
    args = make()
    secret = args[-1].split("=", 1)[-1]
    new = default_outgoing(RedactionReport()).args(args, "metadata")
    assert _gone(secret, " ".join(new)), new


@pytest.mark.parametrize("text", [
    "dense_ghp_{t}… (Dense)   (None, 10)   650",
    "glpat-{t}…",
    "using github_pat_{t}",
])
def test_a_vendor_token_cut_short_is_still_known_by_its_prefix(text):
    t = _rnd(18)
    new, counts = _scrubber().scrub(text.format(t=t))
    assert t[:12] not in new and counts, new


@pytest.mark.parametrize("text", [
    "epoch 3/10 - val_loss=0.231 - lr=0.0003", "hub.model_id=bert-base-uncased",
    "saved ModelCheckpointBestValidationLossEpoch=12", "spatial_dropout pat_count=3",
    "https://example.org/docs?page=installation_and_configuration_guide",
    "layer conv2d_transpose_upsampling_block_decoder_stage_four ok",
])
def test_ordinary_lines_with_equals_signs_stay(text):
    assert _scrubber().scrub(text) == (text, {})


# -- fields never scrubbed: now held to their shape, or refused ---------------------------------

def test_a_commit_leaves_only_as_a_commit_and_an_alert_level_only_as_a_level():
    from wandb.proto import wandb_internal_pb2 as pb

    commit = secrets.token_hex(20)
    token = "ghp_" + _rnd(36)
    rep = RedactionReport()
    out = default_outgoing(rep)
    for value, expected in ((commit, commit), (token, ""), ("main", "")):
        run, environment = pb.Record(), pb.Record()   # (one record type per record)
        run.run.git.commit = value
        environment.environment.git.commit = value
        out.message(run, "metadata")
        out.message(environment, "metadata")
        assert (run.run.git.commit, environment.environment.git.commit) == (expected, expected)
    rec = pb.Record()
    rec.alert.title, rec.alert.level = "t", token
    out.message(rec, "alerts")
    assert rec.alert.level == "INFO"
    rec.alert.level = "WARN"
    out.message(rec, "alerts")
    assert rec.alert.level == "WARN"
    assert rep.secrets["unexpected_shape"] == 5


@pytest.mark.parametrize("field", ["type", "distributed_id"])
def test_an_artifact_whose_type_or_distributed_id_holds_a_token_is_refused(field):
    from wandb.proto import wandb_internal_pb2 as pb

    art = pb.ArtifactRecord(run_id="abc123", project="p", entity="e", type="dataset", name="a")
    setattr(art, field, "t-ghp_" + _rnd(36))
    with pytest.raises(RedactError) as err:
        meta.refuse_secret_routing(art, _scrubber().routing_rules, "artifact")
    assert "ghp_" not in str(err.value) and field.replace("_", " ") in str(err.value)
    setattr(art, field, "dataset" if field == "type" else "shard-0")
    meta.refuse_secret_routing(art, _scrubber().routing_rules, "artifact")  # an ordinary one leaves


# -- the real thing ---------------------------------------------------------------------------

WRITER = WRITER_PREAMBLE + r'''import wandb
run = wandb.init(dir=root, project="env-leaks")
print("Layer (type)                Output Shape    Param #", flush=True)
print("dense_" + c["cut"] + "… (Dense)   (None, 10)      650", flush=True)
run.log({"loss": 0.25, "acc": 0.75})
run.finish()
'''


def test_a_real_run_carries_none_of_them_out(tmp_path):
    from tfwb_agent.redact.policy import DEFAULT_POLICY
    from tfwb_agent.redact.run import redact_run

    c = {"pat": _rnd(40), "hydra": _rnd(40), "cookie": _rnd(32), "atl": _atlassian(), "ado": _rnd(52, BASE32),
         "commit": "ghp_" + _rnd(36), "cut": "ghp_" + _rnd(20)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c), WANDB_GIT_COMMIT=c["commit"])
    argv = ["-e", "GITHUB_PAT=" + c["pat"], "hub.pat=" + c["hydra"], "--cookie", "session=" + c["cookie"],
            "--jira", c["atl"], "--pat", c["ado"]]
    p = subprocess.run([sys.executable, "-c", WRITER, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    src = b"".join(f.read_bytes() for f in run_dir.rglob("*") if f.is_file())
    assert all(v.encode() in src for v in c.values()), [k for k, v in c.items() if v.encode() not in src]

    out = tmp_path / "out" / run_dir.name
    rep = redact_run(run_dir, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q))
    blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file()) + json.dumps(rep.to_dict()).encode()
    assert not [k for k, v in c.items() if not _gone(v, blob.decode("utf-8", "replace"))]
    history = {"/".join(k): v for k, v in history_items(out).items()}
    assert (history["loss"], history["acc"]) == ("0.25", "0.75")      # the metrics still plot


def test_redact_out_leaves_nothing_of_a_refused_run(tmp_path):
    """The run's id holds a token: refused, and no part of a copy (its header names the run)
    is left in --out."""
    c = {"cut": "x"}
    token = "ghp_" + _rnd(36)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c), WANDB_RUN_ID=token)
    p = subprocess.run([sys.executable, "-c", WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    secret = tmp_path / "redact.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\n[redact]\nsecret_file = "{secret}"\n')
    out = tmp_path / "out"
    proc = agent(cfg, "redact", "--out", str(out), str(run_dir), check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "run id matches the github_token rule" in said, said
    assert token not in said and "Traceback" not in said
    assert not out.exists()


def test_a_secret_in_an_artifacts_name_or_alias_leaves_as_a_name_w_and_b_accepts():
    """Scrubbed as text, ``[redacted:github_token:…]`` holds a ":", which W&B refuses in an alias
    (and the run would never be delivered): names and aliases get the marker that is a name."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.artifacts._validators import validate_aliases, validate_artifact_name

    token = "ghp_" + _rnd(36)
    rec = pb.Record()
    art = rec.artifact
    art.run_id, art.project, art.entity, art.type = "abc123", "p", "e", "model"
    art.name = f"model-{token}"
    art.aliases.extend(["best", token])
    default_outgoing(RedactionReport()).message(rec, "artifacts")
    assert token[4:16] not in str(rec)
    validate_artifact_name(art.name)
    validate_aliases(list(art.aliases))
    assert all(":" not in a and "/" not in a for a in art.aliases) and art.aliases[0] == "best"


ARTIFACT_WRITER = WRITER_PREAMBLE + r'''import wandb
run = wandb.init(dir=root, project="kept-artifact")
note = os.path.join(root, "notes.txt")
with open(note, "w") as f:
    f.write("trained by the pipeline\napi_key = " + c["key"] + "\ntoken " + c["tok"] + "\n")
art = wandb.Artifact("notes", type="dataset")
art.add_file(note)
run.log_artifact(art)
run.log({"loss": 0.5})
run.finish()
'''


def test_a_kept_artifacts_text_file_is_scrubbed_under_scrub_files_and_its_digest_follows(tmp_path):
    """With ``artifacts = "keep"`` an artifact's files are copied; a text file among them is
    scrubbed as files/' text is when the policy says ``scrub_files`` (before, it left as written),
    and the manifest's digest is the scrubbed file's (wandb sync checks it)."""
    import base64
    import hashlib

    from tfwb_agent.redact.policy import parse_policy
    from tfwb_agent.redact.run import redact_run
    from tfwb_agent.wandb_log import read_records

    c = {"key": "Zq" + _rnd(22), "tok": "ghp_" + _rnd(36)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c))
    p = subprocess.run([sys.executable, "-c", ARTIFACT_WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    for scrub_files in (True, False):
        out = tmp_path / f"out-{scrub_files}" / run_dir.name
        policy = parse_policy("t", {"artifacts": "keep", "scrub_files": scrub_files})
        redact_run(run_dir, out, policy, os.urandom(32), lambda q: Path(q))
        (staged,) = [f for f in out.rglob("notes.txt") if "_staging" in f.parts]
        text = staged.read_text()
        assert "trained by the pipeline" in text
        if scrub_files:
            assert c["key"] not in text and c["tok"][4:16] not in text, text
        else:
            assert c["key"] in text    # the site kept artifacts as they are, and did not ask to scrub
        (entry,) = [e for _, rec in read_records(next(out.glob("run-*.wandb")))
                    if rec.WhichOneof("record_type") == "artifact" for e in rec.artifact.manifest.contents]
        assert entry.digest == base64.b64encode(hashlib.md5(staged.read_bytes()).digest()).decode()
        assert entry.size == staged.stat().st_size
