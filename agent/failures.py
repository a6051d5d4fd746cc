"""Failures a user can cause (a full disk, a read-only or damaged ledger, a file without read
permission), recognised and said in words: what went wrong, where, and what to do.

Pure functions from an exception to a message (or None: not one of ours to explain); the CLI
and the daemon decide what to do with it.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DENIED_ERRNOS = (errno.EACCES, errno.EPERM)


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None  # the primary code of an extended one


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or its inodes, or the user's quota) ran out."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return _sqlite_code(exc) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return False


def free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _sqlite_kind(exc: sqlite3.Error) -> str:
    code, text = _sqlite_code(exc), str(exc).lower()
    if disk_full(exc):
        return "full"
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "not a database" in text or "malformed" in text:
        return "damaged"
    if code == sqlite3.SQLITE_READONLY or "readonly database" in text:
        return "read-only"
    if code == sqlite3.SQLITE_CANTOPEN or "unable to open" in text:
        return "cannot open"
    if code == sqlite3.SQLITE_IOERR or "disk i/o error" in text:
        return "i/o"
    return "other"


def ledger_message(path: Path, exc: sqlite3.Error) -> str:
    """What went wrong with the ledger at ``path`` and what to do."""
    kind = _sqlite_kind(exc)
    if kind == "full":
        return f"the disk holding the ledger {path} is full ({exc}); free space there, then run the command again"
    if kind == "damaged":
        return (f"the ledger {path} is damaged ({exc}); move it aside and build a new one: stop the daemon, then "
                "`tfwb-agent ledger rebuild` (keeps it as ledger.sqlite3.damaged-TIME with its -wal and -shm, never "
                "deletes it, and rebuilds runs and bundles from the outbox, the audit log and the volume: runs this "
                "node sealed are not sealed again); `tfwb-agent ledger check` says what is wrong. On a gateway, "
                "import the media again afterwards for bundles no longer staged")
    if kind == "read-only":
        return (f"the ledger {path} is read-only for this user ({exc}); run the command as the agent's user "
                f"(e.g. `sudo -u tfwb-agent tfwb-agent …`) or make the ledger and its directory writable")
    if kind == "cannot open":
        return (f"cannot open the ledger {path} ({exc}); check state_dir in the config and that this user may "
                "write there")
    if kind == "i/o":
        free = free_bytes(path)
        hint = "the disk holding it is full" if free is not None and free < 1 << 20 else "the disk may be failing"
        return f"the ledger {path} cannot be read or written ({exc}): {hint} ({free} bytes free); look at `df {path.parent}`"
    return f"the ledger {path}: {exc}"


def os_message(exc: OSError) -> str | None:
    """A full disk, a denied permission, a read-only filesystem: said with the file; else None."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in _FULL_ERRNOS:
        return f"{where}the disk is full ({exc.strerror}); free space there, then run the command again"
    if exc.errno in _DENIED_ERRNOS:
        return f"{where}permission denied; run the command as the agent's user, or give that user access"
    if exc.errno == errno.EROFS:
        return f"{where}the filesystem is read-only; the agent needs its state directory writable"
    return None


def user_message(exc: BaseException, ledger_path: Path | None) -> str | None:
    """The message for a failure a user can cause, or None (then it is a bug: let it show)."""
    if isinstance(exc, sqlite3.Error):
        return ledger_message(ledger_path, exc) if ledger_path else f"the ledger: {exc}"
    if isinstance(exc, OSError):
        return os_message(exc)
    return None
