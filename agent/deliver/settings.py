"""The delivery sections of the config: ``[targets.NAME]``, ``[sync]`` and ``[[policy]]``.

Validated here (registered in ``config.SECTION_VALIDATORS``), so a bad value fails at start
with the file, the key and what is wrong. API keys are never inline: a target names a file
(``api_key_file``, systemd credentials included) or an environment variable (``api_key_env``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .. import config as config_mod
from .. import config_checks as checks
from .. import ids
from ..config import ConfigError
from . import clients  # each target's wandb client, found by the probe and the upload (clients.py)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    key_ref: tuple[str, str]          # ("file", path) | ("env", NAME): where the key lives
    entity: str | None = None         # upload under this entity instead of the run's own
    project: str | None = None        # upload into this project instead of the run's own
    timeout: float = 20.0             # one HTTP request (probe, confirmation)
    ca_file: str | None = None        # PEM bundle of the CA(s) that signed the server's certificate
    wandb: str | None = None          # the sync client: a version ("0.25.1") or a Python's path; None: the agent's
    wandb_index: str | None = None    # where a pinned version is installed from: a wheelhouse dir or an index URL

    def api_key(self) -> str:
        """Read the key now (it may rotate). Never log or print the result."""
        try:
            return config_mod.read_secret(self.key_ref).decode().strip()
        except UnicodeDecodeError:
            kind, where = self.key_ref
            raise ConfigError(f"${where}" if kind == "env" else where, None,
                              "holds bytes that are not text: a W&B API key is text (40 characters, or "
                              "local-… for W&B Server)") from None

    def describe(self) -> dict[str, Any]:
        kind, where = self.key_ref
        return {"base_url": self.base_url, f"api_key_{kind}": where, "entity": self.entity,
                "project": self.project, "timeout": self.timeout, "ca_file": self.ca_file,
                "wandb": self.wandb or "beside the agent", "wandb_index": self.wandb_index}


@dataclass(frozen=True)
class SyncSettings:
    max_parallel: int = 4
    live: bool = False
    backoff_base: float = 5.0         # first retry after an offline probe (seconds, before jitter)
    backoff_cap: float = 600.0        # never wait longer than this between probes
    key_rejected_retry: float = 3600.0  # a rejected key is probed again this rarely (no storm)
    upload_timeout: float = 3600.0    # a `wandb sync`, per max_parallel runs it uploads
    live_interval: float = 60.0       # how often a live run is cut into a new segment

    def describe(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Window:
    start: int  # minutes after local midnight
    end: int    # may be <= start: the window runs across midnight
    text: str


@dataclass(frozen=True)
class PolicyRule:
    projects: tuple[str, ...]
    targets: tuple[str, ...]
    windows: tuple[Window, ...] = ()
    max_age_days: float | None = None
    hold: bool = False
    index: int = 0

    def describe(self) -> dict[str, Any]:
        return {"projects": list(self.projects), "targets": list(self.targets),
                "windows": [w.text for w in self.windows], "max_age_days": self.max_age_days,
                "hold": self.hold}


@dataclass(frozen=True)
class Policies:
    rules: tuple[PolicyRule, ...] = field(default_factory=tuple)

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.rules]


@dataclass(frozen=True)
class Targets:
    by_name: dict[str, Target] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {n: t.describe() for n, t in self.by_name.items()}


_table, _str, _number = checks.table, checks.text, checks.number_above


def _strings(source: str, key: str, value: Any) -> tuple[str, ...]:
    return checks.strings(source, key, value, non_empty=True)


_INLINE_KEY = {"api_key": " (API keys are never inline: use api_key_file or api_key_env)"}


def _unknown(source: str, prefix: str, table: dict[str, Any], allowed: set[str]) -> None:
    checks.known_keys(source, prefix, table, allowed, _INLINE_KEY)


def parse_window(source: str, key: str, text: Any) -> Window:
    m = _WINDOW.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(source, key, f"must look like \"22:00-06:00\" (local time, 24-hour), got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h2 == 24 and m2 != 0:
        raise ConfigError(source, key, f"{text!r}: 24:MM is only valid as 24:00")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % 1440 and not (start == 0 and end == 1440):
        raise ConfigError(source, key, f"{text!r} is empty (start equals end); use \"00:00-24:00\" for always")
    return Window(start, end, text)


def validate_targets(source: str, raw: Any) -> Targets:
    raw = _table(source, "targets", raw)
    out: dict[str, Target] = {}
    allowed = {"base_url", "api_key_file", "api_key_env", "entity", "project", "timeout", "ca_file", "wandb",
               "wandb_index"}
    for name, t in raw.items():
        prefix = f"targets.{name}"
        if not _NAME.match(name) or ids.why_not(name):
            raise ConfigError(source, prefix, "a target name is letters, digits, '.', '_' or '-' "
                              "(not first '.' or '-')")
        t = _table(source, prefix, t)
        if "api_key" in t:  # before the unknown-key check: say why, not just "unknown"
            raise ConfigError(source, f"{prefix}.api_key", "secrets are never inline; use api_key_file or api_key_env")
        _unknown(source, prefix, t, allowed)
        url = _str(source, f"{prefix}.base_url", t.get("base_url"))
        try:
            u = urlparse(url)
            u.port  # noqa: B018 (a port that is no number raises here)
        except ValueError:
            raise ConfigError(source, f"{prefix}.base_url", f"is not a URL: {url!r}") from None
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError(source, f"{prefix}.base_url", f"must be an http(s) URL, got {url!r}")
        if u.username or u.password:
            raise ConfigError(source, f"{prefix}.base_url", "must not carry credentials; use api_key_file")
        if u.query or u.fragment:   # (``?api_key=…`` is shown wherever the target is)
            raise ConfigError(source, f"{prefix}.base_url", "must be the server's address alone, without a query "
                              "or a fragment; the key goes in api_key_file or api_key_env")
        ref = config_mod.secret_source(t, source, prefix, "api_key")
        ca_file = None
        if "ca_file" in t:
            ca_file = str(checks.absolute_path(source, f"{prefix}.ca_file", t["ca_file"]))
            if not os.path.isfile(ca_file):
                raise ConfigError(source, f"{prefix}.ca_file", f"{ca_file} is not a readable file (a PEM bundle "
                                  "of the CA that signed the server's certificate)")
        wandb, index = _client(source, prefix, t)
        out[name] = Target(
            name=name, base_url=url.rstrip("/"), key_ref=ref,
            entity=_str(source, f"{prefix}.entity", t["entity"]) if "entity" in t else None,
            project=_str(source, f"{prefix}.project", t["project"]) if "project" in t else None,
            timeout=_number(source, f"{prefix}.timeout", t.get("timeout", 20)), ca_file=ca_file,
            wandb=wandb, wandb_index=index)
    for a in out.values():
        for b in out.values():
            if a.name < b.name and a.base_url == b.base_url and (a.wandb, a.wandb_index) != (b.wandb, b.wandb_index):
                raise ConfigError(source, f"targets.{b.name}.wandb", f"targets {a.name} and {b.name} share base_url "
                                  f"{a.base_url} but name different wandb clients; give them the same one")
    return Targets(out)


def _client(source: str, prefix: str, t: dict[str, Any]) -> tuple[str | None, str | None]:
    """``wandb``: a version to install ("0.25.1") or the absolute path of a Python that has wandb;
    ``wandb_index``: a wheelhouse directory or a package index URL for that install."""
    wandb = index = None
    if "wandb" in t:
        wandb = _str(source, f"{prefix}.wandb", t["wandb"]).strip()
        if wandb.startswith("/"):
            if not (os.path.isfile(wandb) and os.access(wandb, os.X_OK)):
                raise ConfigError(source, f"{prefix}.wandb", f"{wandb} is not an executable file (the path of a "
                                  "Python that has wandb, or a version such as \"0.25.1\")")
        elif not clients.VERSION.match(wandb.lstrip("=")):
            raise ConfigError(source, f"{prefix}.wandb", f"must be a wandb version such as \"0.25.1\" or the "
                              f"absolute path of a Python that has wandb, got {wandb!r}")
        else:
            wandb = wandb.lstrip("=")
    if "wandb_index" in t:
        index = _str(source, f"{prefix}.wandb_index", t["wandb_index"])
        if not index.startswith(("http://", "https://", "file://")) and not os.path.isabs(index):
            raise ConfigError(source, f"{prefix}.wandb_index", f"must be a wheelhouse directory (absolute path) or "
                              f"a package index URL, got {index!r}")
        u = urlparse(index)
        if u.username or u.password:  # it is shown by `config check` and `status`
            raise ConfigError(source, f"{prefix}.wandb_index", "must not carry credentials; give pip the index's "
                              "login the way pip reads it (the service's PIP_INDEX_URL, or a .netrc)")
    return wandb, index


def validate_sync(source: str, raw: Any) -> SyncSettings:
    raw = _table(source, "sync", raw)
    d = SyncSettings()
    _unknown(source, "sync", raw, set(d.__dict__))
    mp = checks.whole_number(source, "sync.max_parallel", raw.get("max_parallel", d.max_parallel), 1, 64)
    live = checks.boolean(source, "sync.live", raw.get("live", d.live))
    nums = {k: _number(source, f"sync.{k}", raw.get(k, getattr(d, k)))
            for k in ("backoff_base", "backoff_cap", "key_rejected_retry", "upload_timeout", "live_interval")}
    if nums["backoff_cap"] < nums["backoff_base"]:
        raise ConfigError(source, "sync.backoff_cap", "must be at least sync.backoff_base")
    return SyncSettings(max_parallel=mp, live=live, **nums)


def validate_policy(source: str, raw: Any) -> Policies:
    if not isinstance(raw, list):
        raise ConfigError(source, "policy", "must be an array of tables: [[policy]]")
    rules = []
    allowed = {"projects", "targets", "windows", "max_age_days", "hold"}
    for i, r in enumerate(raw):
        prefix = f"policy[{i}]"
        r = _table(source, prefix, r)
        _unknown(source, prefix, r, allowed)
        windows = r.get("windows", [])
        if isinstance(windows, str) or not isinstance(windows, list):
            raise ConfigError(source, f"{prefix}.windows", "must be a list like [\"22:00-06:00\"]")
        hold = checks.boolean(source, f"{prefix}.hold", r.get("hold", False))
        rules.append(PolicyRule(
            projects=_strings(source, f"{prefix}.projects", r.get("projects")),
            targets=_strings(source, f"{prefix}.targets", r.get("targets")),
            windows=tuple(parse_window(source, f"{prefix}.windows[{j}]", w) for j, w in enumerate(windows)),
            max_age_days=_number(source, f"{prefix}.max_age_days", r["max_age_days"]) if "max_age_days" in r else None,
            hold=hold, index=i))
    return Policies(tuple(rules))


def targets(cfg: config_mod.Config) -> dict[str, Target]:
    t = cfg.sections.get("targets")
    out = dict(t.by_name) if t else {}
    clients.register(out, cfg.state_dir)
    return out


def sync_settings(cfg: config_mod.Config) -> SyncSettings:
    return cfg.sections.get("sync") or SyncSettings()


def policies(cfg: config_mod.Config) -> tuple[PolicyRule, ...]:
    p = cfg.sections.get("policy")
    return p.rules if p else ()


def check_references(cfg: config_mod.Config) -> list[str]:
    """Policy rules naming targets that are not configured (a typo would silently send nothing)."""
    names = set(targets(cfg))
    return [f"policy[{r.index}] names target {t!r}, which is not configured under [targets]"
            for r in policies(cfg) for t in r.targets if t not in names]


config_mod.SECTION_VALIDATORS["targets"] = validate_targets
config_mod.SECTION_VALIDATORS["sync"] = validate_sync
config_mod.SECTION_VALIDATORS["policy"] = validate_policy
