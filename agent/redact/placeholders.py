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

TAG_KEYWORD = "tfwb-redacted"


def tag(secret: bytes, data: bytes) -> str:
    """Full keyed tag (64 hex characters) of a media file's bytes."""
    return hmac.new(secret, b"media\x00" + data, hashlib.sha256).hexdigest()


def text_tag(secret: bytes, kind: str, value: str) -> str:
    """Short keyed tag for a text value (a secret, a path, a table cell, a host name)."""
    msg = kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:16]


# --- images -----------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=64)
def _gray_idat(width: int, height: int) -> bytes:
    # One mid-grey 8-bit greyscale image per size, compressed once: the expensive part of a
    # placeholder is shared by every image of that size.
    row = b"\x00" + b"\x80" * width
    return _chunk(b"IDAT", zlib.compress(row * height, 9))


def image_png(width: int, height: int, tag_hex: str) -> bytes:
    """A grey PNG of the original's size with the tag in a tEXt chunk."""
    width, height = max(1, int(width)), max(1, int(height))
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    text = _chunk(b"tEXt", TAG_KEYWORD.encode() + b"\x00" + tag_hex.encode())
    return b"\x89PNG\r\n\x1a\n" + ihdr + text + _gray_idat(width, height) + _chunk(b"IEND", b"")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image; PNG read from its header, other formats through Pillow."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # an unreadable image still gets a placeholder, of a nominal size
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
    """A one-frame grey GIF of the video's frame size, the tag in a GIF comment."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (max(1, int(width)), max(1, int(height))), 128).save(
        buf, "GIF", comment=f"{TAG_KEYWORD} {tag_hex}".encode())
    return buf.getvalue()


def html_page(tag_hex: str) -> bytes:
    """An emptied page that says what happened."""
    return (f"<!doctype html><meta name=\"{TAG_KEYWORD}\" content=\"{tag_hex}\">"
            f"<p>redacted by tfwb-agent ({tag_hex[:16]})</p>").encode()


def text_placeholder(tag_hex: str) -> bytes:
    """For kinds without a natural empty form (3-D objects, molecules, plots)."""
    return f"{TAG_KEYWORD} {tag_hex}\n".encode()
