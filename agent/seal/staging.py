"""The directory a bundle is opened into: private, fresh, and given its final name only once
complete (``Staging.commit``); extractions that a crash left behind are removed
(``clean_staging_leftovers``), another live process's are not.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from .. import durable, ids, procs

STAGING_TMP = ".tmp-"  # + "<pid>-<random>": an extraction in progress


class Staging:
    """A fresh private directory to extract into; files are created beneath it only.

    Every path component is opened relative to its parent's fd with O_NOFOLLOW, and files with
    O_EXCL, so even a name that slipped past the checks could not leave the directory.
    """

    def __init__(self, root: Path, durable: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self.durable = durable
        self.path = root / f"{STAGING_TMP}{os.getpid()}-{uuid.uuid4().hex}"
        os.mkdir(self.path, 0o700)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        # The directory the last file was created in, still open: a bundle's members come
        # directory by directory, and walking each member's path again from the top was most
        # of what opening a small bundle cost (a mkdir and an open per component, per file).
        self._last_dir: tuple[str, int] | None = None

    def create(self, name: str) -> BinaryIO:
        parts = name.split("/")
        dirpath = "/".join(parts[:-1])
        fd = self._dir_fd(dirpath, parts[:-1])
        ffd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=fd)
        return os.fdopen(ffd, "wb")

    def _dir_fd(self, dirpath: str, comps: list[str]) -> int:
        """An open fd of directory ``dirpath`` under the staging directory, made if need be (kept
        open until the next member names another directory, or ``close``)."""
        if self._last_dir is not None and self._last_dir[0] == dirpath:
            return self._last_dir[1]
        fd = os.dup(self._fd)
        try:
            for comp in comps:
                try:
                    os.mkdir(comp, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self._forget_dir()
        self._last_dir = (dirpath, fd)
        return fd

    def _forget_dir(self) -> None:
        if self._last_dir is not None:
            os.close(self._last_dir[1])
            self._last_dir = None

    def commit(self, final_name: str) -> Path:
        """Make the extraction durable, then give it its final name in one rename. (A directory
        tree, not a file: its members were fsynced as they were written, here their directories.)
        Not durable: only the rename."""
        if self.durable:
            for dirpath, _dirs, _files in os.walk(self.path):
                durable.fsync_dir(dirpath)
        final = self.root / ids.check("bundle id", final_name)
        os.rename(self.path, final)  # fails if final exists: never merges two imports
        if self.durable:
            durable.fsync_dir(self.root)
        self.close()
        return final

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        self._forget_dir()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def clean_staging_leftovers(root: Path) -> list[str]:
    """Temporary extraction directories of processes that are gone (a crash) are never valid:
    remove them. Another process's extraction in progress is left alone."""
    removed: list[str] = []
    if root.is_dir():
        for p in root.iterdir():
            if not p.name.startswith(STAGING_TMP):
                continue
            pid = p.name[len(STAGING_TMP):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and procs.alive(int(pid), None):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
