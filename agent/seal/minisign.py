"""Ed25519 signatures in minisign's format, so the stock ``minisign -V`` checks our bundles.

Formats (https://jedisct1.github.io/minisign/):

- public key file, exactly as ``minisign -G`` writes it::

      untrusted comment: minisign public key <KEYID as %016X>
      base64("Ed" || key_id[8] || public_key[32])

- secret key file: minisign's *unencrypted* secret key format (what ``minisign -G -W``
  writes), so an operator can also sign with the stock tool. The agent runs unattended, so a
  passphrase would have to sit next to the key anyway; the file is 0600 instead::

      untrusted comment: minisign encrypted secret key
      base64("Ed" || kdf "\\0\\0" || "B2" || salt[32]=0 || ops[8]=0 || mem[8]=0
             || key_id[8] || seed[32] || public_key[32] || checksum[32])

  checksum = BLAKE2b-256("Ed" || key_id || seed || public_key). ``minisign -W`` 0.11 writes
  zeros there; both are accepted when reading.

- signature file, the prehashed "ED" variant: the signed message is BLAKE2b-512 of the file,
  computed while streaming, so signing never holds a bundle in memory::

      untrusted comment: <free text>
      base64("ED" || key_id[8] || Ed25519(BLAKE2b-512(file)))
      trusted comment: <one line>
      base64(Ed25519(signature[64] || trusted_comment))

Everything here is pure (bytes and text in, bytes and text out) except ``hash_file``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PK_ALG = b"Ed"
SIG_ALG_PREHASHED = b"ED"
KDF_NONE = b"\0\0"
CHK_ALG = b"B2"
UNTRUSTED_PREFIX = "untrusted comment: "
TRUSTED_PREFIX = "trusted comment: "
_SK_LEN = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32


class MinisignError(Exception):
    """A key or signature file that cannot be used. Never carries secret material."""


class BadSignature(MinisignError):
    """The signature does not match the file or its trusted comment."""


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes  # 8 bytes, as stored (little-endian)
    raw: bytes     # 32-byte Ed25519 public key

    @property
    def key_id_hex(self) -> str:
        """The id as minisign prints it."""
        return format_key_id(self.key_id)

    def to_file(self) -> str:
        b64 = base64.b64encode(PK_ALG + self.key_id + self.raw).decode()
        return f"{UNTRUSTED_PREFIX}minisign public key {self.key_id_hex}\n{b64}\n"

    def base64(self) -> str:
        """The one-line form ``minisign -P`` takes."""
        return base64.b64encode(PK_ALG + self.key_id + self.raw).decode()


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    seed: bytes  # 32 bytes

    def __repr__(self) -> str:  # never show the seed in logs or tracebacks
        return f"SecretKey(key_id={format_key_id(self.key_id)})"

    @property
    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def public(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(self.key_id, raw)

    def to_file(self) -> str:
        pk = self.public().raw
        chk = hashlib.blake2b(PK_ALG + self.key_id + self.seed + pk, digest_size=32).digest()
        blob = PK_ALG + KDF_NONE + CHK_ALG + bytes(32) + bytes(8) + bytes(8) + self.key_id + self.seed + pk + chk
        return f"{UNTRUSTED_PREFIX}minisign encrypted secret key\n{base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    signature: bytes        # over BLAKE2b-512 of the file
    trusted_comment: str
    global_signature: bytes  # over signature || trusted_comment
    untrusted_comment: str = ""

    def to_file(self) -> str:
        line1 = base64.b64encode(SIG_ALG_PREHASHED + self.key_id + self.signature).decode()
        line2 = base64.b64encode(self.global_signature).decode()
        return (f"{UNTRUSTED_PREFIX}{self.untrusted_comment}\n{line1}\n"
                f"{TRUSTED_PREFIX}{self.trusted_comment}\n{line2}\n")


def format_key_id(key_id: bytes) -> str:
    return f"{int.from_bytes(key_id, 'little'):016X}"


def generate() -> SecretKey:
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return SecretKey(os.urandom(8), seed)


def _b64(line: str, what: str) -> bytes:
    try:
        return base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MinisignError(f"{what}: not valid base64") from None


def _lines(text: str, what: str, n: int) -> list[str]:
    lines = text.splitlines()
    if len(lines) < n:
        raise MinisignError(f"{what}: expected {n} lines, found {len(lines)}")
    return lines


def parse_public_key(text: str) -> PublicKey:
    """A ``.pub`` file's text, or the bare base64 line that ``minisign -P`` takes."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise MinisignError("public key: empty")
    line = lines[1] if lines[0].startswith(UNTRUSTED_PREFIX) and len(lines) > 1 else lines[0]
    blob = _b64(line, "public key")
    if len(blob) != 42 or blob[:2] != PK_ALG:
        raise MinisignError("public key: not a minisign Ed25519 public key")
    return PublicKey(blob[2:10], blob[10:42])


def parse_secret_key(text: str) -> SecretKey:
    """An unencrypted minisign secret key file. Error messages never include key bytes."""
    lines = _lines(text, "secret key", 2)
    blob = _b64(lines[1], "secret key")
    if len(blob) != _SK_LEN or blob[:2] != PK_ALG or blob[4:6] != CHK_ALG:
        raise MinisignError("secret key: not a minisign Ed25519 secret key")
    if blob[2:4] != KDF_NONE:
        raise MinisignError("secret key: encrypted with a password; the agent needs an unencrypted "
                            "key (tfwb-agent keys init --node, or minisign -G -W)")
    key_id, sk, chk = blob[54:62], blob[62:126], blob[126:158]
    seed, pk = sk[:32], sk[32:]
    if chk != bytes(32) and chk != hashlib.blake2b(PK_ALG + key_id + sk, digest_size=32).digest():
        raise MinisignError("secret key: checksum mismatch (damaged file)")
    key = SecretKey(key_id, seed)
    if key.public().raw != pk:
        raise MinisignError("secret key: public half does not match the secret half (damaged file)")
    return key


def parse_signature(text: str) -> Signature:
    lines = _lines(text, "signature", 4)
    if not lines[0].startswith(UNTRUSTED_PREFIX) or not lines[2].startswith(TRUSTED_PREFIX):
        raise MinisignError("signature: not a minisign signature file")
    blob = _b64(lines[1], "signature")
    if len(blob) != 74:
        raise MinisignError("signature: wrong length")
    if blob[:2] != SIG_ALG_PREHASHED:
        raise MinisignError(f"signature: algorithm {blob[:2]!r} is not the prehashed 'ED' this agent uses")
    glob = _b64(lines[3], "signature (trusted comment)")
    if len(glob) != 64:
        raise MinisignError("signature: trusted comment signature has the wrong length")
    return Signature(blob[2:10], blob[10:74], lines[2][len(TRUSTED_PREFIX):], glob,
                     lines[0][len(UNTRUSTED_PREFIX):])


def new_hash() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=64)


def hash_file(f: BinaryIO, chunk: int = 1 << 20) -> bytes:
    """BLAKE2b-512 of a whole open file, read in chunks (bounded memory)."""
    h = new_hash()
    while block := f.read(chunk):
        h.update(block)
    return h.digest()


def sign_digest(key: SecretKey, digest: bytes, trusted_comment: str,
                untrusted_comment: str = "signature from tfwb-agent node key") -> Signature:
    """Sign a file given its BLAKE2b-512 ``digest`` (the prehashed "ED" variant)."""
    if "\n" in trusted_comment or "\r" in trusted_comment:
        raise ValueError("a trusted comment is one line")
    sk = key._key
    sig = sk.sign(digest)
    glob = sk.sign(sig + trusted_comment.encode())
    return Signature(key.key_id, sig, trusted_comment, glob, f"{untrusted_comment} {format_key_id(key.key_id)}")


def verify_digest(pub: PublicKey, sig: Signature, digest: bytes) -> None:
    """Raise ``BadSignature`` unless ``sig`` signs ``digest`` and its trusted comment."""
    if sig.key_id != pub.key_id:
        raise BadSignature(f"signed by key {format_key_id(sig.key_id)}, not {pub.key_id_hex}")
    vk = Ed25519PublicKey.from_public_bytes(pub.raw)
    try:
        vk.verify(sig.signature, digest)
    except InvalidSignature:
        raise BadSignature("signature does not match the file") from None
    try:
        vk.verify(sig.global_signature, sig.signature + sig.trusted_comment.encode())
    except InvalidSignature:
        raise BadSignature("trusted comment was altered") from None
