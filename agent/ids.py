"""Identifiers are not paths: the one check every id passes before it goes near a filesystem.

Ids come from places the agent does not control: a run's `.wandb` file (run id), a bundle's
signed comment and manifest (bundle id, run id, run directory, content id), a medium's file
names, the config (node name, target name). Each is checked here against a strict pattern
before anything builds a path from it: no ``.``/``..``, no ``/`` or ``\\``, no NUL or control
characters, nothing that starts like an option or a hidden file, at most ``MAX_LEN`` chars.
"""
from __future__ import annotations

import re

MAX_LEN = 128
# Letters, digits, '_', '-', '.'; first an alphanumeric or '_' (so never '.', '..', '.x' or '-x').
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CONTENT_ID = re.compile(r"sha256:[0-9a-f]{64}")


class BadId(ValueError):
    """An identifier that may not be used as a name; the message says which and why."""

    def __init__(self, kind: str, value: object, why: str) -> None:
        shown = repr(value)
        super().__init__(f"{kind} {shown[:80]}{'…' if len(shown) > 80 else ''} is not a plain identifier ({why})")
        self.kind, self.value, self.why = kind, value, why


def why_not(value: object) -> str | None:
    """Why ``value`` is not a plain identifier, or None if it is one."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a string"
    if not value:
        return "empty"
    if len(value) > MAX_LEN:
        return f"{len(value)} characters, more than {MAX_LEN}"
    if value in (".", ".."):
        return "a relative directory name"
    if "/" in value or "\\" in value:
        return "holds a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "holds NUL or a control character"
    if not _PLAIN.fullmatch(value):
        return "only letters, digits, '_', '-' and '.' are allowed, not first '.' or '-'"
    return None


def check(kind: str, value: object) -> str:
    """``value`` if it is a plain identifier, else ``BadId`` naming ``kind`` ("run id", ...)."""
    why = why_not(value)
    if why is not None:
        raise BadId(kind, value, why)
    return value  # type: ignore[return-value]


def check_content_id(value: object) -> str:
    if not isinstance(value, str) or not _CONTENT_ID.fullmatch(value):
        raise BadId("content id", value, "expected sha256: and 64 hex digits")
    return value
