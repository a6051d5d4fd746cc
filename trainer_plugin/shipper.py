"""Logging off the training thread: rows are handed over as they are, read and sent elsewhere.

On a logged step the training thread only builds a dict of the raw values (tensors, variables,
numbers) and puts it on a queue: no device-to-host read, no JSON, no call into wandb. One
worker thread, in order, reads each value to the host (``to_host``), appends the row to the
journal and calls ``run.log``. TensorFlow releases the GIL while it computes, so the worker runs
while the training thread waits on the device.

Order is kept (one worker, one queue), and every caller that must see the rows written first
(a checkpoint's journal sync, media at the current step, summary and config changes, finish)
calls ``drain()``. An error in the worker is raised in the training thread at the next drain
or put, never lost.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Optional

from .values import to_host

Writer = Callable[[Dict[str, Any], int, bool], None]


class Shipper:
    def __init__(self, write: Writer) -> None:
        self._write = write
        self._q: "queue.SimpleQueue[Optional[tuple]]" = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._pending = 0
        self._error: Optional[BaseException] = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="tfwb-log")
        self._thread.start()

    def put(self, row: Dict[str, Any], step: int, journal: bool) -> None:
        if self._error is not None:
            self._raise()
        if self._closed:
            raise RuntimeError("tfwb: logging after finish()")
        with self._cv:
            self._pending += 1
        self._q.put((row, step, journal))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            row, step, journal = item
            try:
                self._write({k: to_host(v) for k, v in row.items()}, step, journal)
            except BaseException as exc:  # handed to the training thread
                self._error = self._error or exc
            finally:
                with self._cv:
                    self._pending -= 1
                    if not self._pending:
                        self._cv.notify_all()

    def drain(self) -> None:
        """Wait until every row put so far is written; raise the worker's error if it had one."""
        with self._cv:
            while self._pending:
                self._cv.wait()
        if self._error is not None:
            self._raise()

    def _raise(self) -> None:
        exc, self._error = self._error, None
        raise RuntimeError(f"tfwb: logging a row failed: {exc!r}") from exc

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.drain()
        finally:
            self._closed = True
            self._q.put(None)
            self._thread.join()
