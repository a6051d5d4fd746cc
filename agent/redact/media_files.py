"""The media files the records name: each decided once (keep, hash into a placeholder, drop)
and written once, so every reference gets the same new name. Many placeholders are made by the
hashing helper process on the other core while the records are rewritten; their outcomes are
taken as the records need them."""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from . import files as files_mod
from . import hasher, placeholders
from .errors import RedactError
from .hashing_helper import HELPER_MIN, HashingHelper
from .media import FileOutcome
from .policy import Decision
from .tables import redact_table

if TYPE_CHECKING:
    from .redaction import Redaction

_RENAME_RX = re.compile(r"^(?P<dir>(?:.*/)?)(?P<stem>[^/]+)_(?P<hash>[0-9a-f]{20})(?P<ext>\.[^/]+)$")
_NEW_EXT = {"image": ".png", "audio": ".wav", "video": ".gif", "html": ".html", "table": ".table.json"}
_NEW_FMT = {"image": "png", "audio": "wav", "video": "gif"}
_DIR_KIND = {"images": "image", "audio": "audio", "videos": "video", "html": "html", "table": "table",
             "object3D": "object3d", "molecule": "molecule"}


def unplanned(path: str) -> tuple[str, str]:
    """Kind and key of a media file no record described, from wandb's naming scheme."""
    parts = path.split("/")
    kind = _DIR_KIND.get(parts[1], "any") if len(parts) > 2 and parts[0] == "media" else "any"
    m = _RENAME_RX.match("/".join(parts[2:]) if len(parts) > 2 else path)
    key = m.group("stem").rsplit("_", 1)[0] if m else ""
    return kind, key


class MediaFiles:
    def __init__(self, r: "Redaction") -> None:
        self.r = r
        self.done: dict[str, FileOutcome | None] = {}
        self.pending: dict[str, bool] = {}      # files whose placeholder the helper makes
        self.helper: HashingHelper | None = None
        self.helper_batches: collections.deque[list[str]] = collections.deque()
        # The keyed hash object is set up once per run and copied per file: same value as
        # ``placeholders.tag``, without re-deriving the HMAC pads 10,000s of times.
        self._hmac = hmac.new(r.secret, b"media\x00", hashlib.sha256)

    def file_outcome(self, path: str) -> FileOutcome | None:
        if path in self.done:
            return self.done[path]
        kind, key = self.r.planned.get(path) or unplanned(path)
        return self.resolve(path, kind, self.r.decide(key, kind), key)

    def resolve(self, path: str, kind: str, d: Decision, key: str) -> FileOutcome | None:
        """The one place a media file is decided and written; later references reuse it.
        What is written is known by its digest, which the referring record may then carry."""
        if path in self.pending:
            self.wait_for(path)
        if path not in self.done:
            self.done[path] = self._resolve(path, kind, d, key)
        outcome = self.done[path]
        if outcome is not None:
            self.r.out.file_digests.add(outcome.sha256)
        return outcome

    def prepare(self) -> None:
        """Decide and write every media file the records name, before the records are
        rewritten. Files are created by the background writer; the placeholders of many
        files are made by the helper process."""
        r = self.r
        items = list(r.planned.items())
        helped = [(path, kind) for path, (kind, key) in items
                  if kind in hasher.KINDS and r.decide(key, kind).action == "hash"]
        if len(helped) >= HELPER_MIN:
            self.start_helper(helped)
            # Without a helper (it could not start), the files it would have made are made
            # here; those found missing are counted already.
            items = [it for it in items if it[0] not in self.pending and it[0] not in self.done]
        for path, (kind, key) in items:
            self.done[path] = self._resolve(path, kind, r.decide(key, kind), key)

    def _resolve(self, path: str, kind: str, d: Decision, key: str) -> FileOutcome | None:
        rep = self.r.report
        if d.action == "drop":
            if self.r.source.file(path) is None:
                rep.files["missing_or_outside"] += 1
            else:
                rep.files["dropped"] += 1
            return None
        opened = self.r.source.open(path)
        if opened is None:
            rep.files["missing_or_outside"] += 1
            return None
        fd, size = opened
        try:
            return self._resolve_open(path, kind, d, key, fd, size)
        finally:
            os.close(fd)

    def _resolve_open(self, path: str, kind: str, d: Decision, key: str, fd: int, size: int) -> FileOutcome | None:
        r = self.r
        rep = r.report
        rep.bytes_in += size
        if d.action == "keep":
            rep.files["kept"] += 1
            new_path = r.out.path(path)
            if size <= files_mod.BLOCK:
                data = hasher.read_all(fd, size)
                r.write("files/" + new_path, data)
                return FileOutcome(new_path, hashlib.sha256(data).hexdigest(), len(data))
            sink = files_mod.Sink(r.out_path("files/" + new_path))
            try:
                while block := os.read(fd, files_mod.BLOCK):
                    sink.write(block)
            finally:
                sink.close()
            rep.bytes_out += sink.size
            return FileOutcome(new_path, sink.sha.hexdigest(), sink.size)
        h = self._hmac.copy()
        # The placeholder needs the original's header (its size) and, for a table, its cells;
        # the tag needs every byte.
        if kind == "table":
            data = hasher.read_all(fd, size)
            h.update(data)
        else:
            data = hasher.read_tagged(fd, size, h)
        tag = h.hexdigest()
        new = self._placeholder(path, kind, data, tag, d, key)
        sha = hashlib.sha256(new).hexdigest()
        prefix, ext = self.naming(path, kind)
        new_path = f"{prefix}{sha[:20]}{ext}"
        r.out.produced.add(new_path)
        rep.files["hashed"] += 1
        r.write("files/" + new_path, new)
        return FileOutcome(new_path, sha, len(new), tag, _NEW_FMT.get(kind, ""))

    def _placeholder(self, path: str, kind: str, data: bytes, tag: str, d: Decision, key: str) -> bytes:
        r = self.r
        if kind == "table":
            try:
                table = json.loads(data)
            except ValueError:
                return placeholders.text_placeholder(tag)
            return json.dumps(redact_table(table, d, r.text_tag, r.report.columns, key, r.out)).encode()
        # wandb recorded an image's or a video's frame size (``hint``); an original's header says it too.
        return hasher.placeholder(placeholders, kind, data, tag, r.sizes.get(path))

    def naming(self, path: str, kind: str) -> tuple[str, str]:
        """A placeholder's new name is prefix + the first 20 hex digits of its sha256 + ext:
        the scrubbed original's directory and key, or ``redacted`` for a name wandb did not
        make."""
        parts = self.r.out.media_path(path)
        if parts is not None:   # (what ``path`` gives, without matching the scrubbed name again)
            return parts[0], _NEW_EXT.get(kind, parts[2])
        scrubbed = self.r.out.path(path)
        m = _RENAME_RX.match(scrubbed)
        ext = _NEW_EXT.get(kind, m.group("ext") if m else Path(scrubbed).suffix)
        if m:
            return f"{m.group('dir')}{m.group('stem')}_", ext
        # (What follows "redacted_" never starts with "." or "/": stripping the prefix alone
        # is stripping the whole name.)
        return f"{Path(scrubbed).parent.as_posix()}/redacted_".lstrip("./"), ext

    # -- the hashing helper process ----------------------------------------------------------
    def start_helper(self, tasks: list[tuple[str, str]]) -> bool:
        """Hand the placeholders of ``tasks`` ((path, kind), all decided "hash") to a helper
        process, batch by batch as their names are made; their outcomes are taken as the records
        need them. False: no helper (the caller does them here)."""
        r = self.r
        try:
            self.helper = helper = HashingHelper(r.secret)
        except OSError:
            return False
        jobs: list[tuple] = []
        paths: list[str] = []
        made: set[str] = set()      # directories of the new names that exist (a handful for 10,000s)
        for path, kind in tasks:
            src = r.source.file(path)
            if src is None:
                r.report.files["missing_or_outside"] += 1
                self.done[path] = None
                continue
            prefix, ext = self.naming(path, kind)
            if r.dst is not None and (d := prefix.rpartition("/")[0]) not in made:
                r.make_parent(os.path.join(r.dst_str, "files/" + prefix))
                made.add(d)
            jobs.append((src, kind, r.sizes.get(path), prefix, ext, r.dst_str if r.dst is not None else None))
            paths.append(path)
            self.pending[path] = True
            if len(jobs) == HashingHelper.BATCH:
                self._hand_over(helper, jobs, paths)
                jobs, paths = [], []
        if jobs:
            self._hand_over(helper, jobs, paths)
        helper.end()
        return True

    def _hand_over(self, helper: HashingHelper, jobs: list[tuple], paths: list[str]) -> None:
        self.helper_batches.append(paths)
        helper.send(jobs)

    def _take_batch(self) -> None:
        """The helper's next batch of outcomes, counted and remembered as ``_resolve_open``
        would have."""
        assert self.helper is not None
        r = self.r
        results = self.helper.next_batch()
        paths = self.helper_batches.popleft()
        if len(results) != len(paths):
            raise RedactError(f"{r.src}: the media helper answered {len(results)} of {len(paths)} files")
        # Counted per batch, not per file: the same sums, a few dict updates fewer per file.
        pending, done, produced, written = self.pending, self.done, r.out.produced, r.written
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
            if r.dst is not None:
                written.add("files/" + new_path)
            done[path] = FileOutcome(new_path, sha, size, tag, fmt)
        rep = r.report
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

    def kill_helper(self) -> None:
        """After a failure: the helper stops, whatever it was doing."""
        if self.helper is not None:
            self.helper.kill()
