"""`config check` checks the files a config names and shows the defaults in force;
`config example --node|--gateway` prints configs it accepts once their keys exist.

Real CLI, real key files written by `keys init`; each check is made to fail first.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agent


def _example(tmp_path: Path, role: str) -> Path:
    """The printed example with its absolute paths moved under ``tmp_path`` (as an admin's sed would)."""
    text = agent(None, "config", "example", f"--{role}").stdout
    for old, new in (("/etc/tfwb-agent", tmp_path / "etc"), ("/var/lib/tfwb-agent", tmp_path / f"{role}-state"),
                     ("/srv/shared/runs", tmp_path / "runs")):
        text = text.replace(old, str(new))
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "runs").mkdir(exist_ok=True)
    cfg = tmp_path / f"{role}.toml"
    cfg.write_text(text)
    return cfg


def _check(cfg: Path, *args: str):
    return agent(cfg, "config", "check", *args, check=False)


def test_node_example_is_accepted_once_its_key_exists(tmp_path):
    cfg = _example(tmp_path, "node")
    assert "[keys]" in cfg.read_text() and "[watch]" in cfg.read_text()
    before = _check(cfg)
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"error: keys.node_key: node key {tmp_path}/etc/node.key does not exist" in before.stderr
    assert "problem(s)" in before.stdout and ": OK" not in before.stdout
    assert _check(cfg, "--no-files").returncode == 0  # the file alone is fine

    agent(cfg, "keys", "init", "--node")
    after = _check(cfg)
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"{cfg}: OK" in after.stdout
    assert "keys.recipients: empty" in after.stderr  # said, not fatal: the gateway's key comes later
    key = (tmp_path / "etc" / "node.key").read_text()
    secret = [l for l in key.splitlines() if l and not l.startswith("untrusted")]
    assert secret and not any(s in after.stdout + after.stderr for s in secret)


def test_gateway_example_is_accepted_once_its_keys_exist(tmp_path):
    cfg = _example(tmp_path, "gateway")
    out = json.loads(_check(cfg, "--json").stdout)
    assert out["ok"] is False
    joined = "\n".join(out["problems"])
    assert "keys.identity: age identity" in joined and "does not exist" in joined
    assert f"keys.trusted_nodes: '{tmp_path}/etc/nodes/*.pub' matches no file" in joined
    assert f"targets.local-server.api_key_file: {tmp_path}/etc/wandb-api-key does not exist" in joined

    agent(cfg, "keys", "init", "--gateway")
    node_cfg = _example(tmp_path, "node")
    agent(node_cfg, "keys", "init", "--node")
    (tmp_path / "etc" / "nodes").mkdir()
    shutil.copy(tmp_path / "etc" / "node.key.pub", tmp_path / "etc" / "nodes" / "gpu-1.pub")
    api_key = tmp_path / "etc" / "wandb-api-key"
    api_key.write_text("local-" + "k" * 40 + "\n")
    api_key.chmod(0o600)
    done = _check(cfg, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] is True and out["problems"] == [], out
    assert "k" * 40 not in done.stdout + done.stderr


def test_private_files_must_not_be_readable_by_others_and_globs_must_hold_keys(tmp_path):
    cfg = _example(tmp_path, "gateway")
    agent(cfg, "keys", "init", "--gateway")
    (tmp_path / "etc" / "nodes").mkdir()
    api_key = tmp_path / "etc" / "wandb-api-key"
    api_key.write_text("k" * 40)
    api_key.chmod(0o644)
    junk = tmp_path / "etc" / "nodes" / "typo.pub"
    junk.write_text("not a minisign public key\n")
    identity = tmp_path / "etc" / "gateway.agekey"
    identity.chmod(0o604)
    proc = _check(cfg)
    assert proc.returncode == 1
    assert f"keys.identity: age identity {identity} is readable by others (mode 604)" in proc.stderr, proc.stderr
    assert f"targets.local-server.api_key_file: {api_key} is readable by others (mode 644)" in proc.stderr
    assert f"keys.trusted_nodes: {junk}:" in proc.stderr  # matched, but not a public key

    identity.chmod(0o640)  # a Secret volume with fsGroup: said, not refused
    api_key.chmod(0o600)
    node_cfg = _example(tmp_path, "node")
    agent(node_cfg, "keys", "init", "--node")
    shutil.copy(tmp_path / "etc" / "node.key.pub", junk)
    proc = _check(cfg)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: keys.identity: {identity} is open to its group (mode 640)" in proc.stderr


def test_defaults_in_force_are_shown_as_defaults(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[watch]\nmode = "poll"\n[sync]\nmax_parallel = 2\n')
    out = json.loads(_check(cfg, "--json").stdout)
    assert out["ok"] is True
    d = set(out["defaults"])
    # what the file sets is not a default; what it leaves out is, sections it never names included
    assert {"node_name", "watch.quiet_seconds", "sync.live", "redact", "keys", "targets"} <= d, sorted(d)
    assert not {"state_dir", "watch", "watch.mode", "sync", "sync.max_parallel"} & d, sorted(d)
    assert out["watch"]["quiet_seconds"] == 120.0 and out["redact"]["console"] == "scrub"
    text = _check(cfg).stdout.splitlines()
    assert "  quiet_seconds = 120.0   (default)" in text and "  mode = poll" in text, text
    assert any(l.startswith("redact:") and l.endswith("(default)") for l in text), text


@pytest.mark.parametrize("role", ["node", "gateway"])
def test_example_names_only_keys_the_agent_accepts(tmp_path, role):
    """Every line of the example that is a commented `key = value` is accepted when uncommented."""
    cfg = _example(tmp_path, role)
    text = cfg.read_text()
    (tmp_path / "etc" / "site-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    tried = 0
    for line in [l for l in text.splitlines() if l.startswith("# ") and " = " in l.split("#")[1]]:
        body = line[2:].split("  #")[0].strip()
        if body.startswith("["):
            continue
        trial = tmp_path / "trial.toml"
        header = "\n[redact]\n" if body.startswith("secret_file") else None
        if header and "# [redact]" in text:
            trial.write_text(text.replace("# [redact]", "[redact]").replace(line, body))
        else:
            trial.write_text(text.replace(line, body))
        proc = agent(trial, "config", "check", "--no-files", check=False)
        assert proc.returncode == 0, (line, proc.stderr)
        tried += 1
    assert tried >= 2


def test_a_policy_naming_an_unknown_target_is_a_problem(tmp_path):
    cfg = _example(tmp_path, "gateway")
    cfg.write_text(cfg.read_text().replace('targets = ["local-server"]', 'targets = ["local-sever"]'))
    proc = _check(cfg, "--no-files")
    assert proc.returncode == 1 and "policy[0] names target 'local-sever', which is not configured" in proc.stderr


@pytest.mark.parametrize("section", [
    '[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_env = "{key}"\n',
    '[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_file = "{key}"\n',
    '[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_file = ["{key}"]\n',
    '[targets.t]\nbase_url = "htps://api:{key}@127.0.0.1:9"\napi_key_env = "WANDB_API_KEY"\n',
    '[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_env = "WANDB_API_KEY"\nwandb = "0.25.1"\n'
    'wandb_index = "https://pypi:{key}@127.0.0.1:9/simple"\n',
    '[redact]\nsecret_env = "{key}"\n',
    '[targets.t]\nbase_url = "http://127.0.0.1:9/?api_key={key}"\napi_key_env = "WANDB_API_KEY"\n',
])
def test_a_secret_pasted_where_its_name_or_path_belongs_is_refused_and_never_shown(tmp_path, section):
    """A key pasted into ``api_key_env``, ``api_key_file``, ``base_url`` or ``wandb_index`` (the
    README's place for its name or its file's path), or the site secret into ``secret_env``:
    every command says what is wrong and where, and never prints the key."""
    import secrets as _secrets
    key = _secrets.token_hex(20)                       # a W&B API key's shape
    cfg = _example(tmp_path, "node")
    text = cfg.read_text()
    if section.startswith("[redact]"):
        text = text.replace("[redact]\n", "[redact_unused]\n") if "[redact]\n" in text else text
    cfg.write_text(text + "\n" + section.format(key=key))
    for cmd in (("config", "check"), ("config", "check", "--json"), ("status",), ("status", "--json")):
        out = agent(cfg, *cmd, check=False)
        said = out.stdout + out.stderr
        assert key not in said and key[:12] not in said and key[-12:] not in said, (cmd, said[-800:])
        assert "Traceback" not in said, (cmd, said[-2000:])
    refused = agent(cfg, "config", "check", check=False)
    assert refused.returncode != 0 and ("secret itself" in refused.stdout + refused.stderr
                                        or "credentials" in refused.stdout + refused.stderr
                                        or "redacted" in refused.stdout + refused.stderr
                                        or "without a query" in refused.stdout + refused.stderr), refused.stdout + refused.stderr


@pytest.mark.parametrize("kind", ["fifo", "binary", "huge", "directory"])
def test_a_key_file_that_is_no_key_is_said_plainly_and_quickly(tmp_path, kind):
    """A FIFO (a read never ends), bytes that are no text, a file far bigger than a key, a
    directory: `targets check` says so, names the file, and neither hangs nor prints a traceback."""
    import os
    key_file = tmp_path / "wandb-key"
    if kind == "fifo":
        os.mkfifo(key_file)
    elif kind == "binary":
        key_file.write_bytes(b"\xff\xfe" + os.urandom(38))
    elif kind == "huge":
        key_file.write_bytes(b"k" * (1 << 20))
    else:
        key_file.mkdir()
    if kind in ("binary", "huge"):
        key_file.chmod(0o600)  # refused for what it holds, not for who may read it
    cfg = _example(tmp_path, "node")
    cfg.write_text(cfg.read_text() + f'\n[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_file = "{key_file}"\n')
    out = agent(cfg, "targets", "check", check=False, timeout=60)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and str(key_file) in said and "Traceback" not in said, said[-2000:]


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:port", "http://api:k@[::1"])
def test_a_base_url_that_is_no_url_is_said_plainly(tmp_path, url):
    cfg = _example(tmp_path, "node")
    cfg.write_text(cfg.read_text() + f'\n[targets.t]\nbase_url = "{url}"\napi_key_env = "WANDB_API_KEY"\n')
    out = _check(cfg)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "targets.t.base_url" in said and "Traceback" not in said, said[-2000:]


def test_a_secret_others_may_read_is_refused_where_it_is_used_not_only_by_config_check(tmp_path):
    """`config check` calls a 0644 site secret or API key file a problem; the commands that use
    one refuse it too (as the node key is refused), before the secret is used: no redacted copy
    made with it, no connection to the server with the key. Its group may read it."""
    from redact_helpers import CORPUS
    run = next(p for p in sorted(CORPUS.glob("wandb-*/wandb/offline-run-*")) if not p.is_symlink())
    secret = tmp_path / "redact.key"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o644)
    api_key = tmp_path / "wandb-api-key"
    api_key.write_text("k" * 40 + "\n")
    api_key.chmod(0o604)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(60)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[redact]\nsecret_file = "{secret}"\n'
                   f'[targets.t]\nbase_url = "http://127.0.0.1:{listener.getsockname()[1]}"\n'
                   f'api_key_file = "{api_key}"\ntimeout = 5\n')
    out = tmp_path / "out"
    for proc, path, mode in ((agent(cfg, "redact", "--out", str(out), str(run), check=False), secret, "644"),
                             (agent(cfg, "targets", "check", check=False), api_key, "604")):
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, text
        assert f"{path}: is readable by others (mode {mode})" in text and f"chmod 600 {path}" in text, text
        assert "Traceback" not in text and "k" * 40 not in text
    assert not out.exists()
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came with the key

    secret.chmod(0o640)  # a Secret volume with fsGroup: the group may read it
    api_key.chmod(0o600)
    assert agent(cfg, "redact", "--out", str(out), str(run), check=False).returncode == 0
    assert any(out.iterdir())
    checking = subprocess.Popen([sys.executable, "-m", "tfwb_agent", "--config", str(cfg), "targets", "check"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, TFWB_AGENT_CONFIG=str(cfg)))
    listener.setblocking(True)
    listener.settimeout(60)
    conn, _ = listener.accept()  # now the key is used: the agent connects
    conn.close()
    checking.communicate(timeout=60)
    listener.close()
