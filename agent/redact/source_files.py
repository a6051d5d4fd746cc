"""The source run's ``files/``, read safely: only regular files inside it, reached through no
symlink. The source is only ever read."""
from __future__ import annotations

import os
import stat

from . import hasher


def _regular_files(d: str) -> frozenset[str]:
    """Names of the regular files in ``d`` (not symlinks: d_type, no stat per entry)."""
    try:
        with os.scandir(d) as it:
            return frozenset(e.name for e in it if e.is_file(follow_symlinks=False))
    except OSError:
        return frozenset()


class SourceFiles:
    """Checked directories are remembered (10,000s of media files share a handful of
    directories), and so are their regular files, listed once: one directory read instead of a
    stat per file. A name the listing lacks (a file created since, or not a regular file) is
    asked about on its own."""

    def __init__(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, "files")
        self.ok_dirs: set[str] = set()
        self.listed: dict[str, frozenset[str]] = {}
        self.dirs: dict[str, str] = {}     # files/ subdirectory -> its checked path
        self.in_dir: dict[str, tuple[str, frozenset[str]]] = {}   # ... -> (that path + "/", its files)

    def file(self, rel: str) -> str | None:
        """``files/rel`` of the source run if it is a regular file inside it, reached through
        no symlink; else None."""
        if not rel or rel.startswith("/") or "\\" in rel:
            return None
        dir_rel, _, name = rel.rpartition("/")
        if name in ("..", ".", ""):
            return None
        hit = self.in_dir.get(dir_rel)
        if hit is None:
            d = self.dirs.get(dir_rel)
            if d is None:
                d = self._dir(dir_rel)
                if d is None:
                    return None
            listed = self.listed.get(d)
            if listed is None:
                listed = self.listed[d] = _regular_files(d)
            # (``d`` never ends in a slash, nor has ``name`` one: os.path.join's result.)
            hit = self.in_dir[dir_rel] = (d + "/", listed)
        full = hit[0] + name
        if name in hit[1]:
            return full
        try:
            return full if stat.S_ISREG(os.lstat(full).st_mode) else None
        except OSError:
            return None

    def _dir(self, dir_rel: str) -> str | None:
        """``files/dir_rel`` if each component is a directory (not a symlink); remembered."""
        d = self.base
        if dir_rel:
            parts = dir_rel.split("/")
            if any(p in ("..", ".", "") for p in parts):
                return None
            for part in parts:
                d = os.path.join(d, part)
                if d not in self.ok_dirs:
                    try:
                        if not stat.S_ISDIR(os.lstat(d).st_mode):
                            return None
                    except OSError:
                        return None
                    self.ok_dirs.add(d)
        self.dirs[dir_rel] = d
        return d

    def open(self, rel: str) -> tuple[int, int] | None:
        """(fd, size) of ``files/rel`` opened for reading, if ``file`` accepts it and it is
        still a regular file when opened (O_NOFOLLOW: a symlink swapped in since is not
        followed; O_NONBLOCK: a FIFO swapped in does not hang the open); else None."""
        full = self.file(rel)
        opened = None if full is None else hasher.open_regular(str(full))
        return None if opened is None else (opened[0], opened[1].st_size)
