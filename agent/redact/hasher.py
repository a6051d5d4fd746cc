"""Media placeholders made in a helper process, beside the record rewrite.

A big run's redaction time is partly per media file (read it, tag it with the keyed hash,
make its placeholder, hash that, create the new file) and partly per record; under one
interpreter lock the two take turns. The helper does the per-file part on another core while
the parent rewrites the records, and sends back what the records need (the new name, digest,
size, tag). It only ever writes placeholders: the decision (hash), the kind and the scrubbed
name come from the parent; files the policy keeps or drops, and tables (their placeholder
needs the scrubber), stay in the parent.

The helper is this file run as a script (``python -I -S hasher.py``): it imports the standard
library and ``placeholders.py`` by path, not the agent or wandb. It reads the secret, then
pickled task batches, on stdin, and writes one pickled result batch per task batch, in order,
on stdout. Each message is a 4-byte little-endian length and its bytes.
"""
from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import pickle
import queue
import stat
import struct
import sys
import threading
from typing import Any, BinaryIO

_NEW_FMT = {"image": "png", "audio": "wav", "video": "gif"}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
BLOCK = 1 << 20
# Kinds whose placeholder the helper makes (a table's needs the parent's scrubber).
KINDS = frozenset({"image", "audio", "video", "html", "object3d", "molecule", "any"})


def placeholder(ph: Any, kind: str, data: bytes, tag: str, hint: Any) -> bytes:
    """The placeholder of a media file of ``kind`` (every kind but tables, whose placeholder
    needs the run's scrubber): one rule for the helper process and the run's own."""
    if kind == "image":
        return ph.image_png(*ph.image_size(data, hint), tag)
    if kind == "audio":
        return ph.silent_wav(*ph.audio_shape(data), tag)
    if kind == "video":
        return ph.video_gif(*ph.image_size(data, hint), tag)
    if kind == "html":
        return ph.html_page(tag)
    return ph.text_placeholder(tag)


def read_all(fd: int, size: int) -> bytes:
    """All of an open file, to its end (whatever its size was when stat'ed): one read of its
    own size for a small file (a block-sized buffer for each of 10,000s of images costs more
    than the images)."""
    data = os.read(fd, size + 1)
    while block := os.read(fd, max(size, 1 << 16)):
        data += block
    return data


def read_tagged(fd: int, size: int, h: Any) -> bytes:
    """The bytes the placeholder needs (all of a small file, the first block of a big one);
    every byte goes into ``h``."""
    if size <= BLOCK:
        data = read_all(fd, size)
        h.update(data)
        return data
    data = os.read(fd, BLOCK)
    while len(data) < BLOCK and (block := os.read(fd, BLOCK - len(data))):
        data += block
    h.update(data)
    while block := os.read(fd, BLOCK):
        h.update(block)
    return data


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (os.write may take part of it), then close ``fd``."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_new(out: str, data: bytes) -> None:
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return      # an equal original's placeholder: the name embeds the content's hash
    write_all(fd, data)


def open_regular(path: str) -> tuple[int, os.stat_result] | None:
    """(fd, stat) of ``path`` opened for reading if it is a regular file when opened, else None:
    O_NOFOLLOW (a symlink swapped in is not followed), O_NONBLOCK (a FIFO does not hang the open).
    Shared by the helper and the redactor (this module loads with the standard library alone)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def one(ph: Any, base_hmac: Any, task: tuple, writes: list[tuple[str, bytes]]) -> tuple | None:
    """(new path, sha256, size, tag, format, bytes in) of one file, or None if it is not a
    regular file any more (swapped for a symlink, a FIFO ... since the parent checked it).
    The new path is ``prefix`` + the placeholder's hash + ``ext`` (the parent's naming); the
    file to create goes into ``writes``."""
    src, kind, hint, prefix, ext, out_dir = task
    opened = open_regular(src)
    if opened is None:
        return None
    fd, st = opened
    try:
        h = base_hmac.copy()
        data = read_tagged(fd, st.st_size, h)
    finally:
        os.close(fd)
    tag = h.hexdigest()
    new = placeholder(ph, kind, data, tag, hint)
    sha = hashlib.sha256(new).hexdigest()
    path = f"{prefix}{sha[:20]}{ext}"
    if out_dir is not None:
        writes.append((os.path.join(out_dir, "files/" + path), new))
    return path, sha, len(new), tag, _NEW_FMT.get(kind, ""), st.st_size


def _load_placeholders() -> Any:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("_tfwb_placeholders", os.path.join(here, "placeholders.py"))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def recv(f: BinaryIO) -> Any:
    """The next message, or None at the end of the stream."""
    head = f.read(4)
    if not head:
        return None
    if len(head) < 4:
        raise EOFError("short message header")
    (n,) = struct.unpack("<I", head)
    body = f.read(n)
    if len(body) < n:
        raise EOFError("short message")
    return pickle.loads(body)


def send(f: BinaryIO, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<I", len(body)) + body)
    f.flush()


def main() -> None:
    """Answers go back before their files are written: the parent needs the names, not the
    files, to go on; a thread creates the files meanwhile, and the exit status says whether
    all of them were (the parent waits for it before the redaction counts as done)."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    secret = recv(inp)
    ph = _load_placeholders()
    base = hmac.new(secret, b"media\x00", hashlib.sha256)
    todo: "queue.Queue[list[tuple[str, bytes]] | None]" = queue.Queue(maxsize=64)
    failed: list[BaseException] = []

    def writer() -> None:
        while (jobs := todo.get()) is not None:
            if not failed:
                try:
                    for path, data in jobs:
                        _write_new(path, data)
                except BaseException as exc:
                    failed.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while (batch := recv(inp)) is not None and not failed:
            writes: list[tuple[str, bytes]] = []
            try:
                send(out, ("ok", [one(ph, base, task, writes) for task in batch]))
            except BaseException as exc:   # the parent raises it; nothing more is done here
                send(out, ("error", f"{type(exc).__name__}: {exc}"))
                failed.append(exc)
                break
            todo.put(writes)
    finally:
        todo.put(None)
        thread.join()
    if failed:
        sys.stderr.write(f"tfwb media helper: {type(failed[0]).__name__}: {failed[0]}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
