"""The config: where it comes from, what a mistake looks like, what `config check` shows."""
from __future__ import annotations

import json
import os

import pytest

from tfwb_agent import config

from conftest import agent


def parse(text: str):
    import tomllib

    return config.parse(tomllib.loads(text), "agent.toml")


@pytest.mark.parametrize("text, key, words", [
    ('stat_dir = "/x"', "stat_dir", "unknown key"),
    ('state_dir = "relative/path"', "state_dir", "absolute path"),
    ('[watch]\nmode = "fanotify"', "watch.mode", "'inotify' or 'poll'"),
    ('[watch]\nquiet_seconds = -1', "watch.quiet_seconds", "greater than 0"),
    ('[watch]\nquiet_seconds = true', "watch.quiet_seconds", "not a boolean"),
    ('[watch]\nroots = "/srv"', "watch.roots", "a list"),
    ('[watch]\nroot = ["/srv"]', "watch.root", "unknown key"),
    ('[path_map]\n"/runs" = "srv"', "path_map", "absolute path"),
])
def test_errors_name_the_file_the_key_and_the_problem(text, key, words):
    with pytest.raises(config.ConfigError) as err:
        parse(text)
    msg = str(err.value)
    assert msg.startswith("agent.toml: ") and key in msg and words in msg, msg


def test_path_map_prefers_the_longest_prefix_and_whole_components():
    cfg = parse('[path_map]\n"/runs" = "/srv/a"\n"/runs/special" = "/srv/b"\n')
    assert str(cfg.map_path("/runs/x/y")) == "/srv/a/x/y"
    assert str(cfg.map_path("/runs/special/z")) == "/srv/b/z"
    assert str(cfg.map_path("/runsX/z")) == "/runsX/z"  # not a path under /runs
    assert str(cfg.map_path("/elsewhere/z")) == "/elsewhere/z"


def test_where_the_config_comes_from(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(f'state_dir = "{tmp_path}/sa"\n')
    b.write_text(f'state_dir = "{tmp_path}/sb"\n')
    env = {"TFWB_AGENT_CONFIG": str(b)}
    out = json.loads(agent(None, "config", "check", "--json", env=env).stdout)
    assert out["source"] == str(b)
    out = json.loads(agent(None, "--config", str(a), "config", "check", "--json", env=env).stdout)
    assert out["source"] == str(a)  # --config wins over the environment
    e = {k: v for k, v in os.environ.items() if k != "TFWB_AGENT_CONFIG"}
    proc = subprocess_run_without_env(e)
    assert proc.returncode != 0
    assert config.DEFAULT_PATH in proc.stderr and "--config" in proc.stderr


def subprocess_run_without_env(env):
    import subprocess
    import sys

    if os.path.exists(config.DEFAULT_PATH):
        raise AssertionError(f"{config.DEFAULT_PATH} exists on this machine; the default can't be tested")
    return subprocess.run([sys.executable, "-m", "tfwb_agent", "config", "check"], env=env,
                          capture_output=True, text=True)


def test_a_broken_config_is_reported_not_a_traceback(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('state_dir = "/x"\n[watch]\nmode = "fanotify"\n')
    proc = agent(cfg, "status", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: watch.mode" in proc.stderr
    cfg.write_text("state_dir = \n")
    proc = agent(cfg, "status", check=False)
    assert "not valid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_secrets_are_shown_only_as_where_they_come_from(tmp_path):
    key_file = tmp_path / "redact.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef-SECRET")
    key_file.chmod(0o600)  # `config check` refuses a secret others may read
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[redact]\nsecret_file = "{key_file}"\n')
    out = agent(cfg, "config", "check").stdout + agent(cfg, "config", "check", "--json").stdout
    assert str(key_file) in out
    assert "SECRET" not in out
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[redact]\nsecret = "inline-value"\n')
    proc = agent(cfg, "config", "check", check=False)
    assert proc.returncode != 0 and "inline-value" not in proc.stderr + proc.stdout
    assert "redact.secret" in proc.stderr


def test_a_missing_secret_file_is_found_among_systemd_credentials(tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "redact.key").write_bytes(b"k" * 32)
    (creds / "redact.key").chmod(0o400)  # as systemd hands credentials over
    ref = ("file", "/etc/tfwb-agent/does-not-exist/redact.key")
    with pytest.raises(config.ConfigError):
        config.read_secret(ref)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.read_secret(ref) == b"k" * 32
    from tfwb_agent.redact.policy import load_secret, parse_policy

    cfg = parse(f'state_dir = "{tmp_path}/s"\n[redact]\nsecret_file = "{ref[1]}"\n')
    assert load_secret(parse_policy("t", {"secret_file": ref[1]}), cfg) == b"k" * 32


def test_keys_and_secrets_come_from_a_credstore_loaded_as_a_directory(tmp_path, monkeypatch):
    """The units load /etc/tfwb-agent/credstore whole (LoadCredential=tfwb:DIR): every file
    arrives as tfwb_<file>, and the config still names the source paths, which the service
    cannot read. Keys created by the CLI into a store, then read the way the service sees them."""
    store = tmp_path / "credstore"
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(f'state_dir = "{tmp_path}/s"\n[keys]\nnode_key = "{store}/node.key"\n'
                        f'identity = "{store}/gateway.agekey"\n'
                        f'[targets.t]\nbase_url = "http://127.0.0.1:9"\napi_key_file = "{store}/wandb-api-key"\n')
    store.mkdir(mode=0o700)
    agent(cfg_path, "keys", "init", "--node")
    agent(cfg_path, "keys", "init", "--gateway")
    (store / "wandb-api-key").write_text("key-123\n")
    recipient = next(l.split(": ", 1)[1] for l in (store / "gateway.agekey").read_text().splitlines()
                     if l.startswith("# public key: "))
    cfg_path.write_text(cfg_path.read_text().replace("[keys]\n", f'[keys]\nrecipients = ["{recipient}"]\n'))
    # What systemd makes of the store: private copies named tfwb_<file>; the source is gone
    # from the service's view.
    creds = tmp_path / "run-credentials"
    creds.mkdir()
    for f in store.iterdir():
        (creds / f"tfwb_{f.name}").write_bytes(f.read_bytes())
        (creds / f"tfwb_{f.name}").chmod(0o600)
    hidden = tmp_path / "credstore-hidden"
    store.rename(hidden)
    from tfwb_agent.seal import keys_config, open_keys, seal_keys

    cfg = parse(cfg_path.read_text())
    with pytest.raises(Exception, match="does not exist"):
        seal_keys(keys_config(cfg))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert seal_keys(keys_config(cfg)).signer is not None
    assert len(open_keys(keys_config(cfg)).identities) == 1
    assert config.read_secret(("file", f"{store}/wandb-api-key")) == b"key-123"
