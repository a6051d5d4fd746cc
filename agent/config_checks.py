"""The config's value checks, one set for every section (top level, [watch], [keys], [redact],
[targets.*], [sync], [[policy]]): each takes the file, the key and the value, returns the
value as the agent uses it, or raises ``ConfigError`` naming the file, the key and what is
wrong. Owning ``ConfigError`` here lets ``config`` use these checks without a cycle.

Checks of the world outside the file (a key file that exists, a glob that matches) are not
here: they belong to ``config check`` (``cli/config_cmd.py``), since a config may be loaded
before its keys are made.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from .redact.secrets import message_scrubber


class ConfigError(Exception):
    """A configuration that cannot be used. The message says where and what to do. It goes to
    terminals, logs and the ledger: a value in it that looks like a secret (a key pasted where
    its file's path or its variable's name belongs) is not shown."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        source, problem = _masked(source), _masked(problem)
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")
        self.source, self.key, self.problem = source, key, problem


def looks_secret(value: Any) -> bool:
    """Whether a config value holds what the redactor's token rules take for a secret."""
    return isinstance(value, str) and _masked(value) != value


def _masked(text: str) -> str:
    # (``message_scrubber`` loads detect-secrets' rules when first asked: only a config with
    # something to say pays it.)
    return message_scrubber().scrub(text)[0] if text else text


def readable_by_others(st_mode: int) -> str | None:
    """What is wrong with a private file's mode, if anything: others may read it. (Its group may:
    a Kubernetes Secret volume with ``fsGroup``.) The one rule for keys, secrets and API keys."""
    return f"is readable by others (mode {stat.S_IMODE(st_mode):o})" if st_mode & 0o007 else None


def of_type(source: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind`` (a boolean never passes for a number)."""
    numeric = kind in (int, float, (int, float))
    if isinstance(value, bool) and numeric:
        raise ConfigError(source, key, f"must be {what}, not a boolean")
    if not isinstance(value, kind):
        raise ConfigError(source, key, f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def table(source: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"must be a table, got {type(value).__name__}")
    return value


def known_keys(source: str, prefix: str, raw: dict[str, Any], allowed: Iterable[str],
               hints: dict[str, str] | None = None) -> None:
    """Refuse a key not in ``allowed``, listing the known ones (``hints``: a word on why, per key)."""
    allowed = set(allowed)
    for key in raw:
        if key not in allowed:
            hint = (hints or {}).get(key, "")
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(source, where, f"unknown key (known: {', '.join(sorted(allowed))}){hint}")


def number_above(source: str, key: str, value: Any, minimum: float = 0.0, what: str = "a number") -> float:
    """A number strictly greater than ``minimum``."""
    of_type(source, key, value, (int, float), what)
    if value <= minimum:
        raise ConfigError(source, key, f"must be greater than {minimum:g}, got {value!r}")
    return float(value)


def seconds(source: str, key: str, value: Any) -> float:
    return number_above(source, key, value, 0.0, "a number of seconds")


def whole_number(source: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(source, key, f"must be a whole number from {low} to {high}, got {value!r}")
    return value


def boolean(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(source, key, f"must be true or false, got {value!r}")
    return value


def text(source: str, key: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(source, key, f"must be a non-empty string, got {value!r}")
    return value


def one_of(source: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(source, key, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def strings(source: str, key: str, value: Any, non_empty: bool = False) -> tuple[str, ...]:
    """A list of strings (a bare string is refused: ``["x"]`` was meant)."""
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(source, key, f"must be a list of strings, got {value!r}")
    if non_empty:
        if not value:
            raise ConfigError(source, key, "must be a non-empty list of strings")
        for i, v in enumerate(value):
            text(source, f"{key}[{i}]", v)
    return tuple(value)


def absolute_path(source: str, key: str, value: Any) -> Path:
    of_type(source, key, value, str, "a path (string)")
    if not os.path.isabs(value):
        raise ConfigError(source, key, f"must be an absolute path, got {value!r}")
    return Path(value)
