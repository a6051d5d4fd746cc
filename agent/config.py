"""The agent's configuration: one TOML file, validated at start.

Where it comes from: ``--config PATH``, else ``$TFWB_AGENT_CONFIG``, else
``/etc/tfwb-agent/agent.toml``. Every error names the file, the key and what is wrong.
Secrets are never written inline: a config names a file or an environment variable, and
``describe()`` shows only where a secret comes from.

Sections owned by other parts of the agent (``[redact]``, ``[keys]``, ``[targets.*]``,
``[sync]``, ``[[policy]]``) are kept as raw tables here and validated by their own modules
through ``SECTION_VALIDATORS``, so this module stays the one place that reads the file.
"""
from __future__ import annotations

import importlib
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config_checks as checks
from . import ids
from . import statedir
from .config_checks import ConfigError  # noqa: F401  (raised and caught as config.ConfigError everywhere)

DEFAULT_PATH = "/etc/tfwb-agent/agent.toml"
ENV_VAR = "TFWB_AGENT_CONFIG"


@dataclass(frozen=True)
class WatchConfig:
    roots: tuple[Path, ...] = ()
    mode: str = "inotify"
    quiet_seconds: float = 120.0
    reconcile_seconds: float = 60.0
    poll_seconds: float = 2.0
    lease_seconds: float = 60.0
    claims_dir: Path | None = None  # default: <root>/.tfwb-agent/claims


@dataclass(frozen=True)
class Config:
    source: str
    state_dir: Path
    node_name: str
    watch: WatchConfig
    path_map: tuple[tuple[str, Path], ...] = ()
    sections: dict[str, Any] = field(default_factory=dict)  # validated raw sections

    @property
    def ledger_path(self) -> Path:
        return statedir.ledger(self.state_dir)

    def claims_dir_for(self, root: Path) -> Path:
        return self.watch.claims_dir or root / ".tfwb-agent" / "claims"

    def map_path(self, container_path: str) -> Path:
        """Translate a path a training container wrote into this host's path."""
        for prefix, host in self.path_map:
            if container_path == prefix or container_path.startswith(prefix.rstrip("/") + "/"):
                return host / container_path[len(prefix):].lstrip("/")
        return Path(container_path)


# Other modules register a validator for their section: f(source, raw_table) -> parsed value.
SECTION_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {}
_KNOWN_TOP = {"state_dir", "node_name", "watch", "path_map"}
# The modules that own a section; importing one registers its validator.
SECTION_MODULES = ("tfwb_agent.redact.policy", "tfwb_agent.seal.keyconfig", "tfwb_agent.deliver.settings",
                   "tfwb_agent.retention_config", "tfwb_agent.opsconfig")


def _register_sections() -> None:
    for name in SECTION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a section module of this build with a broken import is a bug
                raise


def resolve_path(cli_path: str | None) -> str:
    return cli_path or os.environ.get(ENV_VAR) or DEFAULT_PATH


def load(cli_path: str | None = None) -> Config:
    path = resolve_path(cli_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file; pass --config PATH or set "
                          f"{ENV_VAR} (`tfwb-agent config example` prints a starting point)") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied; run as the agent's user or fix the file's mode") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], source: str = "<config>") -> Config:
    _register_sections()
    checks.known_keys(source, "", raw, _KNOWN_TOP | set(SECTION_VALIDATORS))
    state_dir = checks.absolute_path(source, "state_dir", raw.get("state_dir", "/var/lib/tfwb-agent"))
    node_name = checks.of_type(source, "node_name", raw.get("node_name", socket.gethostname()), str, "a string")
    if ids.why_not(node_name):
        raise ConfigError(source, "node_name", f"{ids.BadId('node name', node_name, ids.why_not(node_name) or '')} "
                          "(it names this node's files in the claims directory)")

    w = checks.of_type(source, "watch", raw.get("watch", {}), dict, "a table")
    allowed = {"roots", "mode", "quiet_seconds", "reconcile_seconds", "poll_seconds", "lease_seconds", "claims_dir"}
    checks.known_keys(source, "watch", w, allowed)
    roots = checks.of_type(source, "watch.roots", w.get("roots", []), list, "a list of directories")
    mode = w.get("mode", "inotify")
    if mode not in ("inotify", "poll"):
        raise ConfigError(source, "watch.mode", f"must be 'inotify' or 'poll', got {mode!r}")
    watch = WatchConfig(
        roots=tuple(checks.absolute_path(source, f"watch.roots[{i}]", r) for i, r in enumerate(roots)),
        mode=mode,
        quiet_seconds=checks.seconds(source, "watch.quiet_seconds", w.get("quiet_seconds", 120)),
        reconcile_seconds=checks.seconds(source, "watch.reconcile_seconds", w.get("reconcile_seconds", 60)),
        poll_seconds=checks.seconds(source, "watch.poll_seconds", w.get("poll_seconds", 2)),
        lease_seconds=checks.seconds(source, "watch.lease_seconds", w.get("lease_seconds", 60)),
        claims_dir=checks.absolute_path(source, "watch.claims_dir", w["claims_dir"]) if "claims_dir" in w else None,
    )

    pm = checks.of_type(source, "path_map", raw.get("path_map", {}), dict, "a table of container path = host path")
    path_map = tuple(
        sorted(((checks.absolute_path(source, f"path_map.{k!r}", k).as_posix(),
                 checks.absolute_path(source, f"path_map.{k!r}", v)) for k, v in pm.items()),
               key=lambda kv: -len(kv[0]))  # longest prefix first
    )
    sections = {name: validate(source, raw[name]) for name, validate in SECTION_VALIDATORS.items() if name in raw}
    return Config(source, state_dir, node_name, watch, path_map, sections)


def describe(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data, secrets shown only as where they come from."""
    out: dict[str, Any] = {
        "source": cfg.source,
        "state_dir": str(cfg.state_dir),
        "node_name": cfg.node_name,
        "watch": {
            "roots": [str(r) for r in cfg.watch.roots],
            "mode": cfg.watch.mode,
            "quiet_seconds": cfg.watch.quiet_seconds,
            "reconcile_seconds": cfg.watch.reconcile_seconds,
            "poll_seconds": cfg.watch.poll_seconds,
            "lease_seconds": cfg.watch.lease_seconds,
            "claims_dir": str(cfg.watch.claims_dir) if cfg.watch.claims_dir else "<root>/.tfwb-agent/claims",
        },
        "path_map": {k: str(v) for k, v in cfg.path_map},
    }
    for name, value in cfg.sections.items():
        out[name] = value.describe() if hasattr(value, "describe") else value
    return out


def secret_source(table: dict[str, Any], source: str, key_prefix: str, stem: str) -> tuple[str, str]:
    """Validate a secret reference: exactly one of ``<stem>_file`` / ``<stem>_env``.

    Inline secrets (``<stem> = "..."``) are refused so they never sit in a config file.
    Returns ``("file", path)`` or ``("env", NAME)``.
    """
    if stem in table:
        raise ConfigError(source, f"{key_prefix}.{stem}", f"secrets are never inline; use {stem}_file or {stem}_env")
    has_file, has_env = f"{stem}_file" in table, f"{stem}_env" in table
    if has_file == has_env:
        raise ConfigError(source, key_prefix, f"set exactly one of {stem}_file or {stem}_env")
    field = f"{stem}_file" if has_file else f"{stem}_env"
    key, value = f"{key_prefix}.{field}", table[field]
    what = "the path of a file that holds it" if has_file else \
        "the name of an environment variable that holds it (WANDB_API_KEY)"
    # (Asked only of a value of an unusual form: the rules take a moment to load.)
    usual = isinstance(value, str) and (value.startswith("/") if has_file else _USUAL_ENV_NAME.fullmatch(value))
    if not usual and checks.looks_secret(value):
        raise ConfigError(source, key, f"holds what looks like the secret itself; give {what} instead")
    if has_file:
        return "file", checks.absolute_path(source, key, value).as_posix()
    name = checks.of_type(source, key, value, str, "an environment variable name")
    if not _ENV_NAME.fullmatch(name):
        raise ConfigError(source, key, f"is not an environment variable name (letters, digits and _); give {what}")
    return "env", name


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USUAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


CREDENTIAL_PREFIX = "tfwb_"  # the units load the whole credstore: LoadCredential=tfwb:/etc/tfwb-agent/credstore


def credential_path(path: str | Path) -> Path:
    """``path``, or under systemd the credential of the same name when ``path`` cannot be seen
    (the service may not read the root-only source): a unit's ``LoadCredential=NAME:FILE``
    puts it in $CREDENTIALS_DIRECTORY/NAME, and ``LoadCredential=tfwb:DIR`` loads every file
    of DIR as $CREDENTIALS_DIRECTORY/tfwb_FILE."""
    p = Path(path)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not p.exists():
        for name in (p.name, CREDENTIAL_PREFIX + p.name):
            if (Path(creds) / name).exists():
                return Path(creds) / name
    return p


SECRET_FILE_MAX = 64 * 1024


def read_secret(ref: tuple[str, str]) -> bytes:
    """Read a secret from where ``secret_source`` said it lives. Never log the result.

    A file's bytes are the secret as they are: a random binary key may end in bytes that look
    like whitespace (0x0c, 0x20 …), and stripping them would change the key. Only a text
    secret (printable ASCII) loses the line end an editor or ``echo`` adds."""
    kind, where = ref
    if kind == "env":
        value = os.environ.get(where)
        if not value:
            raise ConfigError(f"${where}", None, "environment variable is not set or empty")
        return value.encode()
    where = str(credential_path(where))
    try:
        # Not a FIFO or a device (a read of one would block or never end): O_NONBLOCK, then the
        # type of what was opened. Links are followed: the kubelet mounts a Secret's files as
        # links through ``..data``.
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(where, None, f"cannot read secret file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(where, None, "is not a regular file: a secret file holds the secret itself")
        if (problem := checks.readable_by_others(st.st_mode)) is not None:
            # Refused as the node key is, and as `config check` calls it.
            raise ConfigError(where, None, f"{problem}: any user of this host may have read it; run: chmod 600 "
                                           f"{where} (and replace the secret if others could log in)")
        if st.st_size > SECRET_FILE_MAX:
            raise ConfigError(where, None, f"is {st.st_size} bytes, more than any key ({SECRET_FILE_MAX} at most): "
                                           "is it the right file?")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(where, None, f"cannot read secret file: {exc.strerror}") from None
    finally:
        os.close(fd)
    text = data.rstrip(b"\r\n")
    return text.strip() if text.isascii() and text.decode().strip().isprintable() else data
