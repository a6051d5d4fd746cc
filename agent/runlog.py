"""One reader of a run's `.wandb` log: which file it is, and one fold of its records.

``find_log`` is the one rule for which file is a run's log. ``Fold`` is everything the stages
learn from the records, gathered in one pass: the classification facts (``runs``), the
redaction plan's inputs (``redact.run``), the segment facts (``segments``) and the run's
identity. A fold resumes at the offset where it stopped (``read(path, fold)``), so the
incremental classification reads only what was appended since its last look; the daemon keeps
the folds it made (``remember``/``cached``) and the sealing of an ended run takes its plan from
there instead of reading the log once more.
"""
from __future__ import annotations

import math
import json
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .wandb_log import BLOCK_LEN, CHUNK_HEADER_LEN, FILE_HEADER_LEN, LogReader, parse_record
from .redact import items as items_mod
from .redact.media import media_kind, referenced_files


def find_log(run_dir: Path) -> Path | None:
    """The run's `run-<id>.wandb` file: a regular file (not a symlink) directly inside the run
    directory, the one named after the directory's run id first. None if there is none or the
    directory cannot be listed."""
    try:
        return locate_log(run_dir)
    except OSError:
        return None


def locate_log(run_dir: Path) -> Path | None:
    """``find_log``, but a run directory that cannot be listed raises the ``OSError``."""
    candidates = []
    with os.scandir(run_dir) as it:
        for e in it:
            if e.name.endswith(".wandb") and e.name.startswith("run-") and e.is_file(follow_symlinks=False):
                candidates.append(e.name)
    if not candidates:
        return None
    suffix = Path(run_dir).name.rsplit("-", 1)[-1]
    candidates.sort(key=lambda n: (n != f"run-{suffix}.wandb", n))
    return Path(run_dir) / candidates[0]


@dataclass
class Fold:
    """What the records of a log from ``start`` to ``end`` say. ``start`` is the file header's
    end for a fold of the whole log; a fold seeded from saved facts (``runs.inspect`` after a
    restart) starts later and carries only the small facts of what came before it: its plan
    and segment facts are incomplete (``whole`` is False)."""

    start: int = FILE_HEADER_LEN
    end: int = FILE_HEADER_LEN               # after the last whole record folded
    size: int = 0                            # of the file when last read
    file_id: tuple[int, int] = (0, 0)        # (st_dev, st_ino): the file this fold is of
    torn_at: int | None = None               # of the last read
    torn_reason: str | None = None
    # classification and identity
    records: int = 0
    rows: int = 0                            # history records (``steps`` in the ledger)
    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    wandb_version: str | None = None
    has_run_record: bool = False
    exit_code: int | None = None
    sensitive: list[str] = field(default_factory=list)       # key globs the trainer declared
    artifact_files: list[str] = field(default_factory=list)  # staging paths artifacts name
    # the redaction plan's inputs
    identity: set[str] = field(default_factory=set)           # host, user, e-mail of the run
    planned: dict[str, tuple[str, str]] = field(default_factory=dict)  # media file -> (kind, key)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)    # media file -> width, height
    # segments
    history_ends: list[int] = field(default_factory=list)    # offset just after each history record
    first_step: int | None = None
    last_step: int | None = None
    history_keys: set[str] = field(default_factory=set)      # numeric keys seen in history
    metric_values: int = 0                                   # numeric (key, step) values in history
    last_raw: dict[str, str] = field(default_factory=dict)   # the summary's values, as JSON text
    data_after_exit: bool = False                            # history or summary after the exit record
    seen_media: set[Any] = field(default_factory=set, repr=False, compare=False)
    # Which costly parts to learn (each is most of a pass's CPU): the media plan (sealing needs
    # it, delivery does not), the history values (delivery needs them, sealing does not).
    media: bool = True
    values: bool = True

    @property
    def whole(self) -> bool:
        return self.start <= FILE_HEADER_LEN

    def snapshot(self) -> dict[str, Any]:
        """Everything learnt, for comparing two folds (not the read's own position)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("seen_media", "start", "size", "file_id", "torn_at", "torn_reason", "media", "values")}


def read(path: str | os.PathLike, fold: Fold | None = None, limit: int | None = None) -> Fold:
    """Fold the whole records of the log at ``path`` from where ``fold`` stopped (the start
    of the log if None), up to byte ``limit``. Opens without following a symlink. Raises
    ``LogError`` (the file is not a log, or damaged) and ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{os.fspath(path)} is not a regular file")
        return feed(f, fold or Fold(), limit)


def feed(f: BinaryIO, fold: Fold, limit: int | None = None) -> Fold:
    """Fold the records of the open log ``f`` from ``fold.end`` on (up to byte ``limit``)."""
    # Lazy: wandb.proto is preloaded without the SDK (wandb_proto.py); were that to fail, this
    # import would load the whole SDK (~1 s): only where records are read.
    from wandb.proto import wandb_internal_pb2 as pb

    st = os.fstat(f.fileno())
    fold.size, fold.file_id = st.st_size, (st.st_dev, st.st_ino)
    reader = LogReader(f, max(fold.end, FILE_HEADER_LEN))
    add = _Adder(fold)
    for offset, payload in reader:
        if limit is not None and offset >= limit:
            fold.end, fold.torn_at, fold.torn_reason = limit, None, None
            return fold
        add(offset, len(payload), parse_record(payload, offset, pb))
    tail = reader.tail
    assert tail is not None
    fold.end = tail.end if limit is None else min(tail.end, limit)
    fold.torn_at, fold.torn_reason = (tail.torn_at, tail.reason) if limit is None else (None, None)
    return fold


def fold_one(fold: Fold, offset: int, length: int, rec: Any) -> None:
    """Learn from one record (``offset``, ``length``: where it lies in the log)."""
    _Adder(fold)(offset, length, rec)


class _Adder:
    """Learn from one record. The history and summary branches are the hot path of reading a
    log (wandb 0.31 writes a summary record beside every history record): names are bound
    locally, and values stay JSON text (decoding every value of every row was most of the
    time this took; ``segments`` decodes the summary's last values once)."""

    def __init__(self, fold: Fold) -> None:
        self.fold = fold
        self.media = (items_mod.media_in_items, items_mod.PLAN_FIELDS, media_kind, referenced_files)

    def __call__(self, offset: int, length: int, rec: Any) -> None:
        fold = self.fold
        fold.records += 1
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            if fold.exit_code is not None:
                fold.data_after_exit = True
            fold.rows += 1
            fold.history_ends.append(_record_end(offset, length))
            h = rec.history
            if fold.values:
                self._history(h.item, h.step.num if h.HasField("step") else None)
            if fold.media:
                self._plan_media(h.item)
        elif kind == "summary":
            if fold.exit_code is not None:
                fold.data_after_exit = True
            if fold.values:
                last_raw = fold.last_raw
                for item in rec.summary.update:
                    if item.key:
                        last_raw[item.key] = item.value_json
                    elif len(item.nested_key) == 1:
                        last_raw[item.nested_key[0]] = item.value_json
                for item in rec.summary.remove:
                    last_raw.pop(item.key if item.key else "/".join(item.nested_key), None)
            if fold.media:
                self._plan_media(rec.summary.update)
        elif kind == "run":
            r = rec.run
            fold.has_run_record = True
            fold.run_id = r.run_id or fold.run_id
            fold.project = r.project or fold.project
            fold.entity = r.entity or fold.entity
            self._sensitive(r.config.update)
            fold.identity.add(r.host)
        elif kind == "config":
            self._sensitive(rec.config.update)
        elif kind == "environment":
            fold.identity.update(getattr(rec.environment, f, "") for f in ("host", "username", "email"))
        elif kind == "exit":
            fold.exit_code = rec.exit.exit_code
        elif kind == "header":
            if rec.header.version_info.producer:
                fold.wandb_version = rec.header.version_info.producer
        elif kind == "telemetry":
            if rec.telemetry.cli_version and not fold.wandb_version:
                fold.wandb_version = rec.telemetry.cli_version
        elif kind == "artifact":
            paths = fold.artifact_files
            for entry in rec.artifact.manifest.contents:
                if entry.local_path and entry.local_path not in paths:
                    paths.append(entry.local_path)

    def _history(self, items: Any, step: int | None) -> None:
        fold = self.fold
        last_raw, history_keys, isfinite = fold.last_raw, fold.history_keys, math.isfinite
        values = 0
        for item in items:
            k = item.key
            if not k:
                nested = item.nested_key
                if len(nested) != 1:
                    continue  # wandb 0.31 also writes a media value's fields as nested keys; servers keep top-level values only
                k = nested[0]
            raw = item.value_json
            try:
                v = float(raw)
            except ValueError:
                v = None
            if k.startswith("_"):
                if k == "_step" and v is not None and isfinite(v):
                    step = int(v)
                continue
            last_raw[k] = raw
            if v is not None and isfinite(v):
                history_keys.add(k)
                values += 1
        fold.metric_values += values
        if step is not None:
            if fold.first_step is None:
                fold.first_step = step
            fold.last_step = step

    def _plan_media(self, items: Any) -> None:
        media_in_items, fields, media_kind, referenced_files = self.media
        fold = self.fold
        for key, node in media_in_items(items, fields, fold.seen_media):
            kind = media_kind(node) or "any"
            files = referenced_files(node)
            for f in files:
                fold.planned.setdefault(f, (kind, key))
            if isinstance(node.get("width"), int) and isinstance(node.get("height"), int):
                for f in files:
                    fold.sizes.setdefault(f, (node["width"], node["height"]))

    def _sensitive(self, updates: Any) -> None:
        for glob in sensitive_globs(updates):
            if glob not in self.fold.sensitive:
                self.fold.sensitive.append(glob)


def sensitive_globs(updates: Any) -> tuple[str, ...]:
    """The key globs the trainer plugin declared sensitive, from config updates (``tfwb`` →
    ``sensitive``, whole or as a nested key); () when there are none."""
    for u in updates:
        if (u.key or (u.nested_key[0] if len(u.nested_key) else "")) == "tfwb":
            try:
                value = json.loads(u.value_json)
            except ValueError:
                continue
            if len(u.nested_key) == 2 and u.nested_key[1] == "sensitive":
                value = {"sensitive": value}
            if isinstance(value, dict) and isinstance(value.get("value"), dict):
                value = value["value"]  # config.yaml style {"value": ...}
            globs = value.get("sensitive") if isinstance(value, dict) else None
            if isinstance(globs, list):
                return tuple(str(g) for g in globs)
    return ()


def _record_end(offset: int, length: int) -> int:
    """The offset just after a record of ``length`` bytes written from ``offset``: walk the
    chunks the way the writer laid them out (a chunk never crosses a 32 KiB block)."""
    pos, left = offset, length
    while True:
        room = BLOCK_LEN - pos % BLOCK_LEN
        if room < CHUNK_HEADER_LEN:
            pos += room
            continue
        piece = min(left, room - CHUNK_HEADER_LEN)
        pos += CHUNK_HEADER_LEN + piece
        left -= piece
        if left == 0:
            return pos


# -- the folds this process made -----------------------------------------------------------
# Classification folds each log as it grows; the sealing of the run, in the same daemon, takes
# the plan from here. Bounded: a run whose fold was dropped is planned by one more read.
KEEP = 64
_folds: "OrderedDict[str, Fold]" = OrderedDict()


def remember(log: str | os.PathLike, fold: Fold) -> None:
    key = os.fspath(log)
    _folds[key] = fold
    _folds.move_to_end(key)
    while len(_folds) > KEEP:
        _folds.popitem(last=False)


def forget(log: str | os.PathLike) -> None:
    _folds.pop(os.fspath(log), None)


def cached(log: str | os.PathLike | None, end: int | None = None) -> Fold | None:
    """The fold of the whole log at ``log`` this process made, if it is still of that file
    (same device and inode, not shorter than what was folded) and, with ``end``, reaches
    exactly there (the offset the caller's saved facts say was read)."""
    if log is None:
        return None
    fold = _folds.get(os.fspath(log))
    if fold is None or not fold.whole or (end is not None and fold.end != end):
        return None
    try:
        st = os.stat(log, follow_symlinks=False)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != fold.file_id or st.st_size < fold.end:
        return None
    return fold
