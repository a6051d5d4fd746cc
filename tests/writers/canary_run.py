"""A training process that plants a unique canary in every place training code puts strings.

usage: canary_run.py ROOT

Run by a real wandb client (0.31 with the agent's python, 0.15.12 on Python 3.8 in `.venv-py38`), offline.
The first invocation makes the canaries, then re-executes itself with the command-line ones in
its real argv (``--password VALUE`` and friends), the way a launcher passes them. The run is
written under ``ROOT/wandb``; ``ROOT/canaries.json`` says, for each placement, which strings
must never leave the node (``needles``), which issue-12 path it belongs to, and whether the
default policy must catch it (``policy: default``) or only a site policy with
``patterns = ["P\\d{4}", <e-mail>]`` (``policy: site``). It also holds the numeric metrics the
run logged (to check delivery's integrity) and what could not be logged, with the reason. After
the run it writes TensorBoard event files into ``ROOT/tb-trap`` (canaries with ``policy: trap``,
never part of the run): the delivery test puts them where the run's log dir was.

Canaries are shaped like real secrets (40-hex W&B keys, ghp_, sk-, xoxb-, Bearer, AWS keys,
PEM blocks, ``password: X`` phrases, credentials in URLs) so that a scrubber, not only a rule
that drops a whole record or file, can be what stops them; patient ids (P1234) and e-mail
addresses are site data. Nothing here is a real secret: every value is random per run.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import string
import struct
import subprocess
import sys
import wave

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
STEPS = 5


def rnd(n: int, alphabet: str = ALNUM) -> str:
    while True:
        s = "".join(secrets.choice(alphabet) for _ in range(n))
        # mixed enough to look like a key, and never a plain word
        if alphabet != ALNUM or (any(c.isdigit() for c in s) and any(c.isupper() for c in s)
                                 and any(c.islower() for c in s)):
            return s


def entropy(s: str) -> float:
    import math
    from collections import Counter
    return -sum(c / len(s) * math.log2(c / len(s)) for c in Counter(s).values())


def pem_block() -> tuple[str, list[str]]:
    body = [rnd(64, ALNUM + "+/") for _ in range(4)] + [rnd(24, ALNUM + "+/") + "=="]
    text = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----"
    return text, body


class Registry:
    """placement -> what was planted. ``make`` returns the value to plant."""

    def __init__(self, data: dict | None = None) -> None:
        self.data = data or {"canaries": [], "skipped": {}, "metrics": {}, "notes": []}
        self._pids = {c["needles"][0] for c in self.data["canaries"] if c["shape"] == "pid"}

    def _add(self, placement: str, shape: str, issue: str, policy: str, needles: list[str]) -> None:
        assert placement not in {c["placement"] for c in self.data["canaries"]}, placement
        self.data["canaries"].append({"placement": placement, "shape": shape, "issue": issue,
                                      "policy": policy, "needles": needles})

    def make(self, placement: str, shape: str, issue: str = "", policy: str = "default") -> str:
        """A fresh value of ``shape`` for ``placement``; its secret part is recorded."""
        if shape == "hex40":                                    # a bare W&B API key
            v = needle = rnd(40, HEX)
        elif shape == "ghp":
            v = needle = "ghp_" + rnd(36)
        elif shape == "sk":                                      # OpenAI (legacy shape)
            v = needle = "sk-" + rnd(20) + "T3BlbkFJ" + rnd(20)
        elif shape == "xoxb":                                    # Slack bot token
            v = needle = "xoxb-" + rnd(11, string.digits) + "-" + rnd(13, string.digits) + "-" + rnd(24)
        elif shape == "bearer":
            needle = rnd(40)
            v = "Bearer " + needle
        elif shape == "aws_secret":                               # a bare secret access key
            needle = rnd(18) + "/" + rnd(10) + "+" + rnd(10)
            v = needle
        elif shape == "akia":
            v = needle = "AKIA" + rnd(16, UPPER_DIGITS)
        elif shape == "hf":
            v = needle = "hf_" + rnd(34)
        elif shape == "glpat":
            v = needle = "glpat-" + rnd(20)
        elif shape == "pw":                                       # only its context says "secret"
            v = needle = rnd(24)
        elif shape == "pid":
            while True:
                v = needle = "P%04d" % (1000 + secrets.randbelow(9000))
                if v not in self._pids:
                    self._pids.add(v)
                    break
        elif shape == "email":
            v = needle = rnd(12, string.ascii_lowercase) + "@hospital.example"
        elif shape == "jwt":
            needle = rnd(43, ALNUM + "-_")
            v = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyIn0." + needle
        elif shape == "basic":                                    # Authorization: Basic base64(user:pw)
            import base64
            needle = base64.b64encode(("trainer:" + rnd(20)).encode()).decode()
            v = "Basic " + needle
        elif shape == "stripe":
            v = needle = "sk_live_" + rnd(24)
        elif shape == "pypi":
            v = needle = "pypi-AgEIcHlwaS5vcmc" + rnd(60, ALNUM + "-_")
        elif shape == "google":
            # A Google (Maps, Gemini) API key. Random ones spread their characters less evenly
            # than a high-entropy rule may want about half the time; this one always does, so
            # only a rule that knows the format catches it, every run.
            while True:
                v = needle = "AIza" + rnd(35, ALNUM + "-_")
                if entropy(v) < 4.4:
                    break
        elif shape == "path":                                     # a directory name on the node
            v = needle = "dir-" + rnd(20, string.ascii_lowercase + string.digits)
        else:
            raise ValueError(shape)
        self._add(placement, shape, issue, policy, [needle])
        return v

    def make_pem(self, placement: str, issue: str) -> str:
        text, body = pem_block()
        self._add(placement, "pem", issue, "default", body)
        return text

    def record(self, placement: str, shape: str, issue: str, policy: str, needle: str) -> None:
        """A canary made elsewhere (the host name, a path)."""
        self._add(placement, shape, issue, policy, [needle])

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"][what] = why


# --------------------------------------------------------------------------------------------
# first invocation: make the argv canaries, re-execute with them
# --------------------------------------------------------------------------------------------

def launch(root: str) -> None:
    reg = Registry()
    argv = [sys.executable, os.path.abspath(__file__), root, "--child",
            "--password", reg.make("args_password_two_arg", "pw", "4"),
            "--api-key", reg.make("args_api_key_two_arg", "pw", "4"),
            "--wandb-key", reg.make("args_env_expanded_wandb_key", "hex40", "4+6"),
            "--db-url", "postgres://trainer:" + reg.make("args_url_credentials", "pw", "4") + "@db.internal:5432/scans",
            "OPENAI_API_KEY=" + reg.make("args_env_var_assignment", "pw", "4"),
            "--lr", "0.01"]
    with open(os.path.join(root, "canaries.pending.json"), "w") as f:
        json.dump(reg.data, f)
    sys.stdout.flush()
    os.execv(sys.executable, argv)


# --------------------------------------------------------------------------------------------
# small media files made without extra dependencies
# --------------------------------------------------------------------------------------------

def deep(n: int, leaf: dict) -> dict:
    for i in range(n):
        leaf = {f"l{i}": leaf}
    return leaf


def write_wav(path: str) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(800)))


def write_gif(path: str) -> None:
    from PIL import Image
    frames = [Image.new("RGB", (16, 12), (i * 40, 80, 200 - i * 40)) for i in range(4)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def write_pdb(path: str, compound: str) -> None:
    with open(path, "w") as f:
        f.write(f"COMPND    {compound}\n"
                "ATOM      1  C   UNK A   1       0.000   0.000   0.000  1.00  0.00           C\n"
                "ATOM      2  O   UNK A   1       1.200   0.000   0.000  1.00  0.00           O\n"
                "END\n")


def git_checkout(path: str, reg: Registry) -> None:
    """The training code's checkout: a remote URL with a token in it, an uncommitted change."""
    os.makedirs(path)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_COMMITTER_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_EMAIL="t@example.invalid")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", reg.make("git_user_email", "email", "metadata", "site"))
    git("config", "user.name", "trainer")
    with open(os.path.join(path, "train_settings.py"), "w") as f:
        f.write("LR = 0.01\n")
    git("add", "train_settings.py")
    git("commit", "-q", "-m", "init")
    git("remote", "add", "origin",
        "https://oauth2:" + reg.make("git_remote_token", "glpat", "metadata") + "@gitlab.example.com/ml/scans.git")
    with open(os.path.join(path, "train_settings.py"), "a") as f:   # in diff.patch
        f.write(f"HF_TOKEN = \"{reg.make('git_diff_uncommitted', 'hf', 'metadata')}\"\n")


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------

def tb_write(logdir: str, reg: Registry, tf) -> None:
    """Scalars and a text summary, with a canary in the text and in a tag name."""
    tb_events(logdir, tf, "connected with " + reg.make("tb_text_summary", "hf", "7"),
              "tbsecret/" + reg.make("tb_tag_name", "ghp", "7+5"))


def tb_events(logdir: str, tf, text: str, tag: str) -> None:
    """With tf.summary's low-level writer: TF 2.21 without the tensorboard package has no
    tf.summary.scalar/text, so the plugin metadata is set by hand (what those functions do)."""
    from tensorflow.core.framework import summary_pb2

    def meta(plugin: str):
        return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for s in range(3):
            tf.summary.write("tb/loss", tf.constant(1.0 / (s + 1)), step=s, metadata=meta("scalars"))
            tf.summary.write(tag, tf.constant(0.5 + s), step=s, metadata=meta("scalars"))
        tf.summary.write("tb/notes", tf.constant(text), step=0, metadata=meta("text"))
    writer.flush()
    writer.close()


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

def main(root: str) -> None:
    with open(os.path.join(root, "canaries.pending.json")) as f:
        reg = Registry(json.load(f))
    os.unlink(os.path.join(root, "canaries.pending.json"))

    host = socket.gethostname()
    if os.environ.get("CANARY_HOST") == host:      # the test gave this process its own host name
        reg.record("hostname", "host", "metadata", "default", host)
    user = os.environ.get("LOGNAME", "")
    if user.startswith("cnry"):                     # ... and user name (what getpass reports)
        reg.record("username", "user", "metadata", "default", user)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", TF_CPP_MIN_LOG_LEVEL="2",
                      WANDB_ERROR_REPORTING="false",   # no error reports to the network (0.15 tries)
                      WANDB_DATA_DIR=os.path.join(root, "wandb-data"),
                      WANDB_CACHE_DIR=os.path.join(root, "wandb-cache"),
                      WANDB_CONFIG_DIR=os.path.join(root, "wandb-config"),
                      WANDB_ARTIFACT_DIR=os.path.join(root, "wandb-artifacts"))
    # The key a launcher exported: wandb must not write it anywhere the run carries.
    os.environ["WANDB_API_KEY"] = reg.make("env_wandb_api_key", "hex40", "6")

    checkout = os.path.join(root, "checkout")
    try:
        git_checkout(checkout, reg)
        os.chdir(checkout)
    except (OSError, subprocess.CalledProcessError) as exc:
        reg.skip("git", f"no git checkout: {exc}")
        os.chdir(root)

    import numpy as np
    import tensorflow as tf
    import wandb

    try:
        import tensorboard  # noqa: F401
        has_tb = True
    except ImportError:
        has_tb = False

    config = {
        "lr": 0.01,
        "data": {"source": {"uri": "mysql://reader:" + reg.make("config_nested_url_credentials", "pw", "6") + "@10.1.2.3/scans"},
                 "service": {"backup_key": reg.make("config_nested_bare_wandb_key", "hex40", "6")}},
        "aws": ["eu-west-1", reg.make("config_list_bare_aws_secret", "aws_secret", "6")],
        "headers": {"Authorization": reg.make("config_bearer_header", "bearer", "6")},
        "notes": "db password: " + reg.make("config_password_phrase", "pw", "6"),
        "slack_hook": reg.make("config_slack_token", "xoxb", "6"),
        "mount_" + reg.make("config_key_name_secret", "ghp", "5"): True,
        "cohort": {"lead": reg.make("config_value_email", "email", "5", "site")},
        "billing": {"stripe": reg.make("config_stripe_key", "stripe", "6"),
                    "maps": reg.make("config_google_api_key", "google", "6")},
        "publish": ["--repository", "internal", "-p", reg.make("config_pypi_token", "pypi", "6")],
        "cache_dir": os.path.join(root, "cache"),          # the volume's path (volume_path)
        "deep": deep(30, {"k": reg.make("config_deep_nesting", "akia", "6")}),
    }
    from tfwb_trainer.service_connect import tolerate_late_listen

    tolerate_late_listen()  # wandb 0.15's service tells its port before it listens
    run = wandb.init(
        project="canary", dir=root, config=config,
        notes="rotate " + reg.make("run_notes", "xoxb", "run"),
        tags=["baseline", reg.make("run_tag", "glpat", "run")],
        name="exp-" + reg.make("run_name", "akia", "run"),
        group="grp-" + reg.make("run_group", "hf", "run"),
        job_type="train-" + reg.make("run_job_type", "ghp", "run"),
        sync_tensorboard=has_tb,
    )
    reg.data.update(run_id=run.id, run_dir=os.path.dirname(run.dir), wandb_version=wandb.__version__,
                    tb_patched=has_tb)

    # --- TensorBoard (7) -----------------------------------------------------------------
    # <root>/tb-<canary>/train_<patient id>: the absolute path must not leave; wandb 0.31 names
    # the TensorBoard keys after the part below the root log dir (train_P1234/tb/loss).
    tb_root = os.path.join(root, "tb-" + rnd(20, string.ascii_lowercase + string.digits))
    reg.record("tb_logdir_path", "path", "7", "default", os.path.basename(tb_root))
    logdir = os.path.join(tb_root, "train_" + reg.make("tb_namespace_patient_id", "pid", "7+5", "site"))
    if not has_tb:
        # wandb 0.31 refuses sync_tensorboard=True without the tensorboard package; register the
        # log directory the way its patch would (the same call, the same tbrecord).
        reg.data["notes"].append("tensorboard not installed: sync_tensorboard=True raises 'Please install "
                                 "tensorboard package'; the log dir is registered with run._tensorboard_callback")
        run._tensorboard_callback(logdir, save=True, root_logdir=tb_root)
    tb_write(logdir, reg, tf)
    reg.data["tb_logdir"] = tb_root

    # --- metrics and history strings (1, 5) ---------------------------------------------
    loss, acc = {}, {}
    for step in range(STEPS):
        row = {"loss": 1.0 / (step + 1) + 0.001 * step, "acc": step / 10.0 + 0.05}
        loss[step], acc[step] = row["loss"], row["acc"]
        if step == 1:
            row["status"] = "pushed with " + reg.make("history_string", "ghp", "1")
            row["info"] = {"deep": {"note": "judge " + reg.make("history_nested_string", "sk", "1")}}
            row["notes_list"] = ["ok", reg.make("history_list_string", "xoxb", "1")]
            row["debug/" + reg.make("history_key_secret", "hf", "5")] = 1.0
            row["val/" + reg.make("history_key_patient_id", "pid", "5", "site") + "/dice"] = 0.9
            row["val/" + reg.make("history_key_email", "email", "5", "site") + "/acc"] = 0.5
            row["per_token"] = {reg.make("history_nested_key_secret", "hf", "5"): 1.0}
            row["payload"] = json.dumps({"wandb_key": reg.make("history_json_in_string", "hex40", "1+6")})
            row["greeting"] = "токен\u00a0" + reg.make("history_unicode_context", "ghp", "1")
            row["session"] = reg.make("history_jwt", "jwt", "1")
            row[os.path.join(root, reg.make("history_key_absolute_path", "path", "5"), "hit_rate")] = 0.25
            # a dict that looks like a media object to a redactor that trusts "_type"
            row["lookalike"] = {"_type": "image-file", "path": "media/images/none.png", "width": 2, "height": 2,
                                "caption": "c " + reg.make("history_media_lookalike_caption", "sk", "1"),
                                "extra": reg.make("history_media_lookalike_field", "xoxb", "1")}
            # a value longer than one 32 KiB block of the log: the record is cut in chunks on disk
            row["dump"] = "x" * 33000 + " " + reg.make("history_long_string", "ghp", "1") + " " + "y" * 100
        if step == 2:
            log_media(row, reg, wandb, np, root)
        run.log(row)
    reg.data["metrics"] = {"loss": loss, "acc": acc}

    try:
        run.define_metric("val_" + reg.make("define_metric_name", "akia", "5"), summary="max")
    except Exception as exc:   # noqa: BLE001 - record what this wandb does not do
        reg.skip("define_metric", repr(exc))

    # --- console (3, 6) ----------------------------------------------------------------------
    print("db password:", reg.make("console_print_args", "pw", "3"), flush=True)
    tok = reg.make("console_token_two_writes", "ghp", "3")
    sys.stdout.write("using token " + tok[:17])
    sys.stdout.flush()
    sys.stdout.write(tok[17:] + "\n")
    sys.stdout.flush()
    for line in reg.make_pem("console_pem_line_by_line", "3").splitlines():
        print(line, flush=True)
    print("curl -H 'Authorization: " + reg.make("console_bearer", "bearer", "6") + "' https://api.example.com", flush=True)
    sys.stderr.write("retrying with " + reg.make("console_stderr_openai", "sk", "6") + "\n")
    print("GET /data -H 'Authorization: " + reg.make("console_basic_auth", "basic", "6") + "'", flush=True)
    sys.stderr.flush()
    import logging
    logging.basicConfig(level=logging.INFO)
    logging.warning("slack token %s", reg.make("console_logging_slack", "xoxb", "6"))
    sys.stdout.write("\rloading 10%")
    sys.stdout.write("\rloaded, key " + reg.make("console_carriage_return_wandb_key", "hex40", "6") + "\n")
    sys.stdout.flush()
    print("aws", reg.make("console_aws_key_id", "akia", "6"), reg.make("console_bare_aws_secret", "aws_secret", "6"),
          flush=True)
    print("patient", reg.make("console_patient_id", "pid", "3", "site"), flush=True)
    print("running on", host, flush=True)          # the host canary, in the console
    print("\x1b[1;31mtoken\x1b[0m \x1b[33m" + reg.make("console_ansi_colored", "ghp", "3+6") + "\x1b[0m", flush=True)
    print("x" * 40000 + " key " + reg.make("console_long_line", "hex40", "3"), flush=True)
    tok = reg.make("console_split_across_log_call", "hf", "3")
    sys.stdout.write("hub token " + tok[:15])
    sys.stdout.flush()
    run.log({"probe": 1.0})                         # a history record between the two pieces
    sys.stdout.write(tok[15:] + "\n")
    sys.stdout.flush()
    key = reg.make("console_split_interleaved_stderr", "hex40", "3")
    sys.stdout.write("api key " + key[:20])
    sys.stdout.flush()
    sys.stderr.write("warning: slow disk\n")
    sys.stderr.flush()
    sys.stdout.write(key[20:] + "\n")
    sys.stdout.flush()
    print("contact", reg.make("console_email", "email", "3", "site"), flush=True)
    import traceback
    try:
        raise ValueError("bad token " + reg.make("console_traceback", "glpat", "3"))
    except ValueError:
        traceback.print_exc()
    # A carriage return draws the next piece over the same row: neither piece holds the key, the
    # row wandb's terminal emulator keeps (what the server stores and shows) does.
    key = reg.make("console_carriage_return_overwrite", "hex40", "3")
    sys.stdout.write("x" + key[1:] + "\r")
    sys.stdout.flush()
    sys.stdout.write(key[0] + "\n")
    sys.stdout.flush()
    # A key line ended by \r\n, its value on the next line.
    print("db password:", end="\r\n", flush=True)
    print(reg.make("console_crlf_dangling_key", "pw", "3"), end="\r\n", flush=True)
    # The host inside a longer name (a rank's prefix), and a local path in a PATH-style list.
    print(f"[{host}-rank0] ready; LD_LIBRARY_PATH=/usr/lib:/mnt/{reg.make('console_path_list_entry', 'path', '3')}/lib",
          flush=True)

    # --- summary (1) ---------------------------------------------------------------------
    run.summary["note"] = "Authorization: " + reg.make("summary_string_bearer", "bearer", "1")
    run.summary["db"] = {"conn": {"dsn": "mysql://root:" + reg.make("summary_nested_url_credentials", "pw", "1") + "@10.0.0.5/db"}}
    run.summary["creds"] = reg.make("summary_aws_key_id", "akia", "1") + ":" + reg.make("summary_bare_aws_secret", "aws_secret", "1")
    run.summary["best/" + reg.make("summary_key_patient_id", "pid", "5", "site")] = 0.97
    run.summary["judge_key"] = reg.make("summary_openai_key", "sk", "1+6")
    run.summary["per_token"] = {reg.make("summary_nested_key_secret", "glpat", "5"): 2}

    run.name = "renamed-" + reg.make("run_name_renamed", "akia", "run")

    # --- config update after init ------------------------------------------------------------
    run.config.update({"llm": {"judge": reg.make("config_update_nested_openai_key", "sk", "6")}})

    # --- files (2) -------------------------------------------------------------------------
    with open(os.path.join(run.dir, "notes.txt"), "w") as f:
        f.write("pushed with " + reg.make("file_in_run_dir_text", "ghp", "2") + "\n")
    with open(os.path.join(run.dir, "blob.bin"), "wb") as f:
        f.write(os.urandom(64) + b"\x00" + reg.make("file_in_run_dir_binary", "hf", "2").encode() + b"\x00" + os.urandom(64))
    os.makedirs(os.path.join(run.dir, "extra"), exist_ok=True)
    with open(os.path.join(run.dir, "extra", "params.json"), "w") as f:
        json.dump({"hook": reg.make("file_in_run_dir_subdir_json", "xoxb", "2")}, f)
    cfg_dir = os.path.join(root, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    saved = os.path.join(cfg_dir, "train_config.yaml")
    with open(saved, "w") as f:
        f.write("db:\n  password: " + reg.make("wandb_save_config_dump_password", "pw", "2") + "\n"
                "  wandb_key: " + reg.make("wandb_save_config_dump_wandb_key", "hex40", "2+6") + "\n")
    run.save(saved, base_path=root, policy="now")
    with open(os.path.join(run.dir, "report_" + reg.make("file_name_secret", "hf", "2+5") + ".txt"), "w") as f:
        f.write("ok\n")
    with open(os.path.join(run.dir, reg.make("file_name_patient_id", "pid", "2+5", "site") + "_notes.txt"), "w") as f:
        f.write("ok\n")
    # files named like wandb's own (wandb 0.31 writes none of these offline; 0.15 writes its
    # metadata at init, which gets two fields more, and its summary at finish, over ours): a
    # redactor that knows them by name must still scrub what they hold
    with open(os.path.join(run.dir, "config.yaml"), "w") as f:
        f.write("wandb_version: 1\n\ndb:\n  desc: null\n  value:\n    hosts:\n    - name: primary\n"
                "      dsn: postgres://svc:" + reg.make("spoof_config_yaml_nested_list", "pw", "2") + "@db/x\n"
                "    " + reg.make("spoof_config_yaml_key_name", "ghp", "2+5") + ": 1\n"
                "notes:\n  value: |\n    line one\n    slack " + reg.make("spoof_config_yaml_block_scalar", "xoxb", "2") + "\n")
    meta_path = os.path.join(run.dir, "wandb-metadata.json")
    meta = {"program": "train.py"}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    meta.update({"notes": "key " + reg.make("spoof_metadata_unknown_field", "hex40", "2"),
                 "custom": {"auth": reg.make("spoof_metadata_nested", "bearer", "2")}})
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with open(os.path.join(run.dir, "wandb-summary.json"), "w") as f:
        json.dump({"note": reg.make("spoof_summary_json_value", "sk", "2"),
                   reg.make("spoof_summary_json_key", "glpat", "2+5"): 1}, f)

    # --- artifacts (8, 9) --------------------------------------------------------------------
    try:
        log_artifact(run, reg, wandb, root)
    except Exception as exc:   # noqa: BLE001
        reg.skip("artifact", repr(exc))

    # --- alert ------------------------------------------------------------------------------
    try:
        run.alert(title="job " + reg.make("alert_title", "glpat", "alert"),
                  text="paged with " + reg.make("alert_text", "ghp", "alert"))
    except Exception as exc:   # noqa: BLE001
        reg.skip("alert", repr(exc))

    sys.stdout.write("last words " + reg.make("console_no_trailing_newline", "ghp", "3"))
    sys.stdout.flush()
    run.finish()
    # A trap for delivery, written after the run (never part of it): the test puts these event
    # files where the run's TensorBoard log dir was once the volume is gone. If they reach the
    # server, delivery read the node's volume.
    try:
        wandb.tensorboard.unpatch()
    except Exception:   # noqa: BLE001 - nothing was patched
        pass
    trap = os.path.join(root, "tb-trap")
    tb_events(trap, tf, "trap " + reg.make("volume_trap_tb_text", "ghp", "7", "trap"),
              "trap/" + reg.make("volume_trap_tb_tag", "hf", "7", "trap"))
    reg.data["tb_trap"] = trap
    with open(os.path.join(root, "canaries.json"), "w") as f:
        json.dump(reg.data, f, indent=1)
    print("RUN", run.id, os.path.dirname(run.dir), flush=True)


def log_media(row: dict, reg: Registry, wandb, np, root: str) -> None:
    """Every wandb data type this client logs without extra packages, each with a canary."""
    rng = np.random.default_rng(7)
    img = (rng.random((12, 16, 3)) * 255).astype("uint8")
    row["samples/plain"] = wandb.Image(img, caption="scan token " + reg.make("image_caption", "ghp", "media"))
    row["samples/" + reg.make("media_key_secret", "akia", "5")] = wandb.Image(img[::-1])
    row["samples/" + reg.make("media_key_patient_id", "pid", "5", "site")] = wandb.Image(img[:, ::-1])
    row["boxes"] = wandb.Image(img, boxes={"predictions": {
        "box_data": [{"position": {"minX": 0.1, "maxX": 0.5, "minY": 0.1, "maxY": 0.5}, "class_id": 1,
                      "box_caption": "by " + reg.make("image_box_caption", "sk", "media"),
                      "scores": {"conf": 0.9}}],
        "class_labels": {1: "lesion " + reg.make("image_class_label", "xoxb", "media")}}})
    col = "notes_" + reg.make("table_column_name", "glpat", "media")
    row["preds"] = wandb.Table(columns=["case", col, "score"],
                               data=[["c1", "ok " + reg.make("table_string_cell", "ghp", "media"), 0.5],
                                     [reg.make("table_cell_patient_id", "pid", "media", "site"), "fine", 0.7]])
    row["preds_" + reg.make("table_key_patient_id", "pid", "5", "site")] = wandb.Table(columns=["a"], data=[[1]])
    row["tbl_" + reg.make("table_key_secret", "glpat", "5")] = wandb.Table(columns=["a"], data=[[2]])
    row["gallery"] = wandb.Table(columns=["img", "label"], data=[
        [wandb.Image(img, caption="cell " + reg.make("table_image_caption", "sk", "media")), "x"]])
    row["page"] = wandb.Html("<p>api key " + reg.make("html_body", "hex40", "media") + "</p>")
    wav = os.path.join(root, "clip.wav")
    write_wav(wav)
    row["clip"] = wandb.Audio(wav, caption="voice " + reg.make("audio_caption", "hf", "media"))
    try:
        gif = os.path.join(root, "clip.gif")
        write_gif(gif)
        row["video"] = wandb.Video(gif, caption="cine " + reg.make("video_caption", "glpat", "media"))
    except Exception as exc:   # noqa: BLE001
        reg.skip("video", repr(exc))
    pts = rng.random((20, 3))
    try:
        row["cloud"] = wandb.Object3D(pts, caption="lidar " + reg.make("object3d_caption", "sk", "media"))
    except TypeError as exc:   # wandb 0.15: Object3D takes no caption
        reg.skip("object3d_caption", f"this wandb's Object3D takes no caption ({exc})")
    corners = [[0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
    row["scene"] = wandb.Object3D({"type": "lidar/beta", "points": pts,
                                   "boxes": np.array([{"corners": corners, "color": [255, 0, 0],
                                                       "label": "car " + reg.make("object3d_box_label", "xoxb", "media")}])})
    pdb = os.path.join(root, "mol.pdb")
    write_pdb(pdb, "LIGAND " + reg.make("molecule_file_content", "glpat", "media"))
    try:
        row["mol"] = wandb.Molecule(pdb, caption="ligand " + reg.make("molecule_caption", "ghp", "media"))
    except Exception as exc:   # noqa: BLE001
        reg.skip("molecule", repr(exc))
    row["hist/" + reg.make("histogram_key_name", "hf", "5")] = wandb.Histogram(np_histogram=np.histogram(rng.random(50)))
    try:
        import plotly.graph_objects as go
        fig = go.Figure(data=[go.Scatter(x=[0, 1], y=[1, 0])],
                        layout={"title": {"text": "p " + reg.make("plotly_title", "sk", "media")}})
        row["plotly"] = wandb.Plotly(fig)
    except ImportError:
        reg.skip("plotly", "plotly is not installed in this environment")
    table = wandb.Table(columns=["x", "y"], data=[[0, 1.0], [1, 0.5]])
    row["chart"] = wandb.plot.line(table, "x", "y", title="curve " + reg.make("custom_chart_title", "hf", "media"))


def log_artifact(run, reg: Registry, wandb, root: str) -> None:
    art = wandb.Artifact(
        "scans-" + reg.make("artifact_name_patient_id", "pid", "8", "site"), type="dataset",
        description="pulled with " + reg.make("artifact_description", "ghp", "8"),
        metadata={"source": {"auth": "Authorization: " + reg.make("artifact_metadata_nested", "bearer", "8")},
                  "owner": reg.make("artifact_metadata_email", "email", "8", "site"),
                  "per_token": {reg.make("artifact_metadata_key", "hf", "8+5"): 1}})
    d = os.path.join(root, "artifact-src")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "readme.txt"), "w") as f:
        f.write("a plain dataset file\n")
    art.add_file(os.path.join(d, "readme.txt"), name="cases/" + reg.make("artifact_entry_patient_id", "pid", "8", "site") + ".txt")
    art.add_reference("https://svc:" + reg.make("artifact_reference_uri_credentials", "pw", "8") + "@data.example.com/scans.csv",
                      name="remote.csv", checksum=False)
    run.log_artifact(art, aliases=["latest", reg.make("artifact_alias", "xoxb", "8")])


if __name__ == "__main__":
    if "--child" in sys.argv:
        main(sys.argv[1])
    else:
        launch(sys.argv[1])
