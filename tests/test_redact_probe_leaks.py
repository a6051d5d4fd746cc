"""What a second security tester got through the default policy with real wandb 0.31 runs, after
the fixes of ``test_redact_scrubber_gaps.py``:

- values under keys that name a credential in other words than the default globs (``pass``,
  ``pwd``, ``X-API-Key``, ``private-key``, ``azure_openai_key``), a number under ``password``,
  and the flag ``--openai-key``;
- console lines: a URL's password with no user or with an "@" in it, ``curl -u user:pw``,
  ``AZURE_OPENAI_KEY=``, a signed URL's ``sig=``, JSON printed inside a string
  (``\\"password\\": \\"x\\"``), a bytes value, ``cfg["password"] = x``;
- vendor tokens in lower-case hex (Databricks, LangSmith, DigitalOcean);
- local paths after ``-I``, with doubled slashes, in ``file://localhost/…``;
- a site pattern anchored with ``\\b`` (as the README shows) missing ``dice_P7126``.

Each is checked on the scrubber or the choke point, then all at once on a real run redacted
whole; ordinary names, counts and metrics stay (``pass@1``, ``tokens``, ``sort_key``).
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

from redact_helpers import WRITER_PREAMBLE, default_outgoing, history_items, site_tag
from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secret_rules import key_secrecy
from tfwb_agent.redact.secrets import Scrubber, compile_patterns, scrub_args

ALNUM = string.ascii_letters + string.digits


def _pw() -> str:
    return "Zq" + "".join(secrets.choice(ALNUM) for _ in range(22))


def _hex(n: int) -> str:
    return secrets.token_hex(n // 2)


def _scrubber(extra=()) -> Scrubber:
    return Scrubber(compile_patterns(extra), site_tag, True)


def _gone(secret: str, new: str) -> bool:
    """No 12-character piece of ``secret`` is left in ``new``."""
    return not any(secret[i:i + 12] in new for i in range(max(1, len(secret) - 11)))


# -- 1. keys that name a credential ----------------------------------------------------------

@pytest.mark.parametrize("key", ["pass", "pwd", "passphrase", "db_pw", "X-API-Key", "x-api-key", "private-key",
                                 "azure_openai_key", "encryption_key", "Api-Key", "signingKey", "auth"])
def test_a_string_under_a_key_naming_a_credential_goes_whole(key):
    pw = _pw()
    out = default_outgoing(RedactionReport())
    for place in ("config", "summary", "history"):
        assert pw not in json.dumps(out.value({"svc": {key: pw}}, place)), (key, place)
        assert pw not in out.json_text(json.dumps({"headers": {key: "a b " + pw}}), place), (key, place)
    assert DEFAULT_POLICY.config_value_redacted(key, pw)


@pytest.mark.parametrize("key", ["password", "smtp_password", "pwd", "api_key", "passcode"])
def test_a_number_under_a_credential_goes(key):
    n = secrets.randbelow(10 ** 12) + 10 ** 11
    out = default_outgoing(RedactionReport())
    assert str(n) not in json.dumps(out.value({"smtp": {key: n}}, "summary"))
    assert str(n) not in out.json_text(str(n), "history", key)
    assert DEFAULT_POLICY.config_value_redacted(key, n)


@pytest.mark.parametrize("key, value", [
    ("tokens_per_sec", 1234.5), ("pass@1", 0.42), ("pass_rate", 0.9), ("auth_retries", 3), ("num_keys", 10),
    ("sort_key", "date"), ("primary_key", "id"), ("key_frames", 8), ("prng_key", 7), ("passes", 4), ("sigma", 0.5),
    ("design", "resnet"), ("monkey", "banana"), ("loss", 0.25),
])
def test_ordinary_keys_and_counts_stay(key, value):
    out = default_outgoing(RedactionReport())
    assert out.value({key: value}, "summary") == {key: value}
    if not isinstance(value, str) and key not in ("tokens_per_sec",):   # (*token* is a default glob)
        assert not DEFAULT_POLICY.config_value_redacted(key, value), key


def test_key_words_are_read_in_any_spelling():
    for key in ("X-API-Key", "xApiKey", "X_API_KEY", "x.api.key", "OPENAI_API_KEY"):
        assert key_secrecy(key) == "any", key
    assert key_secrecy("keyframes") == key_secrecy("hotkey") == ""


@pytest.mark.parametrize("flag", ["--openai-key", "--db-pw", "--api-keys", "--hf-key"])
def test_the_argument_after_a_flag_naming_a_credential_goes(flag):
    key = _hex(32)
    args = scrub_args(["train.py", flag, key, "--lr", "0.1"], lambda a: a, lambda a: "[gone]")
    assert key not in args and args[-2:] == ["--lr", "0.1"]
    new, counts = _scrubber().scrub(f"python train.py {flag} {key} --lr 0.1")
    assert key not in new and new.endswith(" --lr 0.1") and counts, new


@pytest.mark.parametrize("flag", ["--key-frames", "--sort-key", "-p", "--lr"])
def test_other_flags_take_no_argument_with_them(flag):
    args = ["train.py", flag, "8"]
    assert scrub_args(args, lambda a: a, lambda a: "[gone]") == args


# -- 2. console lines ------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "redis://:{pw}@redis.internal:6379/0", "mongodb://trainer:ab@{pw}@mongo.internal/x",
    "curl -u trainer:{pw} https://x.example", "wget --user=trainer:{pw} https://x.example",
    "Ocp-Apim-Subscription-Key: {hex}", "X-Api-Key: {hex}", "AZURE_OPENAI_KEY={hex}", "export ENCRYPTION_KEY={hex}",
    '{{"encryption_key": "{hex}"}}', "{{'signing_key': b'{pw}'}}",
    "GET https://acct.blob.core.windows.net/c/x?sv=2022-11-02&sig={pw}%2B&se=1",
    "https://b.s3.amazonaws.com/x?X-Amz-Signature={hex}&X-Amz-Date=1",
    '"body": "{{\\"user\\": \\"trainer\\", \\"password\\": \\"{pw}\\"}}"',
    "{{'host': 'db', 'password': b'{pw}'}}", 'cfg["password"] = "{pw}"; raise ValueError(cfg)',
    "cfg['api_key']='{pw}'", "redirect: https://sso.example/cb?next=%2Fapi%3Faccess_token%3D{pw}%26x%3D1",
    "cloning https://{pw}@git.internal.example/ml/repo.git",
])
def test_a_console_line_with_a_secret_in_it_loses_it(line):
    pw, hx = _pw(), _hex(32)
    text = line.format(pw=pw, hex=hx)
    new, counts = _scrubber().scrub(text)
    assert _gone(pw, new) and _gone(hx, new) and counts, (text, new)


@pytest.mark.parametrize("token", [
    lambda: "dapi" + _hex(32), lambda: "lsv2_pt_" + _hex(32) + "_" + _hex(10), lambda: "dop_v1_" + _hex(64),
])
def test_vendor_tokens_in_lower_case_hex_go(token):
    t = token()
    for text in (t, f"using workspace adb-1234 with {t}", json.dumps({"do": t})):
        new, counts = _scrubber().scrub(text)
        assert _gone(t, new) and counts, new


@pytest.mark.parametrize("text, gone", [
    ("c++ -I/home/alice/miniconda3/include -O2 -c x.cpp", ["alice"]),
    ("gcc -L/home/alice/lib -lfoo", ["alice"]),
    ("loading /mnt/scratch//dir-xyz/scan.png", ["dir-xyz", "scan.png"]),
    ("/mnt/cache///dir-xyz/shard-0.bin", ["dir-xyz", "shard-0"]),
    ("file://localhost/srv/dir-xyz/x.csv", ["dir-xyz"]),
])
def test_paths_after_a_compiler_flag_with_doubled_slashes_or_on_localhost_go(text, gone):
    new, counts = _scrubber().scrub(text)
    assert counts.get("local_path") and not [g for g in gone if g in new], (text, new)
    assert _scrubber().scrub(new) == (new, {})      # once is enough: nothing is left for a second pass


@pytest.mark.parametrize("text", [
    "sort_key: 3", "design: resnet", "sigma=0.5", "num_tokens: 512", "x_key=5", "monkey: banana",
    "https://user@github.com/o/r.git", "the key: value pairs", "Epoch 3/10 - loss: 0.2345", "-Iinclude -O2",
    "sort_key = row_key", "fn(x, input_signature=spec)", "run_key: str", '{"join_key": self._join_key}',
])
def test_ordinary_console_lines_stay(text):
    assert _scrubber().scrub(text) == (text, {}), text


# -- 3. a site pattern anchored with \b, as the README shows ---------------------------------

@pytest.mark.parametrize("text", ["dice_P7126", "best_P7126_epoch", "val/P7126/dice", "P7126"])
def test_a_site_pattern_anchored_with_b_finds_an_id_joined_by_an_underscore(text):
    s = _scrubber([r"\bP\d{4,}\b"])
    for new, counts in (s.scrub(text), s.scrub_name(text)):
        assert "P7126" not in new and counts == {"site_0": 1}, new
    assert s.scrub("loss_total") == ("loss_total", {}) and s.scrub("case_P71") == ("case_P71", {})


# -- the real thing: one wandb run, redacted whole -------------------------------------------

WRITER = WRITER_PREAMBLE + r'''import argparse, wandb
p = argparse.ArgumentParser()
p.add_argument("--openai-key")
p.add_argument("--lr", type=float)
args = p.parse_args()
run = wandb.init(dir=root, project="leaks", config=args)
run.config.update({"db": {"pass": c["pw1"], "pwd": c["pw1"]}, "judge": {"headers": {"X-API-Key": c["hex"]}},
                   "signing": {"private-key": c["pw1"]}, "azure_openai_key": c["hex"], "k_frames": 8})
run.summary["smtp"] = {"password": int(c["num"])}
print("redis://:" + c["pw2"] + "@redis.internal:6379/0", flush=True)
print("curl -u trainer:" + c["pw2"] + " https://x.example", flush=True)
print("AZURE_OPENAI_KEY=" + c["hex"], flush=True)
print("?sv=2022-11-02&sig=" + c["pw2"] + "&se=1", flush=True)
print(json.dumps({"body": json.dumps({"user": "trainer", "password": c["pw2"]})}), flush=True)
print({"host": "db", "password": c["pw2"].encode()}, flush=True)
print("using " + c["dapi"], flush=True)
print("c++ -I/home/" + c["dir"] + "/include -O2", flush=True)
print("loading /mnt/scratch//" + c["dir"] + "/scan.png", flush=True)
t = wandb.Table(columns=["case", "dice_" + c["pid"]], data=[["a", 0.5]])
run.log({"dice_" + c["pid"]: 0.75, "pass@1": 0.42, "tokens": 512, "loss": 0.25, "cases": t})
run.finish()
'''


def test_a_real_run_carries_none_of_them_out(tmp_path):
    from tfwb_agent.redact.run import redact_run

    c = {"pw1": _pw(), "pw2": _pw(), "hex": _hex(32), "num": str(10 ** 11 + secrets.randbelow(10 ** 11)),
         "dapi": "dapi" + _hex(32), "dir": "dir-" + _hex(12), "pid": "P" + str(10 ** 6 + secrets.randbelow(10 ** 6))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c))
    p = subprocess.run([sys.executable, "-c", WRITER, "--openai-key", c["hex"], "--lr", "0.1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    src = b"".join(f.read_bytes() for f in run_dir.rglob("*") if f.is_file())
    assert all(v.encode() in src for v in c.values()), "the run does not carry every canary"

    def redacted(name: str, policy) -> tuple[bytes, dict]:
        out = tmp_path / name / run_dir.name
        rep = redact_run(run_dir, out, policy, os.urandom(32), lambda q: Path(q))
        blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file()) + json.dumps(rep.to_dict()).encode()
        return blob, {"/".join(k): v for k, v in history_items(out).items()}

    site_policy = parse_policy("t", {"patterns": [r"\bP\d{4,}\b"]})
    for name, policy in (("default", DEFAULT_POLICY), ("site", site_policy)):
        blob, history = redacted(name, policy)
        for what, v in c.items():
            if what == "pid" and policy is DEFAULT_POLICY:
                continue                  # a patient id is the site's to name
            pieces = [v] if len(v) <= 12 else [v[i:i + 12] for i in range(len(v) - 11)]
            assert not [x for x in pieces if x.encode() in blob], (name, what)
        # the numbers still plot
        assert (history["pass@1"], history["tokens"], history["loss"]) == ("0.42", "512", "0.25"), history
        assert "0.75" in history.values()


def test_a_console_line_ending_on_such_a_flag_waits_for_its_value():
    from tfwb_agent.redact.console import TextStream

    key = _hex(32)
    stream = TextStream(lambda t: _scrubber().scrub(t)[0])
    released = stream.feed("python train.py --openai-key\n")
    assert released == "", "the line ending on the flag left before its value came"
    released += stream.feed(key + "\n") + stream.close()
    assert key not in released and "--openai-key" in released, released


def test_a_live_snapshot_keeps_back_output_log(corpus, tmp_path):
    """wandb writes the line a run is still printing into ``output.log`` with a line feed after
    it, and stderr's lines after that: a live segment's copy must not carry it (its rest, the
    secret's second half, comes in the next), and no rule can tell which line it is. So a live
    segment carries no ``output.log`` (its records carry the console, joined and scrubbed); the
    run's end carries the file whole."""
    import shutil
    from seal_helpers import corpus_run_dirs
    from tfwb_agent.redact.run import redact_run

    src = tmp_path / "run" / corpus_run_dirs(corpus)["3salp52t"].name
    shutil.copytree(corpus_run_dirs(corpus)["3salp52t"], src)
    token = "ghp_" + "".join(secrets.choice(ALNUM) for _ in range(36))
    log = src / "files" / "output.log"
    outs = {}
    for n, text in enumerate(["hello\ntoken is " + token[:20] + "\nUserWarning: no GPU\n",
                              "hello\ntoken is " + token + "\ndb password:\n",
                              "hello\ntoken is " + token + "\ndb password:\n" + token[4:] + "\nbye\n"]):
        log.write_text(text)
        for complete in (False, True):
            out = tmp_path / f"out-{n}-{complete}" / src.name
            redact_run(src, out, DEFAULT_POLICY, b"s" * 32, lambda q: Path(q), complete=complete)
            f = out / "files" / "output.log"
            outs[n, complete] = f.read_text() if f.exists() else None
    assert [outs[n, False] for n in range(3)] == [None, None, None]
    assert outs[0, True].startswith("hello\ntoken is ")                 # (printed so, at the end)
    assert outs[2, True].endswith("bye\n") and "[redacted:" in outs[2, True]
    assert not [k for k, o in outs.items() if k != (0, True) and o and token[4:16] in o], outs


# -- a value that is an object or a list -------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{{"db_password": {{"value": {num}}}}}', '"api_key": {{"values": ["{pw}"]}}', "{{'password': {{'value': '{pw}'}}}}",
    '"api_key": ["{pw}"], "lr": 0.1', "--password [{pw}]",
])
def test_an_object_or_a_list_after_a_secret_key_goes_whole(text):
    pw, num = _pw(), str(10 ** 13 + secrets.randbelow(10 ** 13))
    new, counts = _scrubber().scrub(text.format(pw=pw, num=num))
    assert _gone(pw, new) and num not in new and counts, new


def test_an_object_or_a_list_under_a_secret_key_in_json_goes_whole():
    pw = _pw()
    out = default_outgoing(RedactionReport())
    for v in ({"db": {"password": {"value": pw}}}, {"api_key": [pw]}, {"secret": {"a": 1, "b": [pw]}}):
        assert pw not in json.dumps(out.value(v, "summary")), v
        assert pw not in out.json_text(json.dumps(v), "history")
    kept = {"tokenizer_stats": {"vocab": 30522}, "tokens": [1, 2, 3]}     # numbers only: counts
    assert out.value(kept, "summary") == kept


# -- artifacts = "keep": a table in an ordinary artifact -------------------------------------

ARTIFACT_WRITER = WRITER_PREAMBLE + r'''
import wandb
run = wandb.init(dir=root, project="art-table")
art = wandb.Artifact("eval-set", type="dataset")
art.add(wandb.Table(columns=["id", "col_" + c["pid"]], data=[[c["tok"], c["pid2"]]]), "tbl")
run.log_artifact(art)
run.log({"x": 1})
run.finish()
'''


def test_a_table_in_a_kept_artifact_is_redacted_as_tables_are(tmp_path):
    from tfwb_agent.redact.run import redact_run

    c = {"pid": "P" + str(10 ** 6 + secrets.randbelow(10 ** 6)), "pid2": "P" + str(10 ** 6 + secrets.randbelow(10 ** 6)),
         "tok": "ghp_" + "".join(secrets.choice(ALNUM) for _ in range(36))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c))
    p = subprocess.run([sys.executable, "-c", ARTIFACT_WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    out = tmp_path / "out" / run_dir.name
    policy = parse_policy("t", {"artifacts": "keep", "patterns": [r"\bP\d{4,}\b"]})
    rep = redact_run(run_dir, out, policy, os.urandom(32), lambda q: Path(q))
    tables = [f for f in out.rglob("*.table.json") if "_staging" in f.parts]
    assert tables, "the kept artifact's table did not leave at all"
    blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file()) + json.dumps(rep.to_dict()).encode()
    assert not [k for k, v in c.items() if v[:12].encode() in blob or v[-12:].encode() in blob]
    assert json.loads(tables[0].read_text())["data"][0][0].startswith("hash:")   # a table's cells hash by default


# -- the training user's name, which wandb 0.31 offline does not record ------------------------

USER_WRITER = WRITER_PREAMBLE + r'''
import wandb
run = wandb.init(dir=root, project="owner", notes="started by " + c["user"])
print(c["user"] + "@node:~$ python train.py", flush=True)
run.log({"loss": 0.5})
run.finish()
'''


def _run_of_a_login_user(tmp_path):
    """A real run naming a login user (uid 1000 or more) of this host, its files owned by them,
    as the training user wrote it: (their passwd entry, the run directory)."""
    import pwd

    users = [u for u in pwd.getpwall() if 1000 <= u.pw_uid < 65534 and len(u.pw_name) >= 4]
    assert users, "this test needs a login user (uid 1000 or more) on the host to own the run"
    user = users[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps({"user": user.pw_name}))
    p = subprocess.run([sys.executable, "-c", USER_WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    assert user.pw_name.encode() in (run_dir / "files" / "output.log").read_bytes()
    for f in [run_dir, *run_dir.rglob("*")]:
        os.chown(f, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return user, run_dir


def test_the_user_who_wrote_the_run_is_taken_out_though_wandb_does_not_record_them(tmp_path):
    """The run's log belongs to the user who trained; this host's name for a login user (uid
    1000 or more) is one of the run's words, like its host: a prompt or a note naming them
    does not leave with it."""
    from tfwb_agent.redact.run import redact_run

    user, run_dir = _run_of_a_login_user(tmp_path)
    out = tmp_path / "out" / run_dir.name
    redact_run(run_dir, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q))
    blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file())
    assert user.pw_name.encode() not in blob and b"@node:~$" in blob


def test_a_live_snapshot_of_a_line_that_never_ends_is_held_in_bounded_memory(tmp_path, monkeypatch):
    """The last line kept back is at most a block or so: a progress bar that never writes a line
    feed (megabytes on one line) is fed on once longer than that, as the stream's own limit says,
    and what the stream is handed at once stays bounded (the block set small to show it)."""
    from tfwb_agent.redact import files

    monkeypatch.setattr(files, "BLOCK", 64)
    src = tmp_path / "output.log"
    src.write_text("first line\n" + "progress 1% " * 2000)          # 24 KB, no line feed after it
    fed: list[int] = []

    class Spy:
        def feed(self, text: str) -> str:
            fed.append(len(text))
            return text

    sink = files.Sink(str(tmp_path / "out.log"))
    try:
        files.scrub_text_file(str(src), sink, Spy(), complete=False)
    finally:
        sink.close()
    assert max(fed) <= 3 * 64, max(fed)
    assert sum(fed) >= len(src.read_text()) - 3 * 64         # held back: at most the last piece


def test_a_site_pattern_with_an_underscore_of_its_own_still_matches():
    """The blank-for-underscore reading is asked beside the text as written, not instead of it."""
    s = _scrubber([r"\bcase_\d{4}\b"])
    for text in ("case_7126", "val/case_7126/dice", "x case_7126 y"):
        new, counts = s.scrub(text)
        assert "7126" not in new and counts == {"site_0": 1}, new


def test_a_snapshot_the_agent_made_still_takes_out_the_user_who_wrote_the_run(tmp_path):
    """A live segment is redacted from a snapshot the agent copied (its files the agent's): the
    user is read from the log on the volume (``written_by``), not from the copy."""
    import shutil
    from tfwb_agent.redact.run import redact_run

    user, run_dir = _run_of_a_login_user(tmp_path)
    snap = tmp_path / "snapshot" / run_dir.name
    shutil.copytree(run_dir, snap)                      # the agent's copy: owned by the agent
    assert snap.stat().st_uid != user.pw_uid
    log = next(run_dir.glob("run-*.wandb"))
    for written_by, leaves in ((None, True), (log, False)):
        out = tmp_path / f"out-{leaves}" / run_dir.name
        redact_run(snap, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q), written_by=written_by)
        blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file())
        assert (user.pw_name.encode() in blob) is leaves
