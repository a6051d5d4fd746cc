"""The background writer: one thread that creates the redacted copy's files while the
redactor goes on. File creation is kernel time; tags, placeholders and records are Python
time; the two overlap."""
from __future__ import annotations

import os
import queue
import threading

from . import hasher


def write_new(out: str, data: bytes, rel: str) -> None:
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


class BackgroundWriter:
    """Jobs travel in batches: a queue hand-off per small file (locks, a thread wake-up, the
    interpreter lock changing hands) costs as much as creating the file. A batch is bounded in
    files and in bytes, and the queue in batches, so memory stays bounded. An error is raised
    in the caller's thread, by the next ``put`` or by ``close``."""

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
                        write_new(*job)
                except BaseException as exc:  # re-raised in the caller's thread by close()
                    self.error = exc

    def close(self) -> None:
        self.flush()
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
