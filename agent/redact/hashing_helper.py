"""The hashing helper process (``hasher.py`` runs in it): it reads, tags and writes the
placeholders of many media files on the other core while this process rewrites the records.
A thread feeds it the tasks as they are handed over (the helper starts on the first batch while
the rest are made), another reads its answers into a queue, so it can run ahead of the records
that need them."""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
from typing import Any

from . import hasher
from .errors import RedactError

# Fewer hashed files than this: not worth a process.
HELPER_MIN = 256


class HashingHelper:
    BATCH = 256

    def __init__(self, secret: bytes) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", hasher.__file__],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answers: "queue.Queue[Any]" = queue.Queue()
        self.batches: "queue.Queue[list[tuple] | None]" = queue.Queue()
        self.feed_error: BaseException | None = None
        self.feeder = threading.Thread(target=self._feed, args=(secret,), name="redact-helper-feed", daemon=True)
        self.reader = threading.Thread(target=self._read, name="redact-helper-read", daemon=True)
        self.feeder.start()
        self.reader.start()

    def send(self, jobs: list[tuple]) -> None:
        """One batch of at most ``BATCH`` tasks; answered in order, one answer per batch."""
        self.batches.put(jobs)

    def end(self) -> None:
        """No more tasks: the helper finishes those it has and exits."""
        self.batches.put(None)

    def _feed(self, secret: bytes) -> None:
        try:
            hasher.send(self.proc.stdin, secret)
            while (b := self.batches.get()) is not None:
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
        self.batches.put(None)     # a feeder waiting for tasks stops
        self.feeder.join()
        self.reader.join()
