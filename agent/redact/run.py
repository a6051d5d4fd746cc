"""Redact one run directory into a complete, syncable copy: the I/O edge of redaction.

The plan comes from the one fold of the `.wandb` file (``runlog.Fold``: every media object, the
key it is logged under and the files it names, the keys the training code declared sensitive,
and the run's identity (host, user, e-mail)), the one the classification made as the log grew,
or one read here first. Then one pass rewrites the records (``records.py``: what is not
understood does not leave), writing each media file's placeholder the first time any record
refers to it, so every reference gets the same new name. Then ``files/`` is walked for what no
record named (``files.py`` decides each file). ``logs/`` and debug logs are never copied. The
source is only read; files are copied block by block, so memory does not grow with their size.
A run with many media files to hash has their placeholders made by a helper process
(``hasher.py``) on another core while the records are rewritten.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import durable, runlog
from ..runlog import find_log
from ..wandb_log import LogError, LogWriter, read_records
from . import files as files_mod
from . import items as items_mod
from . import hasher, meta, placeholders
from .console import TextStream
from .media import FileOutcome
from .outgoing import Outgoing
from .policy import Decision, Policy, is_sensitive
from .records import STAGING, Console, rewrite
from .report import RedactionReport
from .secrets import Scrubber, compile_patterns
from .tables import redact_table
_RENAME_RX = re.compile(r"^(?P<dir>(?:.*/)?)(?P<stem>[^/]+)_(?P<hash>[0-9a-f]{20})(?P<ext>\.[^/]+)$")
_NEW_EXT = {"image": ".png", "audio": ".wav", "video": ".gif", "html": ".html", "table": ".table.json"}
_NEW_FMT = {"image": "png", "audio": "wav", "video": "gif"}
_DIR_KIND = {"images": "image", "audio": "audio", "videos": "video", "html": "html", "table": "table",
             "object3D": "object3d", "molecule": "molecule"}


class RedactError(Exception):
    """A run that cannot be redacted (no `.wandb` file, a file escaping the run ...)."""


def _write_new(out: str, data: bytes, rel: str) -> None:
    """Create ``out``. O_EXCL: the destination starts empty, so an existing file means two
    originals claimed one name. Raw fds: with 10,000s of small media files, the buffered-file
    machinery costs more than the bytes."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        # Only a placeholder can meet its own name again (two equal originals: the name
        # embeds the content's hash, so the bytes are the same). Nothing to write.
        if not rel.startswith("files/media/"):
            raise
        return
    hasher.write_all(fd, data)


def _regular_files(d: str) -> frozenset[str]:
    """Names of the regular files in ``d`` (not symlinks: d_type, no stat per entry)."""
    try:
        with os.scandir(d) as it:
            return frozenset(e.name for e in it if e.is_file(follow_symlinks=False))
    except OSError:
        return frozenset()


def _read_fd(fd: int, size: int) -> bytes:
    """All of an open file, to its end (whatever its size was when stat'ed)."""
    data = os.read(fd, size + 1)
    while block := os.read(fd, max(size, 1 << 16)):
        data += block
    return data


def _read_upto(fd: int, n: int) -> bytes:
    """The first ``n`` bytes of an open file (fewer only at its end)."""
    data = os.read(fd, n)
    while len(data) < n and (block := os.read(fd, n - len(data))):
        data += block
    return data


# Fewer hashed files than this: not worth a process.
HELPER_MIN = 256


class _Helper:
    """The helper process (``hasher.py``): a thread feeds it the tasks, another reads its
    answers into a queue, so it can run ahead of the records that need them."""

    BATCH = 256

    def __init__(self, secret: bytes, jobs: list[tuple]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", hasher.__file__],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answers: "queue.Queue[Any]" = queue.Queue()
        self.feed_error: BaseException | None = None
        batches = [jobs[i:i + self.BATCH] for i in range(0, len(jobs), self.BATCH)]
        self.feeder = threading.Thread(target=self._feed, args=(secret, batches), name="redact-helper-feed",
                                       daemon=True)
        self.reader = threading.Thread(target=self._read, name="redact-helper-read", daemon=True)
        self.feeder.start()
        self.reader.start()

    def _feed(self, secret: bytes, batches: list[list[tuple]]) -> None:
        try:
            hasher.send(self.proc.stdin, secret)
            for b in batches:
                hasher.send(self.proc.stdin, b)
        except BaseException as exc:
            self.feed_error = exc
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        try:
            while (msg := hasher.recv(self.proc.stdout)) is not None:
                self.answers.put(msg)
            self.answers.put(None)
        except BaseException as exc:
            self.answers.put(("error", f"{type(exc).__name__}: {exc}"))

    def next_batch(self) -> list[Any]:
        msg = self.answers.get()
        if msg is None:
            raise RedactError(f"the media helper ended early ({self.feed_error or self.proc.wait()})")
        status, payload = msg
        if status != "ok":
            raise RedactError(f"the media helper failed: {payload}")
        return payload

    def close(self) -> None:
        self.feeder.join()
        self.reader.join()
        if self.proc.wait() != 0:
            raise RedactError(f"the media helper exited with {self.proc.returncode}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.feeder.join()
        self.reader.join()


class _BackgroundWriter:
    """One thread that creates the output files while the caller goes on: file creation is
    kernel time, tags, placeholders and records are Python time, and the two overlap.

    Jobs travel in batches: a queue hand-off per small file (locks, a thread wake-up, the
    interpreter lock changing hands) costs as much as creating the file. A batch is bounded in
    files and in bytes, and the queue in batches, so memory stays bounded."""

    BATCH_FILES = 128
    BATCH_BYTES = 4 << 20

    def __init__(self) -> None:
        self.q: "queue.Queue[list[tuple[str, bytes, str]] | None]" = queue.Queue(maxsize=16)
        self.error: BaseException | None = None
        self.batch: list[tuple[str, bytes, str]] = []
        self.batch_bytes = 0
        self.thread = threading.Thread(target=self._run, name="redact-writer", daemon=True)
        self.thread.start()

    def put(self, out: str, data: bytes, rel: str) -> None:
        if self.error is not None:
            raise self.error
        self.batch.append((out, data, rel))
        self.batch_bytes += len(data)
        if len(self.batch) >= self.BATCH_FILES or self.batch_bytes >= self.BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.q.put(self.batch)
            self.batch, self.batch_bytes = [], 0

    def _run(self) -> None:
        while (jobs := self.q.get()) is not None:
            if self.error is None:
                try:
                    for job in jobs:
                        _write_new(*job)
                except BaseException as exc:  # re-raised in the caller's thread by close()
                    self.error = exc

    def close(self) -> None:
        self.flush()
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class _Run:
    """State of one redaction. ``dst`` None: dry run, nothing is written."""
    src: Path
    dst: Path | None
    policy: Policy
    secret: bytes
    map_path: Callable[[str], Path]
    report: RedactionReport = field(default_factory=RedactionReport)
    sensitive: tuple[str, ...] = ()
    planned: dict[str, tuple[str, str]] = field(default_factory=dict)   # file -> (kind, key)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)     # file -> wandb's width, height
    done: dict[str, FileOutcome | None] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.dst_str = str(self.dst) if self.dst is not None else ""
        self.dirs: set[str] = set()
        self.ok_dirs: set[str] = set()
        self.listed: dict[str, frozenset[str]] = {}
        self.src_dirs: dict[str, str] = {}     # files/ subdirectory -> its checked path
        self._sensitive_keys: dict[str, bool] = {}
        self._decisions: dict[tuple[str, str], Decision] = {}
        self.media_memo: dict[Any, Any] = {}   # see items.redact_scrub_items
        self.helper: _Helper | None = None
        self.pending: dict[str, bool] = {}      # files whose placeholder the helper makes
        self.helper_batches: collections.deque[list[str]] = collections.deque()
        self.files_base = os.path.join(str(self.src), "files")
        self.writer: _BackgroundWriter | None = None
        self._hmac = hmac.new(self.secret, b"media\x00", hashlib.sha256)
        self.scrubber = Scrubber(compile_patterns(self.policy.patterns), self.text_tag, self.policy.scrub_paths)
        self.out = Outgoing(self.scrubber, self.policy, self.report)
        self.report.rename = self.out.name

    def add_identity(self, words: set[str]) -> None:
        """The run's own host, user and e-mail are scrubbed wherever they occur as a word."""
        self.scrubber = self.scrubber.with_words("identity", words)
        self.out.scrubber = self.scrubber

    # -- small helpers ---------------------------------------------------------------------
    def media_tag(self, data: bytes) -> str:
        # The keyed hash object is set up once per run and copied per file: same value as
        # ``placeholders.tag``, without re-deriving the HMAC pads 10,000s of times.
        h = self._hmac.copy()
        h.update(data)
        return h.hexdigest()

    def text_tag(self, kind: str, value: str) -> str:
        return placeholders.text_tag(self.secret, kind, value)

    def decide(self, key: str, kind: str) -> Decision:
        # Asked for every media object of every row (a handful of distinct keys): remembered.
        # ``_plan`` empties it when it sets the sensitive keys the decision depends on.
        hit = self._decisions.get((key, kind))
        if hit is None:
            hit = self.policy.decide(key, kind, self.sensitive)
            if len(self._decisions) < 100_000:
                self._decisions[(key, kind)] = hit
        return hit

    def count(self, d: Decision, kind: str, key: str) -> None:
        self.report.count_media(d.rule, kind, d.action, key)

    def is_sensitive(self, key: str) -> bool:
        if not self.sensitive:
            return False
        hit = self._sensitive_keys.get(key)
        if hit is None:
            hit = is_sensitive(key, self.sensitive)
            if len(self._sensitive_keys) < 100_000:
                self._sensitive_keys[key] = hit
        return hit

    def out_path(self, rel: str) -> str | None:
        """Where ``rel`` of the copy is written (None in a dry run); its directory exists."""
        if self.dst is None:
            return None
        out = os.path.join(self.dst_str, rel)
        parent = os.path.dirname(out)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        self.written.add(rel)
        return out

    def file_outcome(self, path: str) -> FileOutcome | None:
        if path in self.done:
            return self.done[path]
        kind, key = self.planned.get(path) or _unplanned(path)
        return self.resolve(path, kind, self.decide(key, kind), key)

    def write(self, rel: str, data: bytes, rep: RedactionReport | None = None) -> None:
        (rep or self.report).bytes_out += len(data)
        if self.dst is None or rel in self.written:
            return
        out = self.out_path(rel)
        if self.writer is not None:
            self.writer.put(out, data, rel)
        else:
            _write_new(out, data, rel)

    def source_file(self, rel: str) -> str | None:
        """``files/rel`` of the source run if it is a regular file inside it, reached through
        no symlink; else None. Checked directories are remembered (10,000s of media files
        share a handful of directories), and so are their regular files, listed once: one
        directory read instead of a stat per file. A name the listing lacks (a file created
        since, or not a regular file) is asked about on its own."""
        if not rel or rel.startswith("/") or "\\" in rel:
            return None
        dir_rel, _, name = rel.rpartition("/")
        if name in ("..", ".", ""):
            return None
        d = self.src_dirs.get(dir_rel)
        if d is None:
            d = self._source_dir(dir_rel)
            if d is None:
                return None
        full = os.path.join(d, name)
        listed = self.listed.get(d)
        if listed is None:
            listed = self.listed[d] = _regular_files(d)
        if name in listed:
            return full
        try:
            return full if stat.S_ISREG(os.lstat(full).st_mode) else None
        except OSError:
            return None

    def _source_dir(self, dir_rel: str) -> str | None:
        """``files/dir_rel`` if each component is a directory (not a symlink); remembered."""
        d = self.files_base
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
        self.src_dirs[dir_rel] = d
        return d

    def open_source(self, rel: str) -> tuple[int, int] | None:
        """(fd, size) of ``files/rel`` opened for reading, if ``source_file`` accepts it and it
        is still a regular file when opened (O_NOFOLLOW: a symlink swapped in since is not
        followed; O_NONBLOCK: a FIFO swapped in does not hang the open); else None."""
        full = self.source_file(rel)
        opened = None if full is None else hasher.open_regular(str(full))
        return None if opened is None else (opened[0], opened[1].st_size)

    # -- media files -----------------------------------------------------------------------
    def resolve(self, path: str, kind: str, d: Decision, key: str) -> FileOutcome | None:
        """The one place a media file is decided and written; later references reuse it."""
        if path in self.done:
            return self.done[path]
        if path in self.pending:
            self.wait_for(path)
            return self.done[path]
        outcome = self._resolve(path, kind, d, key, self.report)
        self.done[path] = outcome
        return outcome

    def prepare(self, workers: int = 1) -> None:
        """Decide and write every media file the records name, before the records are rewritten.

        Files are created by the background writer, so one thread here suffices; ``workers``
        adds threads for the reading and hashing (measured: no gain on a 2-core VM once the
        writer runs). Each task counts into its own report, merged here, so the counts stay
        exact and do not depend on the order tasks finish."""
        def task(chunk: list[tuple[str, tuple[str, str]]]) -> tuple[list[tuple[str, FileOutcome | None]], RedactionReport]:
            rep = RedactionReport()
            return [(path, self._resolve(path, kind, self.decide(key, kind), key, rep))
                    for path, (kind, key) in chunk], rep

        items = list(self.planned.items())
        # Placeholders of many files: made by the helper process while this one goes on.
        helped = [(path, kind) for path, (kind, key) in items
                  if kind in hasher.KINDS and self.decide(key, kind).action == "hash"]
        if len(helped) >= HELPER_MIN:
            self.start_helper(helped)
            # Without a helper (it could not start), the files it would have made are made
            # here; those found missing are counted already.
            items = [it for it in items if it[0] not in self.pending and it[0] not in self.done]
        # Chunks, not one future per file: a future costs more than a small image.
        chunks = [items[i:i + 256] for i in range(0, len(items), 256)]
        if workers <= 1 or len(chunks) <= 1:
            results = map(task, chunks)
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            results = pool.map(task, chunks)
        for outcomes, rep in results:
            self.done.update(outcomes)
            self.report.merge(rep)
        if workers > 1 and len(chunks) > 1:
            pool.shutdown()

    def _resolve(self, path: str, kind: str, d: Decision, key: str, rep: RedactionReport) -> FileOutcome | None:
        if d.action == "drop":
            if self.source_file(path) is None:
                rep.files["missing_or_outside"] += 1
            else:
                rep.files["dropped"] += 1
            return None
        opened = self.open_source(path)
        if opened is None:
            rep.files["missing_or_outside"] += 1
            return None
        fd, size = opened
        try:
            return self._resolve_open(path, kind, d, key, rep, fd, size)
        finally:
            os.close(fd)

    def _resolve_open(self, path: str, kind: str, d: Decision, key: str, rep: RedactionReport,
                      fd: int, size: int) -> FileOutcome | None:
        rep.bytes_in += size
        if d.action == "keep":
            rep.files["kept"] += 1
            new_path = self.out.path(path)
            if size <= files_mod.BLOCK:
                data = _read_fd(fd, size)
                self.write("files/" + new_path, data, rep)
                return FileOutcome(new_path, hashlib.sha256(data).hexdigest(), len(data))
            sink = files_mod.Sink(self.out_path("files/" + new_path))
            try:
                while block := os.read(fd, files_mod.BLOCK):
                    sink.write(block)
            finally:
                sink.close()
            rep.bytes_out += sink.size
            return FileOutcome(new_path, sink.sha.hexdigest(), sink.size)
        h = self._hmac.copy()
        # The placeholder needs the original's header (its size) and, for a table, its cells;
        # the tag needs every byte: a small file in one read (of its own size: a block-sized
        # buffer for each of 10,000s of images costs more than the images), a big one block
        # by block.
        if size <= files_mod.BLOCK or kind == "table":
            data = _read_fd(fd, size)
            h.update(data)
        else:
            data = _read_upto(fd, files_mod.BLOCK)
            h.update(data)
            while block := os.read(fd, files_mod.BLOCK):
                h.update(block)
        tag = h.hexdigest()
        new = self._placeholder(path, kind, data, tag, d, key, rep)
        sha = hashlib.sha256(new).hexdigest()
        prefix, ext = self.naming(path, kind)
        new_path = f"{prefix}{sha[:20]}{ext}"
        self.out.produced.add(new_path)
        rep.files["hashed"] += 1
        self.write("files/" + new_path, new, rep)
        return FileOutcome(new_path, sha, len(new), tag, _NEW_FMT.get(kind, ""))

    def naming(self, path: str, kind: str) -> tuple[str, str]:
        """A placeholder's new name is prefix + the first 20 hex digits of its sha256 + ext:
        the scrubbed original's directory and key, or ``redacted`` for a name wandb did not
        make."""
        scrubbed = self.out.path(path)
        m = _RENAME_RX.match(scrubbed)
        ext = _NEW_EXT.get(kind, m.group("ext") if m else Path(scrubbed).suffix)
        if m:
            return f"{m.group('dir')}{m.group('stem')}_", ext
        # (What follows "redacted_" never starts with "." or "/": stripping the prefix alone
        # is stripping the whole name.)
        return f"{Path(scrubbed).parent.as_posix()}/redacted_".lstrip("./"), ext

    # -- the helper process (hasher.py) ------------------------------------------------------
    def start_helper(self, tasks: list[tuple[str, str]]) -> bool:
        """Hand the placeholders of ``tasks`` ((path, kind), all decided "hash") to a helper
        process; their outcomes are taken as the records need them. False: no helper (the
        caller does them here)."""
        jobs, paths = [], []
        for path, kind in tasks:
            src = self.source_file(path)
            if src is None:
                self.report.files["missing_or_outside"] += 1
                self.done[path] = None
                continue
            prefix, ext = self.naming(path, kind)
            if self.dst is not None:
                parent = os.path.dirname(os.path.join(self.dst_str, "files/" + prefix))
                if parent not in self.dirs:
                    os.makedirs(parent, exist_ok=True)
                    self.dirs.add(parent)
            jobs.append((src, kind, self.sizes.get(path), prefix, ext, self.dst_str if self.dst is not None else None))
            paths.append(path)
        try:
            self.helper = _Helper(self.secret, jobs)
        except OSError:
            return False
        for i in range(0, len(paths), _Helper.BATCH):
            self.helper_batches.append(paths[i:i + _Helper.BATCH])
        for p in paths:
            self.pending[p] = True
        return True

    def _take_batch(self) -> None:
        """The helper's next batch of outcomes, counted and remembered as ``_resolve_open``
        would have."""
        assert self.helper is not None
        results = self.helper.next_batch()
        paths = self.helper_batches.popleft()
        if len(results) != len(paths):
            raise RedactError(f"{self.src}: the media helper answered {len(results)} of {len(paths)} files")
        # Counted per batch, not per file: the same sums, a few dict updates fewer per file.
        pending, done, produced, written = self.pending, self.done, self.out.produced, self.written
        hashed = missing = n_in_sum = size_sum = 0
        for path, res in zip(paths, results):
            del pending[path]
            if res is None:
                missing += 1
                done[path] = None
                continue
            new_path, sha, size, tag, fmt, n_in = res
            n_in_sum += n_in
            size_sum += size
            hashed += 1
            produced.add(new_path)
            if self.dst is not None:
                written.add("files/" + new_path)
            done[path] = FileOutcome(new_path, sha, size, tag, fmt)
        rep = self.report
        rep.bytes_in += n_in_sum
        rep.bytes_out += size_sum
        if hashed:
            rep.files["hashed"] += hashed
        if missing:
            rep.files["missing_or_outside"] += missing

    def wait_for(self, path: str) -> None:
        while path in self.pending:
            self._take_batch()

    def finish_helper(self) -> None:
        """Every outcome taken, every placeholder on disk."""
        while self.helper_batches:
            self._take_batch()
        if self.helper is not None:
            self.helper.close()
            self.helper = None

    def _placeholder(self, path: str, kind: str, data: bytes, tag: str, d: Decision, key: str,
                     rep: RedactionReport) -> bytes:
        if kind == "table":
            try:
                table = json.loads(data)
            except ValueError:
                return placeholders.text_placeholder(tag)
            return json.dumps(redact_table(table, d, self.text_tag, rep.columns, key, self.out)).encode()
        # wandb recorded an image's or a video's frame size (``hint``); an original's header says it too.
        return hasher.placeholder(placeholders, kind, data, tag, self.sizes.get(path))


def _find_log(src: Path) -> Path:
    log = find_log(src)  # the one rule for which file is a run's log
    if log is None:
        raise RedactError(f"{src}: no run-*.wandb file (a regular file) in the run directory")
    return log


def _records(path: Path, report: RedactionReport):
    """``(offset, record)`` of the log's whole records; notes a torn tail in ``report``."""
    gen = read_records(path)
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            tail = stop.value
            report.torn_tail = tail is not None and tail.torn_at is not None
            return
        yield item


# -- the plan -------------------------------------------------------------------------------
# From the one fold of the log (``runlog.Fold``): the one the classification made as the log
# grew, or, without one, a fold read here (one more pass over the log).
PLAN_KINDS = frozenset({"run", "config", "environment"})  # records that change the plan past its media


class _PlanOutdated(Exception):
    """The log has records past the fold the plan came from that could change it."""


def _changes_plan(rec: Any, fold: runlog.Fold) -> bool:
    """Whether a record the fold has not seen declares sensitive keys or an identity it lacks."""
    kind = rec.WhichOneof("record_type")
    if kind not in PLAN_KINDS:
        return False
    new = runlog.Fold(identity=set(fold.identity), sensitive=list(fold.sensitive))
    runlog.fold_one(new, 0, 0, rec)
    return new.identity != fold.identity or new.sensitive != fold.sensitive


def _plan(r: _Run, fold: runlog.Fold) -> None:
    r.planned, r.sizes = fold.planned, fold.sizes  # read only from here on
    r.sensitive = tuple(fold.sensitive)
    r._decisions.clear()
    r._sensitive_keys.clear()
    r.report.sensitive_keys = r.sensitive
    if r.policy.metadata == "redact":
        r.add_identity(fold.identity | _metadata_identity(r.src))


def _metadata_identity(src: Path) -> set[str]:
    """Host, user and e-mail from wandb 0.15's files/wandb-metadata.json."""
    try:
        meta = json.loads((src / "files" / "wandb-metadata.json").read_text())
    except (OSError, ValueError):
        return set()
    return {str(meta[k]) for k in ("host", "username", "email") if isinstance(meta, dict) and meta.get(k)}


def _unplanned(path: str) -> tuple[str, str]:
    """Kind and key of a media file no record described, from wandb's naming scheme."""
    parts = path.split("/")
    kind = _DIR_KIND.get(parts[1], "any") if len(parts) > 2 and parts[0] == "media" else "any"
    m = _RENAME_RX.match("/".join(parts[2:]) if len(parts) > 2 else path)
    key = m.group("stem").rsplit("_", 1)[0] if m else ""
    return kind, key


# -- files/ ---------------------------------------------------------------------------------

def _copy_files_dir(r: _Run) -> None:
    base = r.src / "files"
    if not base.is_dir() or base.is_symlink():
        return
    prefix = len(str(base)) + 1
    for dirpath, dirnames, filenames in os.walk(base):   # os.walk does not follow symlinks
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.join(dirpath, name)[prefix:].replace(os.sep, "/")
            if rel in r.done:
                continue       # a media file the records named: already written
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                r.report.dropped_paths["symlinks" if p.is_symlink() else "special files"] += 1
                continue
            _one_file(r, rel, p)


def _one_file(r: _Run, rel: str, p: Path) -> None:
    action = files_mod.file_action(rel, r.policy)
    if action == "media":
        r.file_outcome(rel)
    elif action.startswith("drop"):
        why = action.split(":", 1)[1]
        r.report.files["dropped" if why != "unknown" else "dropped_unknown"] += 1
        r.report.file_list.append((r.out.path(rel), f"dropped: {why}"))
    elif action == "keep":
        sink = files_mod.Sink(r.out_path("files/" + r.out.path(rel)))
        try:
            n = files_mod.copy_stream(str(p), sink)
        finally:
            sink.close()
        r.report.bytes_in += n
        r.report.bytes_out += n
        r.report.files["kept_by_policy"] += 1
    elif action == "metadata":
        _json_file(r, rel, p, lambda d: r.out.value(
            meta.redact_metadata(d, r.out, r.text_tag, r.report)[0] if r.policy.metadata == "redact"
            and isinstance(d, dict) else d, "metadata"))
    elif action == "summary":
        _json_file(r, rel, p, lambda d: _summary_dict(r, d))
    elif action == "config":
        _config_yaml(r, rel, p)
    elif action == "console" and r.policy.console == "drop":
        r.report.files["dropped"] += 1
        r.report.file_list.append((rel, "dropped: console policy"))
    elif action in ("console", "text") or (action == "scrub" and files_mod.is_text(str(p))):
        place = "console" if action == "console" else "files"
        new_rel = r.out.path(rel)
        sink = files_mod.Sink(r.out_path("files/" + new_rel))
        try:
            n = files_mod.scrub_text_file(str(p), sink, TextStream(lambda s: r.out.text(s, place)))
        finally:
            sink.close()
        r.report.bytes_in += n
        r.report.bytes_out += sink.size
        r.report.files["scrubbed_text"] += 1
        r.report.file_list.append((new_rel, "scrubbed"))
    else:
        r.report.files["dropped_not_text"] += 1
        r.report.file_list.append((r.out.path(rel), "dropped: not text"))


def _json_file(r: _Run, rel: str, p: Path, fn: Callable[[Any], Any]) -> None:
    data = p.read_bytes()
    r.report.bytes_in += len(data)
    try:
        value = json.loads(data)
    except ValueError:
        r.report.files["dropped_unparsable"] += 1
        r.report.file_list.append((rel, "dropped: not valid JSON"))
        return
    r.write("files/" + rel, json.dumps(fn(value), indent=2).encode())


def _summary_dict(r: _Run, d: Any) -> Any:
    if not isinstance(d, dict):
        return r.out.value(d, "summary")
    out = {}
    for k, v in d.items():
        nv, _ = items_mod.media.transform_value(v, k, r.decide, r.resolve, r.text_tag, lambda *a: None)
        if not k.startswith("_") and r.is_sensitive(k) and nv is v and items_mod.media.media_kind(v) is None:
            nv = f"hash:{r.text_tag('value', json.dumps(v))}"
        out[r.out.name(k)] = r.out.value(nv, "summary", k)
    return out


def _config_yaml(r: _Run, rel: str, p: Path) -> None:
    data = p.read_bytes()
    r.report.bytes_in += len(data)
    try:
        cfg = yaml.safe_load(data)
    except yaml.YAMLError:
        r.report.files["dropped_unparsable"] += 1
        r.report.file_list.append((rel, "dropped: not valid YAML"))
        return
    if isinstance(cfg, dict):
        for k, v in list(cfg.items()):
            inner = v.get("value") if isinstance(v, dict) and "value" in v else v
            nv, changed = meta.redact_config_value(str(k), inner, r.policy, r.out, r.text_tag, r.report, r.sensitive)
            if changed:
                cfg[k] = {**v, "value": nv} if isinstance(v, dict) and "value" in v else nv
    r.write("files/" + rel, yaml.safe_dump(r.out.value(cfg, "config"), sort_keys=False).encode())


# -- entry points ---------------------------------------------------------------------------

def _redact(src: Path, dst: Path | None, policy: Policy, secret: bytes,
            map_path: Callable[[str], Path], complete: bool, fold: runlog.Fold | None) -> RedactionReport:
    src = Path(src)
    log = _find_log(src)
    if fold is None or not fold.whole or fold.file_id != _file_id(log):
        fold = runlog.read(log, runlog.Fold(values=False))
    r = _Run(src, dst, policy, secret, map_path)
    r.report.run_id = log.stem.removeprefix("run-")
    _plan(r, fold)
    writer, out = None, None
    if dst is not None:
        dst.mkdir(parents=True, exist_ok=True)
        if any(dst.iterdir()):
            raise RedactError(f"{dst}: the destination is not empty")
        out = open(dst / log.name, "wb")
        writer = LogWriter(out)
        r.writer = _BackgroundWriter()
    console = Console(r)
    try:
        r.prepare()
        for offset, rec in _records(log, r.report):
            if offset >= fold.end and _changes_plan(rec, fold):
                raise _PlanOutdated(f"{log.name} grew past byte {fold.end} with a record that changes the plan")
            r.report.records_in += 1
            for o in rewrite(r, rec, console):
                r.report.records_out += 1
                if writer is not None:
                    writer.write(o)
        # Console text still held (a line without its end) leaves only with the whole log: a
        # live snapshot keeps it for the next segment, so each segment's copy is a prefix of
        # the next one's.
        if complete:
            for o in console.close():
                r.out.message(o, "console")
                r.report.records_out += 1
                if writer is not None:
                    writer.write(o)
        r.finish_helper()
        _copy_files_dir(r)
    finally:
        if r.helper is not None:
            r.helper.kill()
        if out is not None:
            out.close()
        if r.writer is not None:
            r.writer.close()     # every file is on disk (or its error raised) before we return
    for p in sorted(src.iterdir()):
        if p.name not in ("files", log.name):
            r.report.dropped_paths[p.name if p.is_dir() else "other files"] += 1
    return r.report


def _file_id(p: Path) -> tuple[int, int]:
    st = os.stat(p, follow_symlinks=False)
    return st.st_dev, st.st_ino


def _empty(d: Path) -> None:
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _guarded(src: Path, dst: Path | None, policy: Policy, secret: bytes,
             map_path: Callable[[str], Path], complete: bool = True,
             fold: runlog.Fold | None = None) -> RedactionReport:
    # A damaged log or an unparsable record is this run's problem, not the agent's: say so in
    # the one exception type callers quarantine on.
    try:
        try:
            return _redact(src, dst, policy, secret, map_path, complete, fold)
        except _PlanOutdated:
            # The log grew since it was folded (a run taken for ended wrote again): plan anew
            # from the whole log, into an emptied destination. Twice: it is still being written.
            if dst is not None:
                _empty(dst)
            try:
                return _redact(src, dst, policy, secret, map_path, complete, None)
            except _PlanOutdated as exc:
                raise RedactError(f"{src}: the .wandb file is still being written ({exc}); "
                                  "redact a run once it has ended, or a snapshot of it") from None
    except LogError as exc:
        raise RedactError(f"{src}: cannot read the .wandb file: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise RedactError(f"{src}: malformed content: {exc}") from exc


def redact_run(src_run_dir: Path, dst_dir: Path, policy: Policy, secret: bytes,
               map_path: Callable[[str], Path], complete: bool = True,
               fold: runlog.Fold | None = None) -> RedactionReport:
    """Write a redacted copy of ``src_run_dir`` into ``dst_dir`` (created; must be empty).

    ``dst_dir`` becomes a run directory: give it a name wandb sync recognises
    (``offline-run-...``; ``redact_run(src, out / src.name, ...)``). Run-table artifacts'
    files are copied into ``dst_dir/_staging`` and the records point there by absolute path;
    call ``relocate_staging`` after moving the directory.

    ``complete=False`` for a snapshot of a run still being written (a live segment): console
    text whose line has not ended yet is kept back for the next snapshot.

    ``fold``: the fold of the whole log the caller made already (``runlog.cached``: the
    classification's); the plan comes from it, and the log is read once, to be rewritten.
    Without it, the log is folded here first (one more pass)."""
    return _guarded(Path(src_run_dir), Path(dst_dir), policy, secret, map_path, complete, fold)


def plan_run(src_run_dir: Path, policy: Policy, secret: bytes,
             map_path: Callable[[str], Path]) -> RedactionReport:
    """What ``redact_run`` would do, computed the same way, with nothing written."""
    return _guarded(Path(src_run_dir), None, policy, secret, map_path)


def relocate_staging(run_dir: Path) -> int:
    """Point artifact records at ``run_dir/_staging`` after the run directory moved (e.g. out
    of a bundle on the gateway). Rewrites the `.wandb` file; returns entries repointed."""
    run_dir = Path(run_dir).resolve()
    log = _find_log(run_dir)
    n = 0
    with durable.replacing(log, mode=0o600) as f:  # a decrypted run: its owner's alone
        w = LogWriter(f)
        for _, rec in _records(log, RedactionReport()):
            if rec.WhichOneof("record_type") == "artifact":
                for e in rec.artifact.manifest.contents:
                    i = e.local_path.find(f"/{STAGING}/")
                    if i >= 0:
                        e.local_path = str(run_dir) + e.local_path[i:]
                        n += 1
            w.write(rec)
    return n
