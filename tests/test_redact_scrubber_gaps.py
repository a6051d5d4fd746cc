"""Strings the scrubber let through under the default policy, found by a security tester with
real wandb runs: the run's host or user inside a name (``icu-gpu-07-rank0``, ``loss/icu-gpu-07_0``,
``user@icu-gpu-07``); a digest-shaped string (32 or 64 hex: a hashed patient id) that the site's
own ``patterns`` match; a Google API key after ``_`` (``maps_AIza…``); a ``.netrc`` line's
password (``machine h login u password X``: no colon); a local path after ``:`` (every entry of
``LD_LIBRARY_PATH`` after the first) or in a ``file:///`` URI. Each is checked on the scrubber
and the choke point, then once on a real run, redacted whole; and what must stay (ordinary
names, URLs, short words inside other words, wandb's media digests) stays.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

from canary_helpers import _can_set_hostname
from redact_helpers import WRITER_PREAMBLE, default_outgoing, history_items, site_tag
from tfwb_agent.redact.outgoing import Outgoing
from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secrets import Scrubber, compile_patterns

HOST = "icu-gpu-07"
USER = "alice"


def _scrubber(extra=()) -> Scrubber:
    return Scrubber(compile_patterns(extra), site_tag, True)


def _words(*words: str) -> Scrubber:
    return _scrubber().with_words("identity", set(words))


# -- 1. the run's identity inside names -------------------------------------------------------

@pytest.mark.parametrize("text", [
    f"{HOST}-exp1", f"{HOST}_rank0", f"loss/{HOST}_0", f"[{HOST}-rank0] started", f"ssh {USER}@{HOST}",
    f"ckpt_{USER}_best", f"{USER}-gpu", f"{USER}_svc", f"/{HOST}/", f"{HOST}.local", f"x.{HOST}",
])
def test_the_runs_host_and_user_go_when_a_dash_underscore_dot_or_at_sign_is_next_to_them(text):
    s = _words(HOST, USER)
    new, counts = s.scrub(text)
    assert HOST not in new and USER not in new and counts.get("identity"), (text, new)
    name, counts = s.scrub_name(text)
    assert HOST not in name and USER not in name and counts.get("identity"), (text, name)


def test_a_word_with_a_letter_beside_it_is_another_word():
    s = _words(HOST, USER)
    for text in (f"mal{USER}", f"x{HOST}", "alicebob", "malice-free", f"{USER}s"):
        assert s.scrub(text) == (text, {}), text


def test_a_digit_beside_the_runs_host_or_user_does_not_hide_it():
    s = _words(HOST, USER)
    for text in (f"{USER}123", f"{HOST}0", f"run-{USER}1", f"7{HOST}"):
        new, counts = s.scrub(text)
        assert USER not in new and HOST not in new and counts.get("identity"), (text, new)


@pytest.mark.parametrize("word, text", [
    ("bob", "bob_svc"),                 # shorter than 4: only a whole word
    ("ml", "ml-ops/loss"),
    ("root", "root_mean_squared_error"),  # a generic account name: only a whole word
    ("ubuntu", "ubuntu-22.04"),
])
def test_a_short_or_generic_word_is_taken_only_as_a_whole_word(word, text):
    s = _words(word)
    assert s.scrub(text) == (text, {}), text
    assert s.scrub(f"by {word} today")[1] == {"identity": 1}


def test_a_host_is_the_same_in_any_case_and_its_fully_qualified_name_brings_its_short_name():
    """Host names are case-insensitive (``ICU-GPU-07`` in a prompt is the run's host), and a host
    recorded as ``icu-gpu-07.hospital.local`` is printed as ``icu-gpu-07`` by most tools; each
    spelling gets the same tag."""
    s = _words(f"{HOST}.hospital.local", USER)
    for text in (f"[{HOST.upper()}-rank0] ok", f"host {HOST.title()} up", f"ssh {USER.title()}@{HOST}",
                 f"{HOST}:8080", f"ckpt/{HOST}_best"):
        new, counts = s.scrub(text)
        assert HOST not in new.lower() and USER not in new.lower() and counts.get("identity"), (text, new)
    tags = {s.scrub(h)[0] for h in (HOST, HOST.upper(), HOST.title())}
    assert len(tags) == 1, tags
    assert _words("ml").scrub("ML_loss") == ("ML_loss", {})       # a short word only as written


# -- 2. site patterns on digest-shaped strings ------------------------------------------------

def test_a_site_pattern_takes_a_digest_shaped_value_out():
    pid32, pid64 = secrets.token_hex(16), secrets.token_hex(32)
    policy = parse_policy("t", {"patterns": [r"\b[0-9a-f]{32}\b", r"\b[0-9a-f]{64}\b"]})
    out = Outgoing(_scrubber(policy.patterns), policy, RedactionReport())
    for v in (pid32, pid64):
        assert v not in out.text(v, "config"), v
        assert v not in out.json_text(json.dumps({"case_id": v}), "config"), v
        assert v not in out.json_text(json.dumps(v), "history", "case"), v
        assert v not in json.dumps(out.value({"nested": {"ids": [v]}}, "summary")), v
    # Not the tags redaction itself wrote, nor the digest of a file it wrote (wandb's beside a
    # media file's name) ...
    tagged = "hash:" + secrets.token_hex(8)
    assert out.text(tagged, "history") == tagged
    written = secrets.token_hex(32)
    out.file_digests.add(written)
    image = {"_type": "image-file", "path": "media/images/x_1_" + "a" * 20 + ".png", "sha256": written,
             "size": 10, "format": "png", "width": 1, "height": 1}
    assert out.value(image, "history")["sha256"] == written
    assert out.json_text(json.dumps(written), "history", "sha256") == json.dumps(written)
    # ... but a key merely named like wandb's digest is no exemption for a value of the site's.
    assert pid64 not in json.dumps(out.value({"sha256": pid64}, "config"))
    assert pid64 not in json.dumps(out.value({**image, "sha256": pid64}, "history"))
    assert pid64 not in out.json_text(json.dumps(pid64), "history", "sha256")


def test_without_site_patterns_a_digest_still_passes_untouched():
    out = default_outgoing(RedactionReport())
    for v in (secrets.token_hex(16), secrets.token_hex(32), "hash:" + secrets.token_hex(8)):
        assert out.text(v, "history") == v


# -- 3. a Google API key after "_" ------------------------------------------------------------

def test_a_google_api_key_after_an_underscore_or_a_dash_goes():
    key = "AIza" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(35))
    for text in (f"maps_{key}", f"GOOGLE_MAPS_{key} ok", f"key=-{key}", f"/{key}/"):
        new, counts = _scrubber().scrub(text)
        assert key[4:20] not in new and key[-16:] not in new and counts.get("google_api_key"), (text, new)


# -- 4. .netrc lines --------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "machine api.wandb.ai login user password {pw}",
    "machine api.wandb.ai\n  login user\n  password {pw}",
    "machine api.example.com\n  login user\n  password\n  {pw}",
    "default login anonymous password {pw}",
    "login bob passwd {pw}",
    "machine h password {pw}",
])
def test_a_netrc_password_goes(text):
    pw = "Zq" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(14))
    new, counts = _scrubber().scrub(text.format(pw=pw))
    assert pw not in new and counts.get("netrc_password") == 1, new
    assert "machine" not in text or "machine" in new     # the keys stay readable


@pytest.mark.parametrize("text", [
    "password reset complete", "WARNING: the password field is empty", "login with your password please",
    "the default password is empty", "login succeeded",
])
def test_prose_about_passwords_stays(text):
    assert _scrubber().scrub(text) == (text, {}), text


# -- 5. local paths after ":" or "=" and in file:// URIs --------------------------------------

@pytest.mark.parametrize("text, gone", [
    ("LD_LIBRARY_PATH=/usr/lib:/mnt/dir-abc/lib", ["/usr/lib", "dir-abc"]),
    ("PATH=/usr/local/bin:/home/alice/bin:~/tools/bin", ["/usr/local", "alice", "tools"]),
    ("file:///mnt/dir-abc/train.csv", ["dir-abc", "train.csv"]),
    ("data = file:///mnt/dir-abc/train.csv, ok", ["dir-abc"]),
    ("sqlite:////data/dir-abc/runs.db", ["dir-abc"]),
    ("rsync to node:/scratch/dir-abc/out", ["dir-abc"]),
    ("--data-dir=/mnt/dir-abc/x", ["dir-abc"]),
])
def test_a_path_after_a_colon_or_in_a_file_uri_goes(text, gone):
    new, counts = _scrubber().scrub(text)
    assert counts.get("local_path") and not [g for g in gone if g in new], (text, new)


@pytest.mark.parametrize("text", [
    "https://example.org/data/cifar-10.tar.gz", "http://host:8080/api/v1/runs", "s3://bucket/key/part-0",
    "train/loss", "val/ConfusionMatrix_class10_precision", "disk./.usagePercent", "ratio 3:4/5",
    "//cdn.example.org/lib/x.js", "Epoch 3/10 - loss: 0.2345", "eval:loss/x",
])
def test_urls_and_metric_names_are_no_paths(text):
    assert _scrubber().scrub(text) == (text, {}), text
    assert _scrubber().scrub_name(text) == (text, {}), text


# -- the real thing: one wandb run, redacted whole --------------------------------------------

WRITER = WRITER_PREAMBLE + r'''import wandb
h = socket.gethostname()
run = wandb.init(dir=root, project="gaps", name=f"{h}-exp1",
                 config={"node": f"{h}_rank0", "case_id": c["pid"], "sha256": c["pid64"], "data": "file:///mnt/" + c["dir"] + "/train.csv"})
print(f"[{h}-rank0] started; ssh trainer@{h}", flush=True)
print("LD_LIBRARY_PATH=/usr/lib:/mnt/" + c["dir"] + "/lib", flush=True)
print("maps_" + c["google"], flush=True)
print("machine api.example.com login trainer password " + c["pw"], flush=True)
print("restoring: mysql -u trainer -p" + c["pw"] + " icu < dump.sql", flush=True)
print("db_pw=" + c["pw"], flush=True)
print("reading /mnt/ct scans/" + c["dir"] + "/slice 001.png", flush=True)
import numpy as np
run.log({f"loss/{h}_0": 1.0, "case": c["pid"], "scan": wandb.Image(np.full((8, 8, 3), 7, dtype=np.uint8))})
run.summary["last_case"] = c["pid64"]
run.summary["record"] = {"sha256": c["pid64"]}
run.finish()
'''


def _history_image(run_dir: Path) -> dict:
    """The fields of the image in the run's history (wandb 0.31 writes one item per field)."""
    fields = {k[1]: json.loads(v) for k, v in history_items(run_dir).items()
              if len(k) == 2 and k[1] in ("path", "sha256")}
    assert set(fields) == {"path", "sha256"}, fields
    return fields


def test_a_real_run_carries_none_of_them_out(tmp_path):
    from tfwb_agent.redact.run import redact_run

    # The run gets a host name of its own (a UTS namespace), as CI runs as root: never skipped.
    assert _can_set_hostname(), "this test needs root and unshare(1) to give the run a host name of its own"
    alnum = string.ascii_letters + string.digits
    c = {"host": "icu-gpu-" + secrets.token_hex(4), "pid": secrets.token_hex(16), "pid64": secrets.token_hex(32),
         "dir": "dir-" + secrets.token_hex(8), "google": "AIza" + "".join(secrets.choice(alnum) for _ in range(35)),
         "pw": "Zq" + "".join(secrets.choice(alnum) for _ in range(14))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps(c))
    p = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {c["host"]} && exec "$0" -c "$1"',
                        sys.executable, WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    src = b"".join(f.read_bytes() for f in run_dir.rglob("*") if f.is_file())
    assert all(v.encode() in src for v in c.values()), "the run does not carry every canary"

    def blob(name: str, policy) -> bytes:
        out = tmp_path / name / run_dir.name
        rep = redact_run(run_dir, out, policy, os.urandom(32), lambda q: Path(q))
        # wandb's digest of the image file still names the file that leaves beside it
        image = _history_image(out)
        assert hashlib.sha256((out / "files" / image["path"]).read_bytes()).hexdigest() == image["sha256"], image
        return b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file()) + json.dumps(rep.to_dict()).encode()

    default = blob("default", DEFAULT_POLICY)
    site = blob("site", parse_policy("t", {"patterns": [r"\b[0-9a-f]{32}\b", r"\b[0-9a-f]{64}\b"]}))
    for what in ("host", "dir", "google", "pw"):
        assert c[what].encode() not in default, what
        assert c[what].encode() not in site, what
    assert c["google"][4:24].encode() not in default
    for what in ("pid", "pid64"):
        assert c[what].encode() not in site, what


# -- 6. a value after a secret-looking key, whole: past a "," or ";" inside it, a quoted one to its quote

def _pw() -> str:
    return "Zq" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(22))


@pytest.mark.parametrize("text", [
    "password=ab,{pw}", "password=ab;{pw}", "db_password: x,{pw} next", "--db-password=ab,{pw}",
    'password: "correct horse {pw}"', "password: 'correct horse {pw}'", '{{"password": "a b {pw}", "user": "bob"}}',
    "{{'api_key': 'a,{pw}'}}", '--password "correct horse {pw}" --lr 1', 'password: "a\\"b {pw}"',
    'password="unclosed {pw}', "auth_token=ab,{pw}",
])
def test_a_secret_value_goes_whole(text):
    pw = _pw()
    new, counts = _scrubber().scrub(text.format(pw=pw))
    assert pw not in new and pw[-12:] not in new and sum(counts.values()) == 1, new
    out = default_outgoing(RedactionReport())
    assert pw not in out.text(text.format(pw=pw), "history")


@pytest.mark.parametrize("text, kept", [
    ("password: x1, user: bob", ", user: bob"), ('{"password": "x1", "lr": 0.1}', '", "lr": 0.1}'),
    ("api_key=abc; next", "; next"), ("tokens: 1,234", "tokens: 1,234"), ("tokens=512,steps=3", "tokens=512,steps=3"),
    ("['--password=abc', '--lr=1']", "', '--lr=1']"),
])
def test_what_follows_a_secret_value_stays(text, kept):
    assert _scrubber().scrub(text)[0].endswith(kept), text


# -- 7. local paths with "=" in a component, or right after "disk." ---------------------------

@pytest.mark.parametrize("text, gone", [
    ("/data/scans/site=icu/dir-abc/img.png", ["icu", "dir-abc"]),
    ("saved to /data/year=2026/site=icu/part-0.parquet", ["site=icu", "part-0"]),
    ("disk./mnt/dir-abc.usagePercent", ["dir-abc"]),
    ("disk./mnt/dir-abc/usageGB", ["dir-abc"]),
    # wandb 0.15 writes the watched disk's path with "\\" for "/" in its stats keys
    ("disk.\\mnt\\vol-abc\\dir-abc.usagePercent", ["vol-abc", "dir-abc"]),
    # after an escape written out in a repr (a serialized tf.train.Example printed), after ".."
    ("b'\\n\\x14/data/P7126/scan.png'", ["P7126"]), ("'line\\n/data/P7126/x'", ["P7126"]),
    ("['a\\t/data/P7126/x']", ["P7126"]), ("'\\u2192/data/P7126/x'", ["P7126"]),
])
def test_a_partitioned_path_or_a_watched_disk_goes(text, gone):
    for new, counts in (_scrubber().scrub(text), _scrubber().scrub_name(text)):
        assert counts.get("local_path") and not [g for g in gone if g in new], (text, new)
    assert _scrubber().scrub_name("disk./mnt/dir-abc.usagePercent")[0].startswith("disk.redacted-local_path-")


@pytest.mark.parametrize("text", [
    "val.loss/x", "train.acc/top1/x", "x = 1./n/m", "disk./.usagePercent", "disk./.usageGB", "lr=0.1/loss",
    "https://example.org/a=b/c/d", "eval/loss=0.1/x", "python ../train.py", "disk.\\.usageGB",
    "Loading config from ../configs/train.yaml", "python ../../data/x/train.py",
])
def test_names_with_a_dot_or_an_equals_sign_are_no_paths(text):
    assert _scrubber().scrub(text) == (text, {}), text
    assert _scrubber().scrub_name(text) == (text, {}), text


# -- 7b. a directory's name with blanks in it ------------------------------------------------

@pytest.mark.parametrize("text, gone", [
    ("reading /data/patient P7126/scan.png now", ["P7126", "scan.png"]),
    ("~/my data/P7126 x/a.png", ["P7126", "a.png"]),
    ("'/mnt/ct scans/Doe Jane/1.dcm'", ["Doe", "Jane", "1.dcm"]),
])
def test_a_directory_with_blanks_goes_whole(text, gone):
    new, counts = _scrubber().scrub(text)
    assert counts.get("local_path") == 1 and not [g for g in gone if g in new], (text, new)


@pytest.mark.parametrize("text, kept", [
    ("saved /data/x/y.png and went on", " and went on"),
    ("gcc -L /usr/lib -lfoo -O2", " -lfoo -O2"),
])
def test_words_after_a_path_stay(text, kept):
    assert _scrubber().scrub(text)[0].endswith(kept), text


# -- 7c. a password under "pw", or glued to a client's -p -------------------------------------

@pytest.mark.parametrize("text", [
    "pw={pw}", "db_pw: {pw}", "DB-PW = '{pw}'", "--pw {pw}", "--db-pw={pw}", '{{"smtp.pw": "{pw}"}}',
    "mysql -u root -p{pw} -h db", "mysqldump -uroot -p{pw} icu > x.sql", "sshpass -p {pw} ssh node",
    "sshpass -p{pw} scp a b",
])
def test_a_short_password_key_or_a_glued_flag_goes(text):
    pw = _pw()
    new, counts = _scrubber().scrub(text.format(pw=pw))
    assert pw[:12] not in new and pw[-12:] not in new and sum(counts.values()) == 1, new


@pytest.mark.parametrize("text", [
    "upward: 3", "pwm_duty: 0.5", "pw = 3", "pW, pH = _pair(padding)", "mysql -p", "cmd -pX2abc",
    "mysql --port 3306 -P 3306 db", "swap_pw_ratio=0.5",
])
def test_other_pw_and_p_stay(text):
    assert _scrubber().scrub(text) == (text, {}), text


# -- 8. flags that take a secret with no secret-looking word: --auth, --authorization, --auth-key, --key

@pytest.mark.parametrize("flag", ["--auth", "--authorization", "--auth-key", "--auth_key", "--authkey", "--key", "-key"])
def test_the_argument_after_an_auth_or_key_flag_goes(flag):
    from tfwb_agent.redact.secrets import scrub_args

    pw = _pw()
    args = scrub_args(["--lr", "0.1", flag, pw, "--epochs", "3"], lambda a: _scrubber().scrub(a)[0], lambda a: "X")
    assert args == ["--lr", "0.1", flag, "X", "--epochs", "3"], args
    for text in (f"python train.py {flag} {pw} --lr 1", f"{flag}={pw}"):
        new, counts = _scrubber().scrub(text)
        assert pw not in new and counts.get("flag_value") == 1, new


@pytest.mark.parametrize("flag", ["--key-frames", "--auth-type", "--no-auth", "--keys", "--hotkey", "-p"])
def test_other_flags_keep_their_argument(flag):
    from tfwb_agent.redact.secrets import scrub_args

    args = scrub_args([flag, "basic10", "--x"], lambda a: a, lambda a: "X")
    assert args == [flag, "basic10", "--x"], args
    assert _scrubber().scrub(f"{flag} basic10 next") == (f"{flag} basic10 next", {})


# -- 8. what wandb collects about the environment, in its own files (found by a tester) --------

def test_conda_environment_yaml_loses_channel_tokens_and_variables():
    text = ("channels:\n  - https://conda.anaconda.org/t/0123456789abcdef0123456789abcdef/acme-private\n"
            "  - https://repo.anaconda.cloud/t/ab-12345678-aaaa-bbbb-cccc-1234567890ab/acme\n"
            "variables:\n  KAGGLE_KEY: 0f1e2d3c4b5a69788796a5b4c3d2e1f0\n  REDIS_AUTH: Zq8xT2pLk9\n  OMP_NUM_THREADS: '4'\n")
    new = _scrubber().scrub(text)[0]
    for gone in ("0123456789abcdef0123456789abcdef", "ab-12345678-aaaa", "0f1e2d3c4b5a6978", "Zq8xT2pLk9"):
        assert gone not in new, new
    assert "acme-private" in new and "OMP_NUM_THREADS: '4'" in new


def test_a_git_commit_in_wandb_metadata_that_is_no_commit_is_replaced():
    from tfwb_agent.redact import meta
    out = default_outgoing(RedactionReport())
    for commit, kept in (("a" * 40, True), ("ci-job-token-Zq8xT2pLk9", False)):
        new, _ = meta.redact_metadata({"git": {"commit": commit}}, out, lambda k, v: "t" * 16, RedactionReport())
        assert (new["git"]["commit"] == commit) is kept, new


def test_wandb_031s_upstream_patch_is_dropped_by_default():
    from tfwb_agent.redact.files import file_action
    scrubbing = parse_policy("test", {"scrub_files": True})
    for name in ("diff.patch", "diff_0123456789abcdef0123456789abcdef01234567.patch", "upstream_diff_0123abc.patch"):
        assert file_action(name, DEFAULT_POLICY).startswith("drop") and file_action(name, scrubbing).startswith("drop"), name


def test_every_item_walk_asks_one_rule_of_a_value_with_no_string():
    """A number under a credential's key goes, and a value that is no JSON goes through the
    scrubber, whichever walk reads the item: the generic message walk (a stats item, an item of
    a shape the fast path does not take) asked only whether the value held a '"'."""
    from wandb.proto import wandb_internal_pb2 as pb
    out = default_outgoing(RedactionReport())
    rec = pb.Record()
    rec.stats.item.add(key="db_password", value_json="1234")
    rec.stats.item.add(key="gpu.0.temp", value_json="61.5")
    rec.stats.item.add(key="note", value_json="[P7126 ghp_" + "a1" * 18)
    out.message(rec, "stats")
    got = {it.key: it.value_json for it in rec.stats.item}
    assert "1234" not in got["db_password"] and got["gpu.0.temp"] == "61.5"
    assert "ghp_" not in got["note"]
    for raw, key, as_is in (("61.5", "temp", True), ("1234", "db_password", False), ("[1,2]", "x", True),
                            ("[P7126", "x", False), ('"a"', "x", False)):
        assert out.json_as_is(raw, key) is as_is, (raw, key)
