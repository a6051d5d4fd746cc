"""What ``config check`` adds to loading the config: the files it names, and the defaults in force.

Loading validates the file itself; it cannot insist that keys exist (a config is written
before `keys init` makes them). ``config check`` asks: every key file named exists, this user
may read it, a private one is not readable by others, and each trusted-key glob matches at
least one file. Private keys are read by the agent's own loaders (``seal.keystore``), so the
check gives the verdict the daemon would give; their contents are never shown.

Group-readable private keys are a warning, not a problem: a Kubernetes Secret volume with an
``fsGroup`` gives mode 0440, and the key store accepts that.
"""
from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import config_checks as checks
from .seal import keystore

PROBLEM, WARNING = "problem", "warning"


@dataclass(frozen=True)
class Finding:
    level: str   # problem (config check exits 1) | warning
    key: str     # the config key that names the file
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check_files(cfg: config_mod.Config) -> list[Finding]:
    """Every file the config names, checked; an empty list when all is well."""
    out: list[Finding] = []
    keys = cfg.sections.get("keys")
    if keys is not None:
        out += _keys(keys)
    redact = cfg.sections.get("redact")
    if redact is not None and redact.secret_ref is not None:
        out += _secret("redact.secret", redact.secret_ref)
    targets = cfg.sections.get("targets")
    for name, t in (targets.by_name.items() if targets else ()):
        out += _secret(f"targets.{name}.api_key", t.key_ref)
    for r in cfg.watch.roots:
        if not r.is_dir():
            out.append(Finding(WARNING, "watch.roots", f"{r} does not exist (yet)"))
    return out


def _keys(kc: Any) -> list[Finding]:
    out: list[Finding] = []

    def load(key: str, path: Path | None, loader: Callable[[Path], Any]) -> None:
        if path is None:
            return
        try:
            loader(path)
        except keystore.KeyFileError as exc:
            out.append(Finding(PROBLEM, key, str(exc)))
            return
        out.extend(_group_readable(key, path))

    load("keys.node_key", kc.node_key, keystore.load_node_key)
    node_key_ok = not any(f.key == "keys.node_key" and f.level == PROBLEM for f in out)
    if kc.node_pub is not None and node_key_ok and not kc.node_pub.exists():
        out.append(Finding(WARNING, "keys.node_key", f"{kc.node_pub} (the public half) is missing; "
                           "`tfwb-agent keys init --node --if-missing` writes it from the private key"))
    load("keys.identity", kc.identity, keystore.load_identities)
    load("keys.receipt_key", getattr(kc, "receipt_key", None),
         lambda p: keystore.read_private(config_mod.credential_path(p), "receipt key"))
    for key in ("trusted_nodes", "trusted_gateways"):
        for pattern in getattr(kc, key, ()):
            out += _glob(f"keys.{key}", pattern, keystore)
    return out


def _glob(key: str, pattern: str, keystore: Any) -> list[Finding]:
    matches = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
    if not matches:
        return [Finding(PROBLEM, key, f"{pattern!r} matches no file; copy each trusted public key (.pub) there, "
                                      "or fix the pattern")]
    out = []
    for p in matches:
        try:
            keystore.load_public_key(p)
        except keystore.KeyFileError as exc:
            out.append(Finding(PROBLEM, key, f"{p}: {exc}"))
    return out


def _secret(key: str, ref: tuple[str, str]) -> list[Finding]:
    kind, where = ref
    if kind == "env":
        if not os.environ.get(where):
            return [Finding(WARNING, f"{key}_env", f"${where} is not set in this environment (the service must "
                                                   "have it)")]
        return []
    path = config_mod.credential_path(where)
    try:
        st = os.stat(path)
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return [Finding(PROBLEM, f"{key}_file", f"{where} does not exist")]
    except PermissionError:
        return [Finding(PROBLEM, f"{key}_file", f"{where} exists but this user (uid {os.geteuid()}) may not read it")]
    except OSError as exc:
        return [Finding(PROBLEM, f"{key}_file", f"cannot read {where}: {exc.strerror}")]
    if (problem := checks.readable_by_others(st.st_mode)) is not None:
        return [Finding(PROBLEM, f"{key}_file", f"{where} {problem}; "
                                                f"run: chmod 600 {path}")]
    return _group_readable(f"{key}_file", Path(path))


def _group_readable(key: str, path: Path) -> list[Finding]:
    try:
        mode = os.stat(config_mod.credential_path(path)).st_mode
    except OSError:
        return []
    if mode & 0o070:
        return [Finding(WARNING, key, f"{path} is open to its group (mode {stat.S_IMODE(mode):o}): right for a "
                                      f"Kubernetes Secret volume with fsGroup; elsewhere run: chmod 600 {path}")]
    return []


def effective(cfg: config_mod.Config, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config in force (``config.describe``) with every section, those left out at their
    defaults, and the dotted keys whose value is a default (not in the file)."""
    desc = config_mod.describe(cfg)
    for name, validate in config_mod.SECTION_VALIDATORS.items():
        if name in desc:
            continue
        for empty in ({}, []):
            try:
                value = validate(cfg.source, empty)
            except config_mod.ConfigError:
                continue
            desc[name] = value.describe() if hasattr(value, "describe") else value
            break
    defaults: list[str] = []
    _walk(desc, raw, "", defaults)
    return desc, defaults


_ALIASES = ("_file", "_env")  # describe() names a secret by its stem (redact.secret <- secret_file)
_RAW_NAME = {"rules": "rule"}    # [[redact.rule]] is described as its list of rules


def _walk(desc: dict[str, Any], raw: dict[str, Any], prefix: str, out: list[str]) -> None:
    for key, value in desc.items():
        if key == "source" and not prefix:
            continue
        name = prefix + key
        names = (_RAW_NAME.get(key, key), *(key + a for a in _ALIASES))
        here = next((raw[n] for n in names if n in raw), None) if isinstance(raw, dict) else None
        if here is None:
            out.append(name)  # the key, or the whole table, is at its default
        elif isinstance(value, dict) and isinstance(here, dict):
            _walk(value, here, name + ".", out)
