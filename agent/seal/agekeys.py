"""age X25519 identities and recipients, in the text formats ``age-keygen`` uses.

An identity file, as ``age-keygen`` writes it::

    # created: 2026-11-27T05:59:00Z
    # public key: age1...
    AGE-SECRET-KEY-1...

Any number of ``AGE-SECRET-KEY-1`` lines may appear; ``#`` lines and blank lines are ignored.
Keys are pyrage's (the Rust ``age`` crate), which also decrypts; bundles are encrypted by
``agefmt``. This module only reads and writes text, and never puts a secret into an error message.
"""
from __future__ import annotations

import datetime as _dt
from typing import Sequence

import pyrage
from pyrage import x25519

SECRET_PREFIX = "AGE-SECRET-KEY-1"
RECIPIENT_PREFIX = "age1"


class AgeKeyError(Exception):
    pass


def generate() -> x25519.Identity:
    return x25519.Identity.generate()


def identity_file_text(identity: x25519.Identity, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    created = now.isoformat().replace("+00:00", "Z")
    return f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n"


def parse_identities(text: str, source: str = "identity file") -> list[x25519.Identity]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(SECRET_PREFIX):
            # Say which line, never what it holds: it may be a secret in another format.
            raise AgeKeyError(f"{source}: line {n} is not an age X25519 identity (AGE-SECRET-KEY-1...)")
        try:
            out.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise AgeKeyError(f"{source}: line {n} is not a valid age X25519 identity") from None
    if not out:
        raise AgeKeyError(f"{source}: holds no AGE-SECRET-KEY-1 line")
    return out


def parse_recipient(text: str) -> x25519.Recipient:
    text = text.strip()
    if not text.startswith(RECIPIENT_PREFIX):
        raise AgeKeyError(f"{text!r} is not an age X25519 recipient (age1...)")
    try:
        return x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        raise AgeKeyError(f"{text!r} is not a valid age X25519 recipient") from None


def recipients_of(identities: Sequence[x25519.Identity]) -> list[str]:
    return [str(i.to_public()) for i in identities]
