"""One writer per state directory: an ``flock`` that the daemon and every command that changes
state take, through this one helper.

Two lock files, one mechanism (``StateLock``):

- ``daemon.lock``: the daemon holds it for its whole life; a second daemon is refused.
- ``state.lock``: whoever writes state now (redacts, seals, exports, imports, delivers,
  approves...). A command waits for it and says who holds it; the daemon takes it for each
  pass and, while a command holds it, waits without blocking its signals.

The holder writes ``<pid> <command>`` into the file once it holds the lock, so whoever waits
can say for whom. ``flock`` belongs to the open file: the kernel lets go when the holder exits,
however it exits, and children started with ``close_fds`` never inherit it.
"""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import statedir


class StateBusy(Exception):
    """The lock is held by another process and this caller may not wait."""


@dataclass(frozen=True)
class Holder:
    pid: int | None
    command: str

    def describe(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'}, command {self.command or '?'}"


class StateLock:
    """One of the state directory's lock files."""

    def __init__(self, state_dir: Path, name: str = statedir.STATE_LOCK, command: str = "") -> None:
        self.state_dir = Path(state_dir)
        self.path = statedir.lock_file(self.state_dir, name)
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # Made by another user (root ran a command): an flock needs only a read-only fd.
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def holder(self) -> Holder:
        """Who holds (or last held) the lock, as its file says."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            return Holder(None, "")
        pid, _, command = text.partition(" ")
        return Holder(int(pid) if pid.isdigit() else None, command)

    def busy_message(self, waiting: bool = True) -> str:
        h = self.holder()
        return f"another tfwb-agent ({h.describe()}) holds {self.state_dir}" + ("; waiting" if waiting else "")

    def acquire(self, wait: bool = True, announce: Callable[[str], None] | None = None) -> bool:
        """Take the lock. Without ``wait``: False at once if another process holds it. With it,
        ``announce`` gets the busy message once before waiting."""
        if self._fd is not None:
            return True
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                if announce:
                    announce(self.busy_message())
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._stamp()
        return True

    def _stamp(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {self.command}\n".encode(), 0)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.EINVAL, errno.EACCES, errno.EPERM):
                raise  # a read-only fd cannot say who holds it; the lock holds all the same

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def daemon_lock(state_dir: Path) -> StateLock:
    """The daemon's lifetime lock; ``StateBusy`` if another daemon uses ``state_dir``."""
    lock = StateLock(state_dir, statedir.DAEMON_LOCK, "daemon")
    if not lock.acquire(wait=False):
        raise StateBusy(f"another tfwb-agent daemon ({lock.holder().describe()}) already uses {state_dir}; "
                        "stop it first or give this one its own state_dir")
    return lock
