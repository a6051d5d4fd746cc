"""Durable writes: a file is either its old whole content or its new whole content, across a
crash or a power cut, never a mix and never empty. The one owner of "write a temporary file in
the same directory, fsync it, rename it over the target, fsync the directory" (modelled on pip's
``utils/filesystem.py``: ``adjacent_tmp_file`` and ``replace``).

    write_bytes / write_text / write_json   replace a small file
    replacing(path)                          the same, streamed (a large file written in pieces)
    create_exclusive(path, data)             create a file whole, only if its name is free (O_EXCL)
    fsync_dir(path)                          make a directory's renames and unlinks durable

Every file gets exactly ``mode`` whatever the umask (a secret is never looser than asked, a
public file never tighter), set on the temporary file before a byte is written.

Temporary files are named ``.<target name>.<pid>-<random>.tmp`` beside the target. One left by
a writer that was killed is removed by the next successful write of the same target (when its
pid is no longer alive), so a crash loop never fills a directory with them. Pids are per host:
a target on a shared volume must be replaced from one host only (as a node's own ``.alive``
file is); ``create_exclusive`` never sweeps, so any number of hosts may race on one name.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target`` (same directory: a rename never crosses a filesystem)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(target: Path, mode: int) -> tuple[Path, int]:
    tmp = temp_path(target)
    fd = os.open(tmp, _FLAGS, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode passes through the umask; the caller asked for exactly this
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return tmp, fd


@contextmanager
def replacing(path: Path | str, mode: int = 0o644, buffering: int = -1) -> Iterator[BinaryIO]:
    """``with replacing(p) as f: f.write(...)``: ``p`` takes the new content when the block ends
    without an exception (fsynced, renamed over it, directory fsynced); an exception leaves the
    old content and no temporary file."""
    path = Path(path)
    tmp, fd = _open_temp(path, mode)
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    sweep(path)


def write_bytes(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    with replacing(path, mode) as f:
        f.write(data)


def write_text(path: Path | str, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode(), mode)


def write_json(path: Path | str, doc: Any, mode: int = 0o644, **dumps: Any) -> None:
    """``dumps``: json.dumps's options (indent, sort_keys, ...)."""
    write_bytes(path, json.dumps(doc, **dumps).encode(), mode)


def create_exclusive(path: Path | str, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data``, whole from the first instant it has its name; False (and
    nothing written) if the name exists already: it is never replaced. The temporary file is
    linked to the name, which fails if the name exists (a rename would replace it)."""
    path = Path(path)
    tmp, fd = _open_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep(target: Path | str) -> list[str]:
    """Remove the temporary files of ``target`` left by writers that died (their pid is gone);
    a live writer's, this process's included, are left alone. Returns the names removed."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-[0-9a-f]{{8}}\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for e in entries:
        m = pattern.match(e.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            try:
                os.unlink(e.path)
            except OSError:
                continue  # gone already, or not ours to remove (a shared directory)
            removed.append(e.name)
    return removed
