"""Keyed tags and same-kind, same-shape placeholder files.

A tag is HMAC-SHA-256 of the original bytes under the site secret: equal originals give equal
tags in every run of the site (duplicates still show), and without the secret a tag can be
neither reversed nor checked against guesses. Each placeholder carries its tag, so its bytes
(and therefore its wandb file name, which embeds a hash of the content) follow the original's
identity and nothing else.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import io
import struct
import wave
import zlib
from typing import Callable

TAG_KEYWORD = "tfwb-redacted"


def tag(secret: bytes, data: bytes) -> str:
    """Full keyed tag (64 hex characters) of a media file's bytes."""
    return hmac.new(secret, b"media\x00" + data, hashlib.sha256).hexdigest()


def text_tag(secret: bytes, kind: str, value: str) -> str:
    """Short keyed tag for a text value (a secret, a path, a table cell, a host name)."""
    return text_tagger(secret)(kind, value)


def text_tagger(secret: bytes) -> Callable[[str, str], str]:
    """``text_tag`` under one secret, for many values (a caption of every image, a cell of
    every table): the keyed hash is set up once and copied per value, without deriving the
    HMAC's pads again each time."""
    base = hmac.new(secret, digestmod=hashlib.sha256)

    def tag(kind: str, value: str) -> str:
        h = base.copy()
        h.update(kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]
    return tag


# --- images -----------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=64)
def _gray_idat(width: int, height: int) -> bytes:
    # One mid-grey 8-bit greyscale image per size, compressed once: the expensive part of a
    # placeholder is shared by every image of that size.
    row = b"\x00" + b"\x80" * width
    return _chunk(b"IDAT", zlib.compress(row * height, 9))


@functools.lru_cache(maxsize=64)
def _png_parts(width: int, height: int) -> tuple[bytes, bytes]:
    # Everything of a placeholder PNG but its tag: the same for every image of that size.
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return head, _gray_idat(width, height) + _chunk(b"IEND", b"")


_TEXT_PREFIX = TAG_KEYWORD.encode() + b"\x00"


def image_png(width: int, height: int, tag_hex: str) -> bytes:
    """A grey PNG of the original's size with the tag in a tEXt chunk."""
    head, tail = _png_parts(max(1, int(width)), max(1, int(height)))
    return head + _chunk(b"tEXt", _TEXT_PREFIX + tag_hex.encode()) + tail


def image_size(data: bytes, hint: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of a PNG, GIF or JPEG, read from its header (no image library needed);
    else ``hint`` (the width/height wandb recorded), else 1x1."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 < len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
                return w, h
            pos += 2 + length
    if hint and all(isinstance(v, int) and v > 0 for v in hint):
        return hint
    return (1, 1)


# --- audio ------------------------------------------------------------------------------

def audio_shape(data: bytes) -> tuple[int, int, int]:
    """(frames, rate, channels) of a WAV file; other formats give a nominal 1 s mono clip."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes(), w.getframerate(), w.getnchannels()
    except Exception:
        return 16000, 16000, 1


def silent_wav(frames: int, rate: int, channels: int, tag_hex: str) -> bytes:
    """A silent 16-bit WAV of the same length, the tag in a RIFF LIST/INFO comment."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * channels * frames)
    body = buf.getvalue()
    comment = f"{TAG_KEYWORD} {tag_hex}".encode() + b"\x00"
    if len(comment) % 2:
        comment += b"\x00"
    info = b"INFO" + b"ICMT" + struct.pack("<I", len(comment)) + comment
    extra = b"LIST" + struct.pack("<I", len(info)) + info
    riff_size = struct.unpack("<I", body[4:8])[0] + len(extra)
    return body[:4] + struct.pack("<I", riff_size) + body[8:] + extra


# --- video, html, other -----------------------------------------------------------------

def video_gif(width: int, height: int, tag_hex: str) -> bytes:
    """A one-frame grey GIF of the video's frame size, the tag in a GIF comment.

    Written by hand (no image library at run time): every pixel is colour 0, coded as 8-bit
    LZW literals with a clear code every 125 pixels so the code width never grows."""
    w, h = max(1, int(width)), max(1, int(height))
    palette = bytes([128, 128, 128]) + b"\x00" * (128 * 3 - 3)
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80 | (6 << 4) | 6, 0, 0) + palette
    comment = f"{TAG_KEYWORD} {tag_hex}".encode()
    ext = b"\x21\xfe" + bytes([len(comment)]) + comment + b"\x00"
    n = w * h
    full, rest = divmod(n, 125)
    codes = (b"\x80" + b"\x00" * 125) * full + ((b"\x80" + b"\x00" * rest) if rest else b"") + b"\x81"
    blocks = b"".join(bytes([len(codes[i:i + 255])]) + codes[i:i + 255] for i in range(0, len(codes), 255))
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x07" + blocks + b"\x00"
    return head + ext + image + b"\x3b"


def html_page(tag_hex: str) -> bytes:
    """An emptied page that says what happened."""
    return (f"<!doctype html><meta name=\"{TAG_KEYWORD}\" content=\"{tag_hex}\">"
            f"<p>redacted by tfwb-agent ({tag_hex[:16]})</p>").encode()


def text_placeholder(tag_hex: str) -> bytes:
    """For kinds without a natural empty form (3-D objects, molecules, plots)."""
    return f"{TAG_KEYWORD} {tag_hex}\n".encode()
