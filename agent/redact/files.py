"""Files under a run's ``files/``: what each one is, and how it leaves (or does not).

Fail closed: a file leaves only if it is one the redactor understands (wandb's own metadata,
summary, config, console and requirements files, rewritten; media, decided by the policy's
rules), or the site named it in ``keep_files``. Any other file — a text file training code
wrote into ``run.dir``, a ``wandb.save()``d dump, TensorBoard event files — is dropped, or,
with ``scrub_files = true``, scrubbed if it is text. The decision is the same for the files
record that names a file and for the file itself (``file_action``).

Copies stream in blocks: memory stays bounded whatever a file's size.
"""
from __future__ import annotations

import codecs
import fnmatch
import functools
import hashlib
import os
import re
from typing import Any, BinaryIO, Callable

from .policy import Policy

BLOCK = 1 << 20
# wandb's own files, each with its rewrite (see run.py).
KNOWN = {"wandb-metadata.json": "metadata", "wandb-summary.json": "summary", "config.yaml": "config",
         "output.log": "console", "requirements.txt": "text", "conda-environment.yaml": "text"}


def _glob(path: str, globs: tuple[str, ...]) -> bool:
    return _globs_rx(globs).match(path) is not None if globs else False


@functools.lru_cache(maxsize=64)
def _globs_rx(globs: tuple[str, ...]) -> "re.Pattern[str]":
    # Any of the globs, as fnmatchcase reads each (asked for every file of every record).
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def is_tensorboard(rel: str) -> bool:
    return "tfevents" in rel.rsplit("/", 1)[-1]


def file_action(rel: str, policy: Policy) -> str:
    """``media``, one of ``KNOWN``'s kinds, ``keep``, ``scrub``, or ``drop:<why>``."""
    if is_tensorboard(rel):
        return "drop:tensorboard"
    if _glob(rel, policy.drop_files):
        return "drop:policy"
    if rel.startswith("media/"):
        return "media"
    if _glob(rel, policy.keep_files):
        return "keep"
    if rel in KNOWN:
        return KNOWN[rel]
    return "scrub" if policy.scrub_files else "drop:unknown"


class Sink:
    """Where a streamed copy goes: a new file (created exclusively), or nowhere (dry run)."""

    def __init__(self, path: str | None, also: Callable[[bytes], Any] | None = None) -> None:
        """``also`` sees every block written (another hash)."""
        self.f: BinaryIO | None = None
        self.also = also
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb")
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.sha.update(data)
        if self.also is not None:
            self.also(data)
        if self.f is not None:
            self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def copy_stream(src: str, sink: Sink, also: Callable[[bytes], Any] | None = None) -> int:
    """Copy ``src`` into ``sink`` block by block; ``also`` sees every block (a hash)."""
    n = 0
    with open(src, "rb") as f:
        while block := f.read(BLOCK):
            sink.write(block)
            if also is not None:
                also(block)
            n += len(block)
    return n


def is_text(src: str) -> bool:
    """UTF-8 without NUL bytes in its first block: text we can scrub. Anything else is not."""
    with open(src, "rb") as f:
        head = f.read(BLOCK)
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def scrub_text_file(src: str, sink: Sink, stream: Any, complete: bool = True) -> int:
    """Stream a text file through a ``console.TextStream`` (whole lines, PEM blocks held).
    Bytes that are not UTF-8 pass the scrubber as U+FFFD: they never leave as they were.

    ``complete=False``: a snapshot of a file still being written (a live segment). Its last
    line may not be finished even when it ends with a line feed (wandb writes the line the run
    is printing into ``output.log`` with one), so it stays back, as does whatever the stream
    holds (a key whose value has not come): the next snapshot has them whole."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    n = 0
    carry = ""      # (complete=False) from the start of the last line seen: not fed yet
    with open(src, "rb") as f:
        while block := f.read(BLOCK):
            n += len(block)
            text = dec.decode(block)
            if not complete:
                text, carry = _all_but_last_line(carry + text)
            sink.write(stream.feed(text).encode())
    if complete:
        sink.write((stream.feed(dec.decode(b"", final=True)) + stream.close()).encode())
    return n


def _all_but_last_line(text: str) -> tuple[str, str]:
    """(the text before its last line, its last line): a line feed at the very end belongs to
    the last line. A last line longer than a block is not held whole (the stream holds it)."""
    end = text.rfind("\n", 0, len(text) - 1) + 1
    if len(text) - end > BLOCK:
        return text, ""
    return text[:end], text[end:]
