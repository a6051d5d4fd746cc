"""Keys mounted the way the kubelet mounts a Secret volume: each key a link into a timestamped
directory through ``..data`` (``node.key -> ..data/node.key``, ``..data -> ..2026_11_29_...``).

The agent follows those links inside the mount and refuses a link that leaves it; `scan --seal`
(the pipeline's sealing step) seals with such keys, and a gateway reads its identity the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import agent
from seal_helpers import BUNDLE_GLOB, corpus_run_dirs, minisign_ok

STAMP = "..2026_11_29_00_00_00.123456789"


def kubelet_mount(mount: Path, files: dict[str, Path], mode: int = 0o440) -> Path:
    """``mount`` laid out exactly as the kubelet's atomic writer does it (mode = defaultMode)."""
    data = mount / STAMP
    data.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, data / name)
        os.chmod(data / name, mode)
    os.symlink(STAMP, mount / "..data")
    for name in files:
        os.symlink(f"..data/{name}", mount / name)
    return mount


def _keys(tmp_path: Path) -> tuple[Path, Path, str]:
    """A node key (made by `keys init`) and a gateway identity, in a scratch directory."""
    scratch = tmp_path / "made"
    scratch.mkdir()
    cfg = tmp_path / "make.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/make-state"\n[keys]\nnode_key = "{scratch}/node.key"\n'
                   f'identity = "{scratch}/gateway.agekey"\n')
    agent(cfg, "keys", "init", "--node")
    recipient = agent(cfg, "keys", "init", "--gateway").stdout.strip()
    assert recipient.startswith("age1")
    return scratch / "node.key", scratch / "gateway.agekey", recipient


def _node(tmp_path: Path, corpus: Path, node_key: Path, recipient: str) -> Path:
    root = tmp_path / "watched"
    src = sorted(corpus_run_dirs(corpus).values())[0]
    shutil.copytree(src, root / src.name)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/node-state"\nnode_name = "gpu01"\n[watch]\nroots = ["{root}"]\n'
                   f'mode = "poll"\n[keys]\nnode_key = "{node_key}"\nrecipients = ["{recipient}"]\n')
    return cfg


def test_scan_seal_signs_with_a_key_from_a_kubelet_secret_volume(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    mount = kubelet_mount(tmp_path / "secret", {"node.key": node_key, "node.key.pub": Path(f"{node_key}.pub")})
    assert (mount / "node.key").is_symlink() and (mount / "..data").is_symlink()
    cfg = _node(tmp_path, corpus, mount / "node.key", recipient)
    res = agent(cfg, "scan", "--seal", "--json")
    assert json.loads(res.stdout)["counts"].get("sealed") == 1, res.stdout + res.stderr
    (bundle,) = (tmp_path / "node-state" / "outbox").glob(BUNDLE_GLOB)
    # Signed by the mounted key: the stock minisign accepts it with the mounted public key.
    assert minisign_ok(bundle, mount / "node.key.pub")
    shown = json.loads(agent(cfg, "keys", "show").stdout)
    assert "problems" not in shown, shown


@pytest.mark.parametrize("how", ["key-link", "data-link"])
def test_a_link_that_leaves_the_mount_is_refused(tmp_path, corpus, how):
    node_key, _identity, recipient = _keys(tmp_path)
    mount = kubelet_mount(tmp_path / "secret", {"node.key": node_key})
    outside = tmp_path / "planted"
    outside.mkdir()
    shutil.copyfile(node_key, outside / "node.key")
    os.chmod(outside / "node.key", 0o600)
    if how == "key-link":  # the key itself points away
        (mount / "node.key").unlink()
        os.symlink(outside / "node.key", mount / "node.key")
        target = str(outside / "node.key")
    else:  # ..data points away, relative and climbing out
        (mount / "..data").unlink()
        os.symlink("../planted", mount / "..data")
        target = "..data/node.key"
    cfg = _node(tmp_path, corpus, mount / "node.key", recipient)
    res = agent(cfg, "scan", "--seal", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert f"{mount / 'node.key'} is a symbolic link to {target}" in err and f"outside {mount}" in err, err
    assert "Traceback" not in res.stderr and "keys init" not in err, res.stderr
    assert not list((tmp_path / "node-state").rglob(BUNDLE_GLOB)), "sealed with a key from outside the mount"


def test_an_unreadable_key_is_not_called_missing(tmp_path, corpus):
    """A key that exists but the agent's user may not read: say so, never `keys init`."""
    node_key, _identity, recipient = _keys(tmp_path)
    mount = kubelet_mount(tmp_path / "secret", {"node.key": node_key}, mode=0o000)
    cfg = _node(tmp_path, corpus, mount / "node.key", recipient)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    res = subprocess.run([*prefix, "python3", "-m", "tfwb_agent", "--config", str(cfg), "scan", "--seal"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert "exists but this user" in err and "may not read it" in err, err
    assert "keys init" not in err and "does not exist" not in err, err


def test_gateway_identity_and_trusted_keys_from_a_secret_volume(tmp_path):
    node_key, identity, recipient = _keys(tmp_path)
    mount = kubelet_mount(tmp_path / "gw-secret", {"gateway.agekey": identity, "gpu01.pub": Path(f"{node_key}.pub")})
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/gw-state"\n[keys]\nidentity = "{mount}/gateway.agekey"\n'
                   f'trusted_nodes = ["{mount}/*.pub"]\n')
    shown = json.loads(agent(cfg, "keys", "show").stdout)
    assert "problems" not in shown, shown
    assert shown["gateway"]["recipients"] == [recipient]
    assert [t["name"] for t in shown["trusted_nodes"]] == ["gpu01"]


def test_keys_init_if_missing_makes_one_key_per_node_and_keeps_it(tmp_path):
    """The DaemonSet's first start: a key made on the node's state volume, kept on the next."""
    cfg = tmp_path / "n.toml"
    key = tmp_path / "state" / "keys" / "node.key"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\n[keys]\nnode_key = "{key}"\n')
    first = agent(cfg, "keys", "init", "--node", "--if-missing")
    body = key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    again = agent(cfg, "keys", "init", "--node", "--if-missing")
    assert key.read_bytes() == body, "--if-missing replaced the key"
    assert first.stdout == again.stdout and again.stdout.startswith("key id "), (first.stdout, again.stdout)
    assert "already exists; kept" in again.stderr
    refused = agent(cfg, "keys", "init", "--node", check=False)
    assert refused.returncode == 1 and "already exists" in refused.stderr


def test_an_api_key_from_a_kubelet_secret_volume_is_read_through_its_links(tmp_path):
    """``api_key_file`` in a Secret volume is a link through ``..data``: it is read (a key file
    must be a regular file once its links are followed, not a FIFO or a device)."""
    from tfwb_agent.config import read_secret

    src = tmp_path / "src"
    src.mkdir()
    (src / "wandb-key").write_text("local-" + "a" * 40 + "\n")
    mount = kubelet_mount(tmp_path / "secret", {"wandb-key": src / "wandb-key"})
    assert (mount / "wandb-key").is_symlink()
    assert read_secret(("file", str(mount / "wandb-key"))) == b"local-" + b"a" * 40
