"""The [redact] policy, its default, the built-in secret patterns and config/metadata rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfwb_agent import config as config_mod
from tfwb_agent.redact import placeholders
from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy, policy_from_config
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secrets import Scrubber, compile_patterns
from tfwb_agent.redact import meta

SECRET = b"policy-test-secret-0123456789abcd"


def scrubber(extra=()) -> Scrubber:
    return Scrubber(compile_patterns(extra), lambda k, v: placeholders.text_tag(SECRET, k, v))


def test_config_file_with_redact_section(tmp_path: Path) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(f'''state_dir = "{tmp_path}/state"
[redact]
secret_file = "{tmp_path}/redact.key"
console = "drop"
config_keys = ["*token*", "data_dir"]
patterns = ['hf_[A-Za-z0-9]{{30,}}']
[[redact.rule]]
key = "samples/*"
media = ["image"]
action = "keep"
[[redact.rule]]
key = "predictions"
media = ["table"]
columns = {{ "patient_id" = "hash", "email" = "drop" }}
''')
    pol = policy_from_config(config_mod.load(str(cfg_file)))
    assert pol.console == "drop" and pol.secret_ref == ("file", f"{tmp_path}/redact.key")
    assert pol.decide("samples/ct", "image").action == "keep"
    assert pol.decide("samples/ct", "audio").action == "hash"           # no rule: hashed
    assert pol.decide("other", "image").action == "hash"
    t = pol.decide("predictions", "table")
    assert (t.action, dict(t.columns), t.rest) == ("hash", {"patient_id": "hash", "email": "drop"}, "keep")
    assert pol.config_value_redacted("hf_token", "") and pol.config_value_redacted("data_dir", "")
    assert not pol.config_value_redacted("lr", "")


@pytest.mark.parametrize("raw, key", [
    ({"secret": "inline"}, "redact.secret"),
    ({"console": "shout"}, "redact.console"),
    ({"rule": [{"key": "x", "media": ["image"]}]}, "redact.rule[0].action"),
    ({"rule": [{"key": "x", "media": ["photo"], "action": "hash"}]}, "redact.rule[0].media"),
    ({"patterns": ["(unclosed"]}, "redact.patterns[0]"),
    ({"colour": "red"}, "redact.colour"),
])
def test_bad_policy_names_the_key(raw, key) -> None:
    with pytest.raises(config_mod.ConfigError) as exc:
        parse_policy("agent.toml", raw)
    assert exc.value.key == key


def test_default_policy_is_the_safe_one() -> None:
    assert DEFAULT_POLICY.console == "scrub" and DEFAULT_POLICY.metadata == "redact"
    for kind in ("image", "audio", "video", "html", "table", "object3d", "molecule", "any"):
        assert DEFAULT_POLICY.decide("anything", kind).action == "hash"
    assert DEFAULT_POLICY.config_value_redacted("HF_TOKEN", "") and DEFAULT_POLICY.config_value_redacted("db_password", "")
    assert DEFAULT_POLICY.config_value_redacted("wandb_api_key", "") and not DEFAULT_POLICY.config_value_redacted("epochs", "")


def test_sensitive_keys_are_never_kept() -> None:
    pol = parse_policy("t", {"rule": [{"key": "*", "media": ["any"], "action": "keep"},]})
    assert pol.decide("eval/table", "table").action == "keep"
    assert pol.decide("eval/table", "table", ("eval/*",)).action == "hash"
    assert pol.decide("eval/table", "image", ("eval/*",)).action == "hash"
    drop = parse_policy("t", {"rule": [{"key": "*", "media": ["any"], "action": "drop"}]})
    assert drop.decide("eval/x", "image", ("eval/*",)).action == "drop"   # stricter stays


# Built at run time so no token-shaped literal sits in the repository.
TOKENS = {
    "wandb_api_key": "WANDB_API_KEY=" + "0123456789abcdef" * 2 + "01234567",
    "huggingface_token": "hf_" + "Ab1" * 11,
    "aws_access_key_id": "AKIA" + "ABCDEFGHIJ234567",
    "aws_secret_access_key": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github_token": "ghp_" + "a1B2" * 9,
    "github_pat": "github_pat_" + "11ABCDEFG0" * 3,
    "gitlab_token": "glpat-" + "xY9_" * 5,
    "jwt": "eyJhbGciOiJIUzI1NiJ9" + "." + "eyJzdWIiOiIxMjM0In0" + "." + "dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "pem_private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----",
    "key_value": "db_password=hunter2hunter2",
}


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_builtin_patterns_catch_each_kind(name: str) -> None:
    token = TOKENS[name]
    text, counts = scrubber().scrub(f"before {token} after")
    assert counts.get(name) == 1, counts
    assert token not in text and "before" in text and "after" in text
    core = token.split("=")[-1].strip()
    assert core not in text


def test_scrub_is_keyed_and_stable_and_keeps_plain_text() -> None:
    s = scrubber()
    a, _ = s.scrub("token hf_" + "Q" * 34)
    b, _ = s.scrub("token hf_" + "Q" * 34)
    c, _ = Scrubber(compile_patterns(), lambda k, v: placeholders.text_tag(b"another-secret-xxxxxxxxxx", k, v)).scrub(
        "token hf_" + "Q" * 34)
    assert a == b and a != c
    plain = "epoch 3/10 loss=0.25 see https://example.org/docs/page"
    assert s.scrub(plain) == (plain, {})
    out, counts = s.scrub("reading /home/alice/data/x.csv now")
    assert "/home/alice" not in out and counts == {"local_path": 1}


def test_metadata_and_config_redaction() -> None:
    from tfwb_agent.redact.outgoing import Outgoing
    rep = RedactionReport()
    s = Outgoing(scrubber(), DEFAULT_POLICY, rep)
    tag = lambda k, v: placeholders.text_tag(SECRET, k, v)
    md = {"host": "gpu-node-17", "username": "alice", "email": "alice@example.org", "program": "/home/alice/train.py",
          "args": ["--data", "/data/patients/ct-scans", "--epochs", "3"], "codePath": "train.py",
          "git": {"remote": "git@git.example.org:team/secret-project.git", "commit": "0123456789abcdef0123456789abcdef01234567"}, "cpu_count": 4}
    out, changed = meta.redact_metadata(md, s, tag, rep)
    blob = json.dumps(out)
    for value in ("gpu-node-17", "alice", "/home/alice", "/data/patients", "secret-project"):
        assert value not in blob
    assert changed and out["cpu_count"] == 4 and out["codePath"] == "train.py" and out["git"]["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert out["args"][2:] == ["--epochs", "3"]
    value, changed = meta.redact_config_value("hf_token", "hf_x", DEFAULT_POLICY, s, tag, rep, ())
    assert changed and "hf_x" not in value
    value, changed = meta.redact_config_value("lr", 0.001, DEFAULT_POLICY, s, tag, rep, ())
    assert (value, changed) == (0.001, False)
    value, changed = meta.redact_config_value("opt", {"data": "/data/x/y", "beta": 0.9}, DEFAULT_POLICY, s, tag, rep, ())
    assert changed and "/data/x/y" not in json.dumps(value) and value["beta"] == 0.9
    assert "gpu-node-17" not in json.dumps(rep.to_dict())


def test_console_drop_and_metadata_keep_on_a_corpus_run(tmp_path: Path) -> None:
    from redact_helpers import copy_corpus, corpus_runs, map_path_for
    from tfwb_agent.redact.run import redact_run
    from tfwb_agent.wandb_log import read_records
    root = copy_corpus(tmp_path / "runs")
    src = corpus_runs(root)[2]                      # 0.31.0, finished
    pol = parse_policy("t", {"console": "drop", "metadata": "keep"})
    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, pol, SECRET, map_path_for(root))
    kinds = [rec.WhichOneof("record_type") for _, rec in read_records(next(dst.glob("*.wandb")))]
    assert "output_raw" not in kinds and not (dst / "files" / "output.log").exists()
    assert report.console["dropped"] == 2
    hosts = [rec.environment.host for _, rec in read_records(next(dst.glob("*.wandb")))
             if rec.WhichOneof("record_type") == "environment" and rec.environment.host]
    assert hosts == ["vm"]                          # metadata kept, as the policy says
    # The config's token is still redacted: the default config_keys apply.
    run = [rec.run for _, rec in read_records(next(dst.glob("*.wandb"))) if rec.WhichOneof("record_type") == "run"][0]
    cfg = {u.key: u.value_json for u in run.config.update}
    assert "hf_aBc" not in cfg["hf_token"]
    assert json.loads(cfg["lr"]) == 0.001


def test_damaged_log_is_a_redact_error(tmp_path: Path) -> None:
    from redact_helpers import copy_corpus, corpus_runs, map_path_for
    from tfwb_agent.redact.run import RedactError, redact_run
    root = copy_corpus(tmp_path / "runs")
    src = corpus_runs(root)[2]
    log = next(src.glob("*.wandb"))
    data = bytearray(log.read_bytes())
    data[100] ^= 0xFF                      # a flipped byte in the first block: corruption
    log.write_bytes(bytes(data))
    with pytest.raises(RedactError, match="cannot read"):
        redact_run(src, tmp_path / "out" / src.name, DEFAULT_POLICY, SECRET, map_path_for(root))


def test_a_binary_site_key_is_read_whole_and_a_text_key_without_its_line_end(tmp_path) -> None:
    from tfwb_agent.config import read_secret
    key = tmp_path / "redact.key"
    binary = bytes(range(200, 231)) + b"\x0c"          # ends in a byte that looks like whitespace
    key.write_bytes(binary)
    key.chmod(0o600)
    assert read_secret(("file", str(key))) == binary
    key.write_bytes(binary[:-1] + b"\n")                # a random key that happens to end in 0x0a
    assert read_secret(("file", str(key))) == binary[:-1] + b"\n"
    key.write_bytes(b"s3cret-api-key-value\n")           # what echo writes
    assert read_secret(("file", str(key))) == b"s3cret-api-key-value"


def test_a_number_a_wildcard_glob_matches_stays_unless_its_key_names_a_credential():
    """Found by a tester: the default globs (``*token*``, ``*secret*``, ``*password*``) took the
    numbers of ``num_tokens``, ``tokens_per_sec``, ``password_reset_rate`` out of the config.
    A number stays under a wildcard's match; text goes; a credential's key takes anything; a key
    the site named exactly takes anything."""
    from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy
    p = DEFAULT_POLICY
    for key, value in (("num_tokens", 512), ("tokens_per_sec", 6318.0), ("password_reset_rate", 0.01),
                       ("secret_sharing_parties", 3), ("use_auth_token", True), ("max_new_tokens", None)):
        assert not p.config_value_redacted(key, value), key
    for key, value in (("hub_token", "hf_x"), ("num_tokens", "512 (approx)"), ("db_password", 1234),
                       ("api_key", 12345), ("client_secret", 7)):
        assert p.config_value_redacted(key, value), key
    exact = parse_policy("test", {"config_keys": ["patient_age", "*site*"]})
    assert exact.config_value_redacted("patient_age", 71) and exact.config_value_redacted("Patient_Age", 71)
    assert not exact.config_value_redacted("site_count", 3) and exact.config_value_redacted("site_name", "icu")
