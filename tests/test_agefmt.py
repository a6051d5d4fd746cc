"""The age writer (tfwb_agent.seal.agefmt) against the real `age` tool and pyrage.

Sizes around the 64 KiB chunk boundary matter: the last chunk carries the final flag, and a
stream that is an exact multiple of 64 KiB must end with a full chunk, not an empty one.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from tfwb_agent.seal import agefmt

SIZES = [0, 1, 65535, 65536, 65537, 2 * 65536, 3 * 65536 + 5, 1_000_003]


def encrypt(data: bytes, recipients: list[bytes], seed: int) -> bytes:
    pieces: list[bytes] = []
    w = agefmt.AgeWriter(pieces.extend, recipients)
    rng, at = random.Random(seed), 0
    while at < len(data):  # writes of uneven sizes, as the compressor hands them over
        n = rng.choice([1, 100, 65535, 65536, 70000, 300000])
        w.write(data[at:at + n])
        at += n
    w.close()
    return b"".join(pieces)


@pytest.fixture(scope="module")
def keygen(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("agekeys")
    out = []
    for i in range(2):
        key = d / f"k{i}.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        rcp = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
        out.append((key, rcp))
    return out


@pytest.mark.parametrize("size", SIZES)
def test_age_tool_decrypts_every_size(keygen: list[tuple[Path, str]], size: int) -> None:
    data = os.urandom(size)
    ct = encrypt(data, [agefmt.recipient_key(r) for _, r in keygen], seed=size)
    for key, _ in keygen:  # each of the two recipients can open it
        r = subprocess.run(["age", "-d", "-i", str(key)], input=ct, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == data
    ident = x25519.Identity.from_str(keygen[1][0].read_text().strip().splitlines()[-1])
    assert pyrage.decrypt(ct, [ident]) == data


def test_payload_tampering_is_caught_by_age(keygen: list[tuple[Path, str]]) -> None:
    data = os.urandom(200_000)
    ct = bytearray(encrypt(data, [agefmt.recipient_key(keygen[0][1])], seed=1))
    ct[len(ct) // 2] ^= 1
    r = subprocess.run(["age", "-d", "-i", str(keygen[0][0])], input=bytes(ct), capture_output=True)
    assert r.returncode != 0
    # Cut at a chunk boundary: without the final-flagged chunk, age must refuse it too.
    whole = encrypt(data, [agefmt.recipient_key(keygen[0][1])], seed=2)
    header_end = whole.index(b"\n", whole.index(b"\n---")) + 1 + 16
    cut = whole[:header_end + 2 * (agefmt.CHUNK + 16)]
    r = subprocess.run(["age", "-d", "-i", str(keygen[0][0])], input=cut, capture_output=True)
    assert r.returncode != 0


def test_recipient_key_matches_age_keygen(keygen: list[tuple[Path, str]]) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    for key, rcp in keygen:
        ident = x25519.Identity.from_str(key.read_text().strip().splitlines()[-1])
        assert str(ident.to_public()) == rcp
        raw = agefmt.recipient_key(rcp)
        assert len(raw) == 32
        # The same key pair seen from the secret side: decode the secret and derive its public key.
        secret = _bech32_bytes(str(ident).lower(), "age-secret-key-")
        pub = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert pub == raw


def _bech32_bytes(text: str, hrp: str) -> bytes:
    data = text[len(hrp) + 1:-6]
    acc = bits = 0
    out = bytearray()
    for c in data:
        acc, bits = acc << 5 | agefmt._BECH32.index(c), bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


@pytest.mark.parametrize("bad", ["", "age1", "bob1qqqq", "age1" + "q" * 58, "not a key"])
def test_bad_recipients_are_refused(bad: str) -> None:
    with pytest.raises(agefmt.AgeFormatError):
        agefmt.recipient_key(bad)


def test_a_flipped_recipient_character_fails_the_checksum(keygen: list[tuple[Path, str]]) -> None:
    rcp = keygen[0][1]
    i = len(rcp) // 2
    flipped = rcp[:i] + ("q" if rcp[i] != "q" else "p") + rcp[i + 1:]
    with pytest.raises(agefmt.AgeFormatError, match="checksum"):
        agefmt.recipient_key(flipped)
