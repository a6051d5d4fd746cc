"""The hashing helper process (``hasher.py`` runs in it): it reads, tags and writes the
placeholders of many media files on the other core while this process rewrites the records.
A thread feeds it the tasks, another reads its answers into a queue, so it can run ahead of
the records that need them."""
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
