"""What testers got through the default policy in this round, in forms training code and wandb
write:

- a flag and its value, or a key and its value, as separate items of a JSON list or object: a
  command line kept in the config (``{"argv": sys.argv}``, a sweep's ``command``), a summary
  holding one, a Kubernetes env entry (``{"name": "DB_PASSWORD", "value": X}``), pairs
  (``[["X-Api-Key", X]]``, ``[("PGPASSWORD", X)]``); each string was read alone;
- a user's home glued to what comes before it, as keys built from absolute paths are
  (``val//home/alice/…``, ``loss_/home/…``), or written so by wandb: relative to TensorBoard log
  dirs' common root (``home/alice/runs/…``), ``/`` made ``_`` (wandb 0.15's key for a
  TensorBoard image, ``_home_alice_data_…``), and the media directories under such a key
  (``media/images/val/home/alice/…``), each named on its own;
- a leading ``//home/…`` (a root of "/" joined with a path);
- what client libraries print: a printed YAML config's ``hmac_key: X`` / ``creds: X`` /
  ``basic_auth: X`` (keys ``key_secrecy`` reads as credentials in a config, unread in text), a
  cookie jar's repr, SMTP's ``AUTH PLAIN``, ``mysqldump -pX`` in a CalledProcessError's list,
  pydantic's shortened ``'...word': 'X'``, percent-encoded URL passwords and JSON in a form body,
  and base64 after a credential's word in prose (its "/" and "=" padding);
- what the agent writes about a run into the bundle: ``seal --report`` took ``redact``'s whole
  output into the manifest (the run's directory and the copy's: a user's and a patient's
  names), and the report named the user's own dropped files (``P1234_notes.txt``) as they were.

- text shapes: Markdown (``- **Password:** X``, ``| **password** | X |``), PHP's and Perl's
  ``=>``, HTML-escaped JSON, XML whose attribute names the secret (``<entry key="db.password">``),
  a CSV row ``db_password,X``, a table cell ``DB password`` with a blank; a table logged as a
  header row and rows (``[["user", "password"], ["ml", X]]``, pandas' ``to_dict("split")``);
- a tool's letter flag in a command kept in a config or printed as a list (``["curl", "-u",
  "ml:X"]``, ``sshpass -p``, ``redis-cli -a``, ``docker login -p``).

And, from the testers who checked this round's own first drafts, what those mangled: URLs and
relative paths with ``/home/`` in them, lists of class and feature names, ``--max-tokens 4096``,
a config's ``loss_key: loss/total``, an SMTP server's list of mechanisms.

Each is checked on the scrubber or the choke point, and on a real wandb 0.31 run redacted whole;
the ordinary names and values beside them stay.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
from pathlib import Path

import pytest

from redact_helpers import WRITER_PREAMBLE, default_outgoing, history_items, site_tag, write_canary_run
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secrets import Scrubber, compile_patterns

ALNUM = string.ascii_letters + string.digits


def _pw() -> str:
    return "Pw" + "".join(secrets.choice(ALNUM) for _ in range(12)) + "7"


def _user() -> str:
    return "zq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))


def _scrub(text: str) -> str:
    return Scrubber(compile_patterns(), site_tag, True).scrub(text)[0]


def _scrub_name(name: str) -> str:
    return Scrubber(compile_patterns(), site_tag, True).scrub_name(name)[0]


def test_a_value_beside_its_flag_or_key_in_a_list_or_object_goes():
    pw = [_pw() for _ in range(6)]
    value = {
        "argv": ["train.py", "--epochs", "5", "--db-password", pw[0], "--hf-token", pw[1], "--no-auth", "--lr", "0.1"],
        "command": ["${env}", "python", "${program}", "--db-password", pw[2], "${args}"],
        "env": [{"name": "DB_PASSWORD", "value": pw[3]}, {"name": "EPOCHS", "value": "5"}],
        "headers": [["X-Api-Key", pw[4]], ["Accept", "application/json"]],
        "pairs": [["PGPASSWORD", pw[5]], ["PGHOST", "db"]],
    }
    new = default_outgoing(RedactionReport()).value(value, "config")
    text = json.dumps(new)
    assert not [p for p in pw if p in text], text
    # What stands beside them stays: other flags and their values, other entries, other pairs.
    assert new["argv"][:3] == ["train.py", "--epochs", "5"] and new["argv"][-3:] == ["--no-auth", "--lr", "0.1"]
    assert new["env"][1] == {"name": "EPOCHS", "value": "5"}
    assert new["headers"][1] == ["Accept", "application/json"] and new["pairs"][1] == ["PGHOST", "db"]


@pytest.mark.parametrize("template", [
    "val//home/{u}/data/P7126/ct_001.png",       # f"val/{path}"
    "dice//home/{u}/data/ct_002.png",
    "loss_/home/{u}/x",
    "preds-/home/{u}/eval/a",
    "-o/home/{u}/out",
    "//home/{u}/data/x.npy",                     # f"{root}/{rel}" with root "/"
    "home/{u}/runs/P7126/logs/train/epoch_loss",  # wandb: relative to TensorBoard dirs' common root
    "_home_{u}_data_P7126_ct_001.png",           # wandb 0.15: a TensorBoard image's tag, "/" made "_"
    "train/_Users_{u}_scans_a.png",
])
def test_a_home_glued_to_a_name_goes_with_its_user(template):
    u = _user()
    name = template.format(u=u)
    assert u not in _scrub_name(name), name


@pytest.mark.parametrize("name", [
    "train/loss", "home/score", "val/home_team", "_home_advantage", "https://home/x/y", "http://x.org/home/a",
    "eval//class/0", "home_team/goals",
])
def test_names_that_only_look_so_stay(name):
    assert _scrub_name(name) == name


def _b64() -> str:
    import base64
    while True:
        v = base64.b64encode(secrets.token_bytes(16)).decode()
        if "/" in v and any(ch.isdigit() for ch in v) and any(ch.isupper() for ch in v) and any(ch.islower() for ch in v):
            return v


@pytest.mark.parametrize("template", [
    "  hmac_key: {pw}", "    license_key: {pw}", "  creds: {letters}", "  pat: {pw}", "  basic_auth: mlsvc:{letters}",
    "  bearer: {pw}", "GITHUB_PAT={pw}", "- signing_key: {pw}",
    "<RequestsCookieJar[<Cookie sessionid={pw} for 127.0.0.1/>]>",
    "Cookie(version=0, name='JSESSIONID', value='{pw}', port=None, port_specified=False)",
    "send: 'AUTH PLAIN {b64}\\r\\n'",
    "Command '['mysqldump', '-h', 'db.internal', '-u', 'ml', '-p{pw}', 'icu_cohort']' returned non-zero exit status 2.",
    "  Input should be a valid integer [type=int_type, input_value={{'host': 'db.internal', '...word': '{pw}'}}, input_type=dict]",
    "body: dsn=postgresql%3A%2F%2Fml%3A{pw}%40db.internal%3A5432%2Ficu&x=1",
    "body: options=%7B%22db_password%22%3A+%22{pw}%22%7D",
    "Using password {b64}", "pseudonymisation secret is {b64}",
])
def test_what_client_libraries_print_loses_its_secret(template):
    pw, b64 = _pw(), _b64()
    letters = "".join(secrets.choice(string.ascii_letters) for _ in range(7)) + "QxZkWp"
    line = template.format(pw=pw, b64=b64, letters=letters)
    secret = next(v for v in (pw, b64, letters) if v in line)
    assert secret not in _scrub(line), line


@pytest.mark.parametrize("text", [
    "  sort_key: date", "  monitor_key: val_loss", "  idempotency_key: str | None = None,", "        self._key = key",
    "        dense_keys=params.dense_keys,", "  idempotency_key=idempotency_key,", "google-auth==2.29.0", "  FILE_PAT: *.jpg", "  auth: None", "  sig: 0.5",
    "  cache_key: abc123", "  key: value", "  tokens: 512", "  token_type: bearer", "password reset complete",
])
def test_config_and_code_lines_that_only_look_so_stay(text):
    assert _scrub(text) == text


@pytest.mark.parametrize("template", [
    "Namespace(lr=0.001, hmac_key='{pw}')", "StorageConfig(bucket='ct-scans', minio_creds='{pw}')",
    'hmac_key = "{pw}"', "- model.signing_key={pw}", "  +storage.hmac_key={pw}", "storage.hmac_key: {pw}",
    "<SimpleCookie: sessionid='{pw}'>", "<Morsel: JSESSIONID={pw}>", "Generated password is {urlsafe}",
    "cached https:__ml:{pw}@minio.internal:9000_models_resnet50.pt", "  gitlab.pat: {pw}",
])
def test_the_forms_a_second_look_found_lose_their_secret(template):
    import base64
    pw = _pw()
    urlsafe = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()
    while not (any(ch in urlsafe for ch in "-_") and any(ch.isdigit() for ch in urlsafe)
               and any(ch.isupper() for ch in urlsafe) and any(ch.islower() for ch in urlsafe)):
        urlsafe = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()
    line = template.format(pw=pw, urlsafe=urlsafe)
    secret = pw if pw in line else urlsafe
    assert secret not in _scrub(line), line


@pytest.mark.parametrize("text", [
    "See https://docs.example.org/home/guide/install for details.", "https://wiki.example.com/Users/Guide/Setup",
    "see https://github.com/org/repo/blob/main/home/users/README.md", "Loaded template src/home/views/index.html",
    "Saving to home/models/checkpoint/best", "Users/Shared/Data is not writable", "match/_home_team_xg",
    "loss_key: loss/total", "pred_key: logits_0", "gt_key: gt_masks_v2", "resume_key: epoch_12",
    "name_pat: resnet\\d+", "layer_pat: blocks.11.attn", "proxy_auth: kerberos5",
    "reply: b'250-AUTH PLAIN LOGIN XOAUTH2\\r\\n'", "server advertises AUTH PLAIN supported",
])
def test_what_this_rounds_first_drafts_mangled_stays(text):
    assert _scrub(text) == text


def test_lists_of_names_and_counts_stay_and_an_entry_named_by_key_goes():
    pw = _pw()
    value = {"classes": ["pass", "fail"], "inputs": ["input_tokens", "attention_mask"], "pairs": [["tokens", "labels"]],
             "metrics": ["train.loss", "train.tokens", "train.lr"], "evals": ["humaneval.pass", "mbpp.pass", "mbpp.score"],
             "opts": ["DATASETS.TOKENS", "coco_2017_train"],
             "argv": ["--max-tokens", "4096", "--num-tokens", "512", "--pad-token", "[PAD]"]}
    assert default_outgoing(RedactionReport()).value(value, "config") == value
    # The label is read before a key that reads as a credential (``env_key``) replaces it.
    from tfwb_agent.redact import meta
    rep = RedactionReport()
    entries = {"env": [{"key": "DB_PASSWORD", "value": pw}], "tags": [{"Key": "HF_TOKEN", "Value": pw + "t"}],
               "params": [{"ParameterKey": "smtp_password", "ParameterValue": pw + "s"}]}
    for k, v in entries.items():
        new, _ = meta.redact_config_value(k, v, DEFAULT_POLICY, default_outgoing(rep), site_tag, rep, ())
        assert pw not in json.dumps(new), new


@pytest.mark.parametrize("template", [
    "- **Password:** {pw}", "**password** = {pw}", "[password] => {pw}", "'password' => '{pw}'",
    "&quot;password&quot;: &quot;{pw}&quot;", "&#x27;api_key&#x27;: &#x27;{pw}&#x27;",
    "│ DB password │ {pw} │", "| **password** | {pw} |", "| `api_key` | `{pw}` |", "| API key | {pw} |",
    "db_password,{pw}", '<entry key="db.password">{pw}</entry>', '<param name="password">{pw}</param>',
    '<input type="password" name="pw" value="{pw}">',
])
def test_text_shapes_lose_their_secret(template):
    pw = _pw()
    assert pw not in _scrub(template.format(pw=pw))


@pytest.mark.parametrize("text", [
    "- **Pad token:** [PAD]", "[token_count] => 512", "['user', 'password', 'host']", "| user | password | host |",
    "password,host,port", "tokens -> Embedding -> Transformer -> Dense", '<input type="password" name="pw">',
    "        return self.secret == other.secret",
])
def test_headers_and_code_beside_them_stay(text):
    assert _scrub(text) == text


def test_a_table_as_a_header_and_rows_loses_the_cells_under_a_credentials_column():
    pw = [_pw() for _ in range(3)]
    value = {"rows": [["user", "password", "host"], ["ml", pw[0], "db"], ["etl", pw[1], "db2"]],
             "split": {"columns": ["user", "api_key"], "index": [0], "data": [["ml", pw[2]]]},
             "pairs": [["X-Api-Key", pw[0]], ["Accept", "application/json"]],
             "plain": [["user", "host"], ["ml", "db"]]}
    new = default_outgoing(RedactionReport()).value(value, "config")
    assert not [p for p in pw if p in json.dumps(new)], new
    assert new["rows"][0] == ["user", "password", "host"] and new["rows"][1][::2] == ["ml", "db"]
    assert new["pairs"][1] == ["Accept", "application/json"] and new["plain"] == value["plain"]


def test_a_tools_letter_flag_takes_its_secret_in_a_kept_command_and_in_its_repr():
    pw = [_pw() for _ in range(4)]
    commands = [["curl", "-u", "ml:" + pw[0], "https://minio.internal"], ["sshpass", "-p", pw[1], "ssh", "gpu01"],
                ["/usr/bin/redis-cli", "-a", pw[2]], ["docker", "login", "-u", "ml", "-p", pw[3], "registry"]]
    plain = [["python", "-p", "3"], ["docker", "run", "-p", "8080:80", "img"]]   # docker run's -p maps a port
    new = default_outgoing(RedactionReport()).value(commands + plain, "config")
    assert not [p for p in pw if p in json.dumps(new)], new
    assert new[-2:] == plain and new[1][3:] == ["ssh", "gpu01"]
    assert _scrub(repr(plain[1])) == repr(plain[1])
    for cmd in commands:     # as a CalledProcessError prints it
        line = f"Command '{cmd!r}' returned non-zero exit status 1."
        assert not [p for p in pw if p in _scrub(line)], line


@pytest.mark.parametrize("template", [
    "*Password*: {pw}", "db_password;{pw}", "'db_password','{pw}'", "db_password, {pw}",
    "<property><name>fs.s3a.secret.key</name><value>{pw}</value></property>",
    "&#034;password&#034;: &#034;{pw}&#034;", "&apos;password&apos;: &apos;{pw}&apos;",
    "unzip -o -P {pw} data.zip", "sqlcmd -S db -U sa -P {pw}", "az login --service-principal -u app -p {pw}",
    "ldapsearch -D cn=admin -w {pw}", "curl -uml:{pw} https://minio.internal", "podman login -u ml -p {pw}",
    "AWS secret key is {pw}",
])
def test_variants_of_this_rounds_forms_lose_their_secret(template):
    pw = _pw()
    assert pw not in _scrub(template.format(pw=pw))


def test_variants_in_json_lose_their_secret_and_ordinary_tables_and_commands_stay():
    pw = [_pw() for _ in range(10)]
    value = {"sudo": ["sudo", "curl", "-u", "ml:" + pw[0], "https://x"], "7z": ["7z", "x", "-p" + pw[1], "d.7z"],
             "unzip": ["unzip", "-P", pw[2], "d.zip"], "dump": ["mysqldump", "-u", "ml", "-p" + pw[3], "cohort"],
             "rds": [{"ParameterName": "master_password", "ParameterValue": pw[4]}],
             "kv": [{"Name": "DB_PASSWORD", "Val": pw[5]}], "int_col": [["user", "password", 0], ["ml", pw[6], 1]],
             "index": [["", "user", "password"], [0, "ml", pw[7]]], "ragged": [["user", "password"], ["ml", pw[8]], []],
             "cookies": {"csrftoken": "abc", "sessionid": pw[9]}}
    new = default_outgoing(RedactionReport()).value(value, "config")
    assert not [p for p in pw if p in json.dumps(new)], new
    plain = {"vocab": [["token", "count"], ["the", 10]], "tags": [["token", "tag"], ["John", "B-PER"]],
             "special": [["name", "token"], ["pad", "<pad>"]], "evals": [["model", "pass_rate"], ["gpt2", "0.12"]],
             "split": {"columns": ["text", "token"], "data": [["hello world", "hello"]]},
             "7z": ["7z", "a", "-p", "ckpt.7z"], "keygen": ["ssh-keygen", "-N", "", "-f", "deploy_key"],
             "curl": ["curl", "-u", "ml", "https://x"], "docker": ["docker", "run", "-p", "8080:80", "img"]}
    assert default_outgoing(RedactionReport()).value(plain, "config") == plain


@pytest.mark.parametrize("text", [
    "metric,value\npass_rate,0.87\npass_at_1,0.42\nn_pass,3", '<param name="max_tokens">512</param>',
    '<metric id="token_acc" value="0.91"/>', "| pad token | <pad> |", "- **Pad token:** `<pad>`",
    "{&quot;token_acc&quot;: &quot;0.91&quot;, &quot;lr&quot;: 0.001}", "{\"max_tokens\"=>512, \"lr\"=>0.001}",
    "Command ['7z', 'a', '-p', 'ckpt.7z', 'ckpt/']", '<input class="sk-toggleable__control" id="sk-estimator-id-1">',
])
def test_ordinary_output_the_first_drafts_of_these_read_stays(text):
    assert _scrub(text) == text


WRITER = WRITER_PREAMBLE + r'''import sys, numpy as np, wandb
run = wandb.init(project="probe", dir=root, config={
    "argv": ["train.py", "--db-password", c["pw1"], "--epochs", "3"],
    "job": {"env": [{"name": "DB_PASSWORD", "value": c["pw2"]}]},
    "headers": [["X-Api-Key", c["pw3"]]],
    "data_root": "//home/" + c["user1"] + "/data",
})
path = "/home/%s/data/%s/ct_001.png" % (c["user2"], c["pid"])
for step in range(3):
    run.log({f"val/{path}": wandb.Image(np.zeros((8, 8, 3), np.uint8)), f"dice/{path}": 0.25 * step,
             "loss": 1.0 / (step + 1)}, step=step)
run.summary["launch"] = ["python", "train.py", "--hf-token", c["pw4"]]
run.finish()
'''


def test_a_real_run_carries_none_of_them_out(tmp_path):
    from tfwb_agent.redact.run import redact_run

    c = {"pw1": _pw(), "pw2": _pw(), "pw3": _pw(), "pw4": _pw(), "user1": _user(), "user2": _user(),
         "pid": f"P{10 ** 6 + secrets.randbelow(10 ** 6)}"}
    run_dir = write_canary_run(WRITER, tmp_path, c)
    src = b"".join(f.read_bytes() + str(f).encode() for f in run_dir.rglob("*") if f.is_file())
    assert all(v.encode() in src for v in c.values()), "the run does not carry every canary"
    out = tmp_path / "out" / run_dir.name
    redact_run(run_dir, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q))
    blob = b"".join((f.read_bytes() if f.is_file() else b"") + str(f).encode() for f in out.rglob("*"))
    assert not [k for k, v in c.items() if v.encode() in blob]
    # The metrics are there, under the same (scrubbed) key in every row; the image names a file
    # the run carries.
    history = history_items(out)
    assert history[("loss",)] == "0.3333333333333333"
    dice = [k for k in history if k[0].startswith("dice/")]
    assert len(dice) == 1 and history[dice[0]] == "0.5", sorted(history)
    image = json.loads(history[next(k for k in history if k[0].startswith("val/") and k[-1] == "path")])
    assert (out / "files" / image).is_file(), image


SEALED_WRITER = WRITER_PREAMBLE + r'''import wandb
run = wandb.init(project="probe", dir=root)
for name in (c["pid"] + "_seg_notes.txt", "report_for_" + c["user"] + ".txt"):
    with open(os.path.join(run.dir, name), "w") as f:
        f.write("notes\n")
run.log({"loss": 0.5})
run.finish()
'''


def test_what_the_bundle_says_about_a_run_names_neither_its_paths_nor_its_dropped_files(tmp_path):
    """The tour's way (``redact RUN --out DIR > r.json``, then ``seal RUN --report r.json``), and
    the daemon's (``scan --seal``): the manifest's report holds no path of the node's and no name
    of a file of the user's that did not leave."""
    from conftest import agent
    from seal_helpers import make_site

    c = {"pid": f"P{10 ** 6 + secrets.randbelow(10 ** 6)}", "user": _user()}
    data = tmp_path / "volume" / c["user"] / (c["pid"] + "-cohort")
    data.mkdir(parents=True)
    run_dir = write_canary_run(SEALED_WRITER, data, c)
    site = make_site(tmp_path / "site")
    key = tmp_path / "site" / "node-state" / "redact.key"     # as the config names it
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    redacted = tmp_path / "redacted"
    report = tmp_path / "redacted.json"
    report.write_text(agent(site.node_cfg, "redact", str(run_dir), "--out", str(redacted)).stdout)
    assert c["pid"] in report.read_text()       # the node's own output names the run's directory
    sealed = json.loads(agent(site.node_cfg, "seal", str(redacted / run_dir.name), "--report", str(report)).stdout)
    man = subprocess.run(["bash", "-o", "pipefail", "-c", f"age -d -i '{site.gw_identity}' '{sealed['bundle']}' "
                          "| zstd -d -q | tar -xOf - MANIFEST.json"], capture_output=True, text=True, check=True).stdout
    assert c["pid"] not in man and c["user"] not in man and str(tmp_path) not in man
    dropped = json.loads(man)["redaction"]["files_dropped_or_scrubbed"]
    assert sum(f["path"].startswith("[file:") and f["path"].endswith(".txt") for f in dropped) == 2, dropped


# -- an adversary for the JSON neighbours: shapes the rules were written around, placed where
# they were not (any depth, beside any noise, in any position of a list or a dict) -----------------
from hypothesis import given, settings, strategies as st  # noqa: E402

_WORDS = st.sampled_from(["loss", "acc", "token", "pass", "train", "--lr", "0.1", "-p", "user", "name", "value",
                          "curl", "docker", "key", "columns", "data", "", "home", "PGHOST", "3"])
_NOISE = st.recursive(st.one_of(_WORDS, st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.none()),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(_WORDS, inner, max_size=4)), max_leaves=12)
_SHAPES = [
    lambda s: ["train.py", "--db-password", s],
    lambda s: ["PGPASSWORD", s],
    lambda s: {"name": "DB_PASSWORD", "value": s},
    lambda s: {"Key": "smtp_password", "Value": s},
    lambda s: [["user", "password", "host"], ["ml", s, "db"]],
    lambda s: {"columns": ["user", "api_key"], "data": [["ml", s]]},
    lambda s: ["sudo", "curl", "-u", "ml:" + s, "https://x"],
    lambda s: ["mysqldump", "-u", "ml", "-p" + s],
    lambda s: {"db_password": s},
]


def _plant(noise, shape, at: int):
    """``shape`` put into ``noise``: inside its first list or dict found at position ``at``, or
    beside it."""
    if isinstance(noise, list) and noise:
        noise = list(noise)
        noise.insert(at % (len(noise) + 1), shape)
        return noise
    if isinstance(noise, dict) and noise:
        return dict(noise, **{f"k{at}": shape})
    return [noise, shape]


@settings(max_examples=200, deadline=None)
@given(noise=_NOISE, which=st.integers(0, len(_SHAPES) - 1), at=st.integers(0, 8), wrap=st.integers(0, 3))
def test_a_credential_beside_its_key_never_survives_wherever_it_is_put(noise, which, at, wrap):
    secret = "Pw" + "Zq8" * 4 + "x7"
    value = _plant(noise, _SHAPES[which](secret), at)
    for _ in range(wrap):                          # deeper: under ordinary keys and lists
        value = {"cfg": [value]} if wrap % 2 else [{"run": value}]
    out = json.dumps(default_outgoing(RedactionReport()).value(value, "config"))
    assert secret not in out, (value, out)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(["val", "test/pred", "dice", "x"]),
       user=st.text(alphabet=st.sampled_from(string.ascii_letters + string.digits), min_size=3, max_size=12),
       pid=st.integers(10 ** 6, 2 * 10 ** 6 - 1))
def test_a_key_built_from_a_home_path_keeps_its_start_whatever_the_names_in_it(prefix, user, pid):
    """``val//home/<user>/data/<pid>/ct_001.png`` (a media key wandb builds from a path): the
    path goes, its start stays. With a random user name the part before ``.png`` can read as
    a random token (1.5 % of `_user()` names did): it took ``val/`` with it, and the test above
    failed in CI now and then."""
    key = f"{prefix}//home/{user}/data/P{pid}/ct_001.png"
    out = _scrub(key)
    assert out.startswith(prefix + "/") and f"/{user}/" not in out and f"P{pid}" not in out, out


def test_a_random_token_glued_to_a_home_path_still_goes():
    """A home's path inside a random-looking token is the path rule's; the token's part before
    it is judged alone, and a random one there goes too."""
    token = "Zq8Lm3Vx7Rt2Kp9Wn4Hb6Yc1Jd5Gf0Ts8Ae"   # fixed: 1 random draw in 20 reads as a word's
    out = _scrub(f"{token}/home/alice/data/ct_001.png")
    assert token[4:] not in out and "alice" not in out, out


def test_a_credential_token_as_a_pair_key_or_a_column_loses_its_value_and_counts_stay():
    """``hf_token``, ``access_token``: a token the word before names as a credential, whatever
    its case and shape (a fuzzer found the lower-case pair and column forms kept); so does a
    password's word past a number or glued to another (``password_2``, ``PGPASSWORD``). A number
    under one goes too; ``max_tokens``, ``pad_token``, ``use_auth_token`` and a vocabulary's ``token``
    column are other words."""
    x = "rIReqOx8R3+Lr02Dk7bfohw"
    for value in ([["user", "ml"], ["hf_token", x]], [["user", "access_token"], ["ml", x]], ["auth_token", x],
                  {"columns": ["user", "hf_token"], "data": [["ml", x]]}, {"HF_TOKEN": 48213377091},
                  {"hub": {"access_token": 48213377091}}, {"PGPASSWORD": 48213377091}, ["PGPASSWORD", 48213377091],
                  {"db": {"password_2": 48213377091}}, [["user", "password_2"], ["ml", x]]):
        out = json.dumps(default_outgoing(RedactionReport()).value(value, "config"))
        assert x not in out and "48213377091" not in out, (value, out)
    plain = {"max_tokens": 4096, "pad_token": "<pad>", "use_auth_token": True, "tokens": 512,
             "vocab": [["token", "count"], ["the", "10"]]}
    assert default_outgoing(RedactionReport()).value(plain, "config") == plain


def test_a_value_that_starts_with_two_dashes_is_no_flag_after_a_secret_one():
    """A flag that takes no value keeps the next flag (``--password --lr 0.1``), but a value
    that starts with "--" (1 in 4,096 urlsafe tokens) is a value, not a flag."""
    o = default_outgoing(RedactionReport())
    for value in (["train.py", "--password", "--6eNas8CsYZxik39Q=="], ["PGPASSWORD", "--K4ynsZg5ZbhKV"],
                  [["user", "ml"], ["password", "--K4ynsZg5ZbhKV"]]):
        out = json.dumps(o.value(value, "config"))
        assert "6eNas8CsYZ" not in out and "K4ynsZg5Zb" not in out, out
    plain = ["train.py", "--password-stdin", "--lr", "0.1", "--TRAIN.LR", "0.2"]
    assert o.value(plain, "config") == plain


def test_a_number_written_as_a_string_is_read_as_a_number():
    """A Kubernetes env entry's value is always a string, and so is a setting read from the
    environment: ``"4096"`` under ``MAX_TOKENS`` is the count ``4096`` is (the ``*token*`` glob
    took it), ``"none"`` under ``auth`` the literal; under a key that names a credential they go
    as ``1234`` does."""
    o = default_outgoing(RedactionReport())
    plain = {"env": [{"name": "MAX_TOKENS", "value": "4096"}], "max_new_tokens": "256", "pass_rate": "0.9",
             "token_budget": "1e5", "auth": "none", "use_auth_token": "true"}
    assert o.value(plain, "config") == plain
    for value in ({"db_password": "1234"}, [{"name": "DB_PASSWORD", "value": "4096"}], {"HF_TOKEN": "98765"}):
        out = json.dumps(o.value(value, "config"))
        assert "1234" not in out and "4096" not in out and "98765" not in out, out
