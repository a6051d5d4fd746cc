"""Writing age v1 files to X25519 recipients, streaming, with ``cryptography``'s primitives.

Why not pyrage here: its ``encrypt_io`` pulls 8 KiB at a time through Python and ran at about
850 MB/s, while ChaCha20-Poly1305 from ``cryptography`` on 64 KiB chunks runs at about 3 GB/s;
on a 300 MB run that gap alone made sealing slower than ``tar | zstd | age``. Decryption stays
with pyrage (the maintained implementation); every file written here is checked by the real
``age -d`` in the tests (tests/test_agefmt.py).

The format (https://age-encryption.org/v1), all of it that a writer needs::

    age-encryption.org/v1
    -> X25519 <base64(ephemeral share)>
    <base64(ChaCha20-Poly1305(wrap key, zero nonce, file key))>
    --- <base64(HMAC-SHA256(HKDF(file key, "", "header"), header up to "---"))>
    <16-byte nonce><payload: 64 KiB chunks, ChaCha20-Poly1305 under HKDF(file key, nonce,
     "payload"), chunk nonce = 11-byte big-endian counter || 1 on the last chunk else 0>

Base64 is standard, unpadded; the wrap key is HKDF-SHA256(shared secret, salt = share ||
recipient, info = "age-encryption.org/v1/X25519").
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Callable, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INTRO = b"age-encryption.org/v1\n"
X25519_LABEL = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class AgeFormatError(ValueError):
    pass


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def _bech32_polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def recipient_key(recipient: object) -> bytes:
    """The 32-byte X25519 public key of an ``age1...`` recipient (a string or a pyrage Recipient)."""
    text = str(recipient).strip().lower()
    hrp, sep, data = text.rpartition("1")
    if hrp != "age" or not sep or len(data) < 6 or any(c not in _BECH32 for c in data):
        raise AgeFormatError("not an age X25519 recipient (age1...)")
    values = [_BECH32.index(c) for c in data]
    hrp_exp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _bech32_polymod(hrp_exp + values) != 1:
        raise AgeFormatError("the recipient's bech32 checksum is wrong")
    acc = bits = 0
    out = bytearray()
    for v in values[:-6]:
        acc, bits = acc << 5 | v, bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if len(out) != 32:
        raise AgeFormatError("the recipient does not hold a 32-byte key")
    return bytes(out)


def _x25519_stanza(file_key: bytes, recipient: bytes) -> bytes:
    eph = X25519PrivateKey.generate()
    share = eph.public_key().public_bytes(*_RAW)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
    if not any(shared):
        raise AgeFormatError("the recipient is a low-order point")
    wrap_key = _hkdf(shared, share + recipient, X25519_LABEL)
    body = ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"  # 43 columns: one line


def header(file_key: bytes, recipients: Sequence[bytes]) -> bytes:
    if not recipients:
        raise AgeFormatError("at least one recipient is needed")
    head = INTRO + b"".join(_x25519_stanza(file_key, r) for r in recipients) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + b" " + _b64(mac) + b"\n"


class AgeWriter:
    """Encrypt a stream to ``recipients`` (raw 32-byte keys); ``sink`` receives the ciphertext
    as lists of pieces (whole chunks, never joined: the caller may hash and write them as they are).

    ``write`` may be called with pieces of any size; ``close`` seals the last chunk (a stream
    that is an exact multiple of 64 KiB ends with a full chunk flagged last, as the spec asks).
    """

    def __init__(self, sink: Callable[[list[bytes]], object], recipients: Sequence[bytes]) -> None:
        self._sink = sink
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        sink([header(file_key, recipients) + nonce])
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._pending = bytearray()
        self._closed = False

    def _seal(self, chunk: bytes | memoryview, last: bool) -> bytes:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, None)

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise ValueError("write after close")
        mv = memoryview(data)
        sealed: list[bytes] = []
        if self._pending:
            take = min(len(mv), CHUNK - len(self._pending))
            self._pending += mv[:take]
            mv = mv[take:]
            if not mv:
                return  # a full pending chunk waits: only close() knows which chunk is last
            sealed.append(self._seal(self._pending, False))
            self._pending.clear()
        if not mv:
            return
        # Whole chunks straight from the caller's buffer (no copy); at least one byte is kept.
        full = (len(mv) - 1) // CHUNK * CHUNK
        sealed.extend(self._seal(mv[i:i + CHUNK], False) for i in range(0, full, CHUNK))
        self._pending += mv[full:]
        if sealed:
            self._sink(sealed)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink([self._seal(bytes(self._pending), True)])
            self._pending = bytearray()
