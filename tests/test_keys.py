"""Keys: minisign- and age-keygen-compatible files, modes, never printed; the [keys] config."""
from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from tfwb_agent import config as config_mod
from tfwb_agent.seal import keystore, minisign

from conftest import agent
from seal_helpers import make_site


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_node_key_files_interoperate_with_minisign(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    key, pub = site.node_key, site.node_pub
    assert mode(key) == 0o600 and mode(pub) == 0o644
    # The public key file is exactly what `minisign -G` writes: comment with the id, base64 line.
    text = pub.read_text()
    m = re.fullmatch(r"untrusted comment: minisign public key ([0-9A-F]{16})\n(RW[A-Za-z0-9+/]{54})\n", text)
    assert m, text
    assert minisign.parse_public_key(text).key_id_hex == m.group(1)
    # The stock tool signs with our secret key file, and verifies with our public key file.
    f = tmp_path / "msg.txt"
    f.write_text("hello\n")
    subprocess.run(["minisign", "-Sm", str(f), "-s", str(key), "-t", "by stock minisign"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    out = subprocess.run(["minisign", "-Vm", str(f), "-p", str(pub)], capture_output=True, text=True)
    assert out.returncode == 0 and "by stock minisign" in out.stdout
    # A signature by our code over a changed file is refused by the stock tool.
    sk = keystore.load_node_key(key)
    with open(f, "rb") as fh:
        sig = minisign.sign_digest(sk, minisign.hash_file(fh), "ours")
    Path(f"{f}.minisig").write_text(sig.to_file())
    assert subprocess.run(["minisign", "-Vm", str(f), "-p", str(pub)], capture_output=True).returncode == 0
    f.write_text("hellO\n")
    assert subprocess.run(["minisign", "-Vm", str(f), "-p", str(pub)], capture_output=True).returncode != 0


def test_a_key_made_by_minisign_signs_for_us(tmp_path: Path) -> None:
    subprocess.run(["minisign", "-G", "-W", "-p", str(tmp_path / "m.pub"), "-s", str(tmp_path / "m.key")],
                   check=True, capture_output=True)
    sk = keystore.load_node_key(tmp_path / "m.key")
    assert sk.public() == keystore.load_public_key(tmp_path / "m.pub")
    f = tmp_path / "data"
    f.write_bytes(b"x" * 100_000)
    with open(f, "rb") as fh:
        Path(f"{f}.minisig").write_text(minisign.sign_digest(sk, minisign.hash_file(fh), "t").to_file())
    assert subprocess.run(["minisign", "-Vm", str(f), "-p", str(tmp_path / "m.pub")], capture_output=True).returncode == 0


def test_keys_init_never_prints_secrets_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[keys]\nnode_key = "{tmp_path}/k/node.key"\n'
                   f'identity = "{tmp_path}/k/gw.agekey"\n')
    node = agent(cfg, "keys", "init", "--node")
    gw = agent(cfg, "keys", "init", "--gateway")
    secret_line = (tmp_path / "k/node.key").read_text().splitlines()[1]
    identity_text = (tmp_path / "k/gw.agekey").read_text()
    age_secret = next(ln for ln in identity_text.splitlines() if ln.startswith("AGE-SECRET-KEY-1"))
    shown = agent(cfg, "keys", "show")
    for proc in (node, gw, shown):
        assert secret_line not in proc.stdout + proc.stderr
        assert age_secret not in proc.stdout + proc.stderr and "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
    assert mode(tmp_path / "k/gw.agekey") == 0o600
    # age-keygen's format, and its recipient is what `age-keygen -y` derives.
    assert re.fullmatch(r"# created: \S+\n# public key: (age1\w+)\nAGE-SECRET-KEY-1[0-9A-Z]+\n", identity_text)
    y = subprocess.run(["age-keygen", "-y", str(tmp_path / "k/gw.agekey")], capture_output=True, text=True, check=True)
    assert gw.stdout.strip() == y.stdout.strip()
    assert y.stdout.strip() in shown.stdout
    again = agent(cfg, "keys", "init", "--node", check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "k/node.key").read_text().splitlines()[1] == secret_line


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    subprocess.run(["age-keygen", "-o", str(tmp_path / "id")], check=True, capture_output=True)
    (tmp_path / "id").chmod(0o644)
    with pytest.raises(keystore.KeyFileError, match="readable by others"):
        keystore.load_identities(tmp_path / "id")
    (tmp_path / "id").chmod(0o600)
    assert len(keystore.load_identities(tmp_path / "id")) == 1


def test_keys_config_is_validated(tmp_path: Path) -> None:
    import tfwb_agent.seal  # noqa: F401  registers [keys]
    good = config_mod.parse({"state_dir": "/x", "keys": {"node_key": "/k/n.key", "recipients": [], "trusted_nodes": ["/t/*.pub"]}})
    assert good.sections["keys"].node_pub == Path("/k/n.key.pub")
    with pytest.raises(config_mod.ConfigError, match="keys.recipients\\[0\\].*secret identity"):
        config_mod.parse({"keys": {"recipients": ["AGE-SECRET-KEY-1QQQQ"]}})
    with pytest.raises(config_mod.ConfigError, match="keys.recipients\\[0\\]"):
        config_mod.parse({"keys": {"recipients": ["age1notarecipient"]}})
    with pytest.raises(config_mod.ConfigError, match="keys.node_key.*absolute"):
        config_mod.parse({"keys": {"node_key": "relative.key"}})
    with pytest.raises(config_mod.ConfigError, match="keys.secret_key.*never inline"):
        config_mod.parse({"keys": {"secret_key": "RWQ..."}})
