"""What a later round of testers got through the default policy, in the forms ordinary libraries
and frameworks write:

- media logged as a list (``[wandb.Video(...), ...]``, Audio, Object3D): each item's caption,
  original path and unkeyed digest sat in the sequence's inner list (``audio``, ``videos``,
  ``objects``), which only the outer captions were rewritten around;
- an object of a type the redactor does not know (``WBTraceTree``: prompts, responses, a system
  prompt) left as plain JSON, scrubbed of secrets only: it now fails closed, dropped;
- keys declared sensitive inside a dict: a nested config entry (``case.patient_id``), a dict
  logged whole into the summary (``run.summary["best"] = {"patient_id": ...}``);
- credentials under keys no rule read: ``{"wandb": {"key": X}}``, ``db_creds``;
- command lines: a yacs/detectron2 override pair (``DATASETS.DB_PASSWORD X``), ``--basic-auth``,
  ``--bearer``, ``REDIS_AUTH=X``;
- console text: Oracle's ``user/password@host:1521/svc``, ``PROXY_AUTH=user:pw`` in ``env``
  output, ``{'MONGO_AUTH': ...}``, webhook secrets in a URL's path, ``~user/`` homes, a config
  printed as a rich table (``│ db_password │ X │``);
- the class names of an image's boxes and masks and a custom chart's title, which wandb keeps in
  the config's ``_wandb`` (the image and the chart's table hashed, their words raw);
- ``output.log``, where a line of stderr stood between ``print("password:")`` and the value
  (the records, each stream joined on its own, lost it; the file kept it).

Each is checked on the scrubber or the function that owns it, and the record-level ones on a
real wandb 0.31 run redacted whole; the ordinary text beside them stays.
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

from redact_helpers import WRITER_PREAMBLE, default_outgoing, history_items, site_tag, write_canary_run
from tfwb_agent.redact import meta
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secret_rules import key_secrecy
from tfwb_agent.redact.secrets import Scrubber, compile_patterns, scrub_args

ALNUM = string.ascii_letters + string.digits


def _pw() -> str:
    return "Pw" + "".join(secrets.choice(ALNUM) for _ in range(12)) + "7"


def _hex(n: int) -> str:
    return secrets.token_hex(n // 2)


def _scrub(text: str) -> str:
    return Scrubber(compile_patterns(), site_tag, True).scrub(text)[0]


@pytest.mark.parametrize("template", [
    "Loading cohort from Oracle: clarity_ro/{pw}@clarity-db.internal:1521/CLARPRD",
    "ORA_DSN=svc_ml/{pw}@//ora.internal:1522/ORCLPDB1",
    "PROXY_AUTH=svc-ml:{pw}",
    "DVC_REMOTE_CREDS=svc-ml:{pw}",
    "{{'MONGO_AUTH': 'svc-ml:{pw}', 'HOME': '/root'}}",
    "posting run summary to https://chat.internal/hooks/{lower26}",
    "403 Client Error: Forbidden for url: https://x.webhook.office.com/webhookb2/a@b/IncomingWebhook/{hex32}/c",
    "https://events.pagerduty.com/integration/{hex32}/enqueue",
    "│ db_password      │ {pw} │",
    "┃ mlflow_token ┃ {pw} ┃",
    "| db_password | {pw} |",
    "connect ml_reader/{pw}@oradb.hospital.local/ICUPDB1",
    "uploading with gcs_creds={pw} and proxy_auth=ml:{pw}",
])
def test_console_forms_of_frameworks_lose_their_secret(template):
    pw, lower26, hex32 = _pw(), "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(26)), _hex(32)
    line = template.format(pw=pw, lower26=lower26, hex32=hex32)
    secret = next(s for s in (pw, lower26, hex32) if s in line)
    assert secret not in _scrub(line), line


def test_another_users_home_goes_with_its_name():
    user = "jd" + _hex(6)
    for text in (f"Loading dataset from ~{user}/datasets/icu_ct_v3", f"PosixPath('~{user}/.cache/icu/x')"):
        assert user not in _scrub(text), text


@pytest.mark.parametrize("text", [
    "│ input_tokens        │ (None, 16)        │          0 │ -                 │",
    "│ token_embedding     │ (None, 16, 32)    │     32,000 │ input_tokens[0][… │",
    "        # ~eps/1e-3 of relative cancellation error before it",
    "NCCL_IB_AUTH=none",
    "│ 0 │ token_embedding │ Embedding          │ 23.4 M │ train │",
    "┃ token_f1 ┃ exact_match ┃",
    "│ api_key_env_var │ WANDB_API_KEY │",
    "             r'local|logout|popd|printf|pushd|pwd|read|readonly|set|shift|'",
    "                    proxy_auth=self._proxy.auth,",
    "see docs/guide@v2.1/intro and actions/checkout@v4",
    "git clone https://github.com/org/repo.git && cd repo/src/main",
    "see ~/notes/run.txt",
])
def test_ordinary_text_beside_them_stays(text):
    assert _scrub(text) == text or text.startswith("see ~/"), _scrub(text)


@pytest.mark.parametrize("key", ["db_creds", "creds", "hf_cred", "DVC_CREDS"])
def test_creds_names_a_credential(key):
    assert key_secrecy(key) == "any"


def test_command_lines_lose_the_value_after_such_arguments():
    pw = [_pw() for _ in range(6)]
    argv = ["train_net.py", "--config-file", "x.yaml", "DATASETS.DB_PASSWORD", pw[0], "WANDB.API_KEY", pw[1],
            "SOLVER.BASE_LR", "0.01", "--basic-auth", "ml:" + pw[2], "--bearer", pw[3], "--http-auth", pw[4],
            "REDIS_AUTH=" + pw[5], "--no-auth", "--epochs", "5", "--auth-type", "basic",
            "MLFLOW.TRACKING_TOKEN", pw[0] + "t", "+db.password", pw[1] + "h", "MODEL.TOKEN_DIM", "512"]
    out = scrub_args(argv, _scrub, lambda v: "[redacted]")
    assert not [p for p in pw if any(p in a for a in out)], out
    assert out[7:9] == ["SOLVER.BASE_LR", "0.01"] and out[16:21] == ["--no-auth", "--epochs", "5", "--auth-type", "basic"]
    assert out[-2:] == ["MODEL.TOKEN_DIM", "512"], out


def test_nested_config_entries_go_whole_when_declared_or_named_so():
    rep = RedactionReport()
    out = default_outgoing(rep)
    value = {"patient_id": "P7126", "site": "north", "wandb": {"key": "k" + _hex(38)}, "sort": {"key": "date"},
             "cohort": {"mrn": "MRN12345678"}}
    new, changed = meta.redact_config_value("case", value, DEFAULT_POLICY, out, site_tag, rep,
                                            ("case.patient_id", "case/cohort/mrn"))
    text = json.dumps(new)
    assert changed and "P7126" not in text and "MRN12345678" not in text and value["wandb"]["key"] not in text
    assert new["site"] == "north" and new["sort"] == {"key": "date"}, new


WRITER = WRITER_PREAMBLE + r'''import numpy as np, wandb
from PIL import Image
import tfwb_trainer
run = tfwb_trainer.init(project="forms", runs_dir=root, config={"case": {"patient_id": c["pid1"], "arm": "b"}},
                        sensitive=["case.patient_id", "best.patient_id"])
frames = [Image.fromarray(np.random.randint(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
frames[0].save("a.gif", save_all=True, append_images=frames[1:])
frames[1].save("b.gif", save_all=True, append_images=frames[2:])
run.log({"val/echo": [wandb.Video("a.gif", caption="echo " + c["pid2"]), wandb.Video("b.gif", caption="ok")],
         "val/points": [wandb.Object3D(np.random.rand(12, 3), caption="ct " + c["pid3"]),
                        wandb.Object3D(np.random.rand(12, 3), caption="ok")],
         "loss": 0.25}, step=0)
from wandb.sdk.data_types.trace_tree import Span, WBTraceTree
span = Span(name="llm", span_kind="CHAIN")
span.add_named_result({"prompt": "summarise the notes of " + c["pid4"]}, {"response": "ok"})
run.log({"trace": WBTraceTree(span, model_dict={"system_prompt": "you help " + c["pid4"]}), "loss": 0.5}, step=1)
run.summary["best"] = {"patient_id": c["pid5"], "dice": 0.9}
mask = np.zeros((16, 16), dtype=np.uint8)
mask[2:5, 2:5] = 1
box = {"position": {"minX": 0.1, "maxX": 0.2, "minY": 0.1, "maxY": 0.2}, "class_id": 1, "box_caption": "b"}
seg = wandb.Image(np.random.randint(0, 255, (16, 16, 3), dtype=np.uint8),
                  boxes={"predictions": {"box_data": [box], "class_labels": {1: "nodule of " + c["pid6"]}}},
                  masks={"truth": {"mask_data": mask, "class_labels": {1: "lesion of " + c["pid7"]}}})
points = wandb.Table(data=[[1, 2], [2, 3]], columns=["x", "y"])
run.log({"seg": seg, "roc": wandb.plot.line(points, "x", "y", title="ROC for " + c["pid8"]), "loss": 0.75}, step=2)
import logging
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
print("Database password:", flush=True)
logging.getLogger("loader").warning("prefetch: loaded shard 3/10")
print(c["pw"], flush=True)
tfwb_trainer.finish()
'''


def test_a_real_run_carries_none_of_them_out(tmp_path):
    from tfwb_agent.redact.run import redact_run

    c = {f"pid{i}": f"P{10 ** 6 + secrets.randbelow(10 ** 6)}" for i in range(1, 9)} | {"pw": _pw()}
    run_dir = write_canary_run(WRITER, tmp_path, c)
    src = b"".join(f.read_bytes() for f in run_dir.rglob("*") if f.is_file())
    assert all(v.encode() in src for v in c.values()), "the run does not carry every canary"
    out = tmp_path / "out" / run_dir.name
    redact_run(run_dir, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q))
    blob = b"".join((f.read_bytes() if f.is_file() else b"") + str(f).encode() for f in out.rglob("*"))
    assert not [k for k, v in c.items() if v.encode() in blob]
    history = {"/".join(k): v for k, v in history_items(out).items()}
    assert history["loss"] in ("0.25", "0.5", "0.75")
    # A sequence's items name the files the bundle carries, and the Object3D sequence its own.
    videos = json.loads(history["val/echo/videos"])
    assert [(out / "files" / v["path"]).is_file() for v in videos] == [True, True], videos
    assert all(v["caption"].startswith("hash:") for v in videos)
    objects = json.loads(history["val/points/objects"])
    names = json.loads(history["val/points/filenames"])
    assert names == [o["path"].removeprefix("media/object3D/") for o in objects] and len(names) == 2
    assert all((out / "files" / o["path"]).is_file() for o in objects)
    # The trace is of a type the redactor does not know: it does not leave.
    assert not [k for k in history if k.startswith("trace/") and "root_span" in k], sorted(history)


def _console(text: str) -> str:
    """``text`` as the console's scrub releases it, fed line by line."""
    from tfwb_agent.redact.console import TextStream

    out = default_outgoing(RedactionReport())
    stream = TextStream(lambda s: out.text(s, "console"))
    return "".join(stream.feed(line) for line in text.splitlines(keepends=True)) + stream.close()


@pytest.mark.parametrize("template", [
    # rich's log handler at 80 columns: a long word folded, each line padded to its column
    "[05:09:16] INFO     Connecting to feature store:                     <string>:15\n"
    "                    postgresql://svc_icu_training_ro:{a}            \n"
    "                    {b}@db-primary.icu.hospital.internal:5432/            \n"
    "                    features                             \n",
    "           INFO     Exporting checkpoint with                        <string>:16\n"
    "                    AWS_SECRET_ACCESS_KEY=8s5CbVDwzhtP32Fd{a}            \n"
    "                    {b}                                                \n",
    # pprint's split of a long string: the flag closes one literal, its value opens the next
    "{{'cmd': 'python train.py --data-root /data/shared/cohorts/icu_ct_v3/train --db-password '\n"
    "        '{a}{b} --epochs 40 --lr 0.001 --batch-size 16 --amp'}}\n",
])
def test_a_secret_a_wrapper_folded_in_two_is_found_unfolded(template):
    a, b = _pw()[:10], _pw()[:10]
    new = _console(template.format(a=a, b=b))
    assert a not in new and b not in new, new
    assert new.count("\n") == template.count("\n")


def test_lines_that_only_look_folded_stay():
    text = ("Epoch 1/10 - loss: 0.2345 - accuracy: 0.9123 - val_loss: 0.3456 - val_accuracy: 0.8812\n"
            "passes: 3, pass_rate: 0.91, bypass: false\n"
            "[eval] exact_match=71.2 f1=80.5 pass_rate=0.82 secret_leak_rate=0.0 and so on for a while\n"
            "Successfully built flash-attn\n"
            "    raise ValueError('the value given for the learning rate schedule is not one we know')\n"
            "ValueError: the value given for the learning rate schedule is not one we know of\n")
    assert _console(text) == text


@pytest.mark.parametrize("key, value, goes", [
    ("tokenizer", "bert-base-uncased", False), ("tokenizer_name", "gpt2", False), ("pad_token", "<pad>", False),
    ("eos_token", "</s>", False), ("num_tokens", "512 (approx)", True), ("s3_key", "cohorts/2024/ct.parquet", False),
    ("hf_token", "hf_" + "x" * 30, True), ("token", "abc123def456", True), ("tokenizer_secret", "s3cr3t-x", True),
    ("access_token", "abc", True), ("db_key", "abc", True),
])
def test_a_tokenizer_setting_is_no_credential_though_the_default_glob_names_it(key, value, goes):
    assert DEFAULT_POLICY.config_value_redacted(key, value) is goes


def test_output_log_loses_what_the_console_records_lost_and_nothing_more():
    """What the records' scrub took out is looked for in output.log whole, and only a value
    that could be a secret (a word of letters alone is none: ``Embedding``)."""
    out = default_outgoing(RedactionReport())
    pw = _pw()
    out.text("Database password:\n" + pw + "\n", "console")
    out.text("│ db_password │ Embedding │\n", "console")
    log = f"Database password:\nWARNING loader: shard 3/10\n{pw}\nBertEmbeddings(Embedding(30522))\n{pw}xyz\n"
    new = out.seen_elsewhere(log)
    assert new.count("[redacted:seen:") == 1 and pw not in new.splitlines()[2], new
    assert "BertEmbeddings(Embedding(30522))" in new and f"{pw}xyz" in new


LAST_LINE_WRITER = WRITER_PREAMBLE + r'''import wandb
run = wandb.init(dir=root, project="forms")
run.log({"loss": 0.5})
print("the only line of this run, long enough to wait for a fold that never comes: " + c["word"], flush=True)
run.finish()
'''


def test_a_last_line_held_for_a_fold_still_comes_before_the_runs_end(tmp_path):
    """A long line waits for the next (it may be folded); when none comes, it goes with the
    exit record, before it: wandb sync sends no console after the run's end."""
    from tfwb_agent.redact.run import redact_run
    from tfwb_agent.wandb_log import read_records

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(tmp_path), CANARY_VALUES=json.dumps({"word": "plainword"}))
    p = subprocess.run([sys.executable, "-c", LAST_LINE_WRITER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    out = tmp_path / "out" / run_dir.name
    redact_run(run_dir, out, DEFAULT_POLICY, os.urandom(32), lambda q: Path(q))
    kinds = [rec.WhichOneof("record_type") for _, rec in read_records(next(out.glob("run-*.wandb")))]
    console = [i for i, k in enumerate(kinds) if k in ("output_raw", "output")]
    assert console and max(console) < kinds.index("exit"), kinds


def test_a_fold_among_long_lines_is_searched_whole():
    """A log of long lines each waits for the next (it may be folded): the stream never
    releases a folded line without its continuation, whatever comes after (the records join
    each stream; output.log is read line by line)."""
    a, b = _pw()[:10], _pw()[:10]
    lines = ["[05:09:16] INFO     Exporting checkpoint number 1 of the run to the store:   <string>:15\n",
             f"                    AWS_SECRET_ACCESS_KEY=8s5CbVDwzhtP32Fd{a}            \n",
             f"                    {b}                                                    \n"]
    lines += [f"[05:09:1{i}] INFO     another long log line number {i} that pads to the width of rich   <string>:1{i}\n"
              for i in range(6)]
    new = _console("".join(lines))
    assert a not in new and b not in new and new.count("\n") == len(lines), new
    assert new.splitlines()[3:] == [line.rstrip("\n") for line in lines[3:]]


def test_a_fold_that_never_ends_is_held_in_bounded_memory():
    """Waiting for a fold's end must not hold a stream that folds forever (a pprint of a huge
    list of long strings): what is held stays a few dozen lines, and every line leaves."""
    from tfwb_agent.redact.console import TextStream

    out = default_outgoing(RedactionReport())
    stream = TextStream(lambda s: out.text(s, "console"))
    line = "'" + "x" * 70 + "'\n"   # each line a literal closed and opened again: one long fold
    released, most_held = [], 0
    for _ in range(3000):
        released.append(stream.feed(line))
        most_held = max(most_held, stream.size)
    released.append(stream.close())
    assert most_held <= 80 * len(line), most_held
    assert "".join(released) == line * 3000
