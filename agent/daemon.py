"""The daemon's event loop: filesystem events and periodic reconcile passes drive ``reconcile``.

Threads: watchdog's observer thread only notes which run directories changed; the main
thread does all the work (reading, ledger writes, later steps of the pipeline), so the ledger
has one writer per process. Signals only set flags: SIGTERM/SIGINT stop, SIGHUP reloads.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import config as config_mod
from . import failures, health, runs, statelock
from . import retention
from .opsconfig import metrics_config
from .sdnotify import Notifier
from .ledger import Ledger, LedgerError
from .reconcile import ClaimBook, PassResult, reconcile

log = logging.getLogger("tfwb_agent.daemon")

# Only writes and namespace changes. Without this filter inotify also reports every open and
# read, and the agent's own reading of 10,000 runs overflows the kernel's queue, whose recovery
# (a re-walk of the tree) opens every directory again: a loop that keeps a core busy.
EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
          DirCreatedEvent, DirMovedEvent, DirDeletedEvent]

# Later stages of the pipeline (seal, deliver) hook in here; each gets (ledger, cfg) after a pass
# and returns True when it left work for the next round.
Stage = Callable[[Ledger, config_mod.Config], "bool | None"]


class _Changes(FileSystemEventHandler):
    def __init__(self, roots: tuple[Path, ...], wake: threading.Event) -> None:
        self.roots = roots
        self.wake = wake
        self.lock = threading.Lock()
        self.pending: set[Path] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if not p:
                continue
            run_dir = runs.run_dir_of(Path(os.fsdecode(p)), self.roots)
            if run_dir is not None:
                with self.lock:
                    self.pending.add(run_dir)
                self.wake.set()

    def take(self) -> set[Path]:
        with self.lock:
            out, self.pending = self.pending, set()
        return out


class DaemonError(Exception):
    pass


BUSY_RETRY_SECONDS = 0.5  # how often the daemon looks again while a command holds the state lock
DISK_FULL_RETRY_SECONDS = 2.0  # how often a daemon paused by a full disk tries again
FLOOR_RETRY_SECONDS = 2.0  # how often a daemon below the disk floor ([retention] min_free_mb) looks again
PAUSED_BELOW_FLOOR = ("seal_stage", "live_stage")  # the stages that fill the disk; delivery and retention go on


class Daemon:
    def __init__(self, config_path: str | None, stages: list[Stage] | None = None) -> None:
        self.config_path = config_path
        self.cfg = config_mod.load(config_path)
        self.stages = [*(stages or []), retention.RetentionStage()]  # retention last: it removes what the others finished
        self.wake = threading.Event()
        self.stopping = False
        self.reload_requested = False
        self.recheck: dict[Path, float] = {}
        self._life: statelock.StateLock | None = None
        self._full_said = False
        self._busy_said = False
        self._floor_said: str | None = None
        self.notify = Notifier()
        self.turns = 0
        self.publisher: object | None = None

    # --- signals ----------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True
        uploads = sys.modules.get(f"{__package__}.deliver.upload")
        if uploads is not None:  # a stopped agent stops its uploads; the next round asks the server
            uploads.stop_all()
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reload_requested = True
        self.wake.set()

    # --- lifecycle --------------------------------------------------------------------------

    def _lock_state_dir(self) -> None:
        try:
            self._life = statelock.daemon_lock(self.cfg.state_dir)
        except statelock.StateBusy as exc:
            raise DaemonError(str(exc)) from None
        except OSError as exc:
            raise DaemonError(f"cannot lock the state directory {self.cfg.state_dir}: {exc.strerror or exc}; "
                              "check state_dir in the config and that this user may write there") from None

    def _take_turn(self, writer: statelock.StateLock) -> bool:
        """The state lock for one pass, without blocking: a command that holds it (a `scan
        --seal`, an `import` ...) finishes first, and signals are still seen meanwhile."""
        if writer.acquire(wait=False):
            self._busy_said = False
            return True
        if not self._busy_said:
            log.info("%s", writer.busy_message())
            self._busy_said = True
        return False

    def _start_observer(self) -> tuple[object, _Changes]:
        handler = _Changes(self.cfg.watch.roots, self.wake)
        if self.cfg.watch.mode == "poll":
            observer = PollingObserver(timeout=self.cfg.watch.poll_seconds)
        else:
            observer = Observer()
        for root in self.cfg.watch.roots:
            if not root.is_dir():
                log.warning("watch root %s does not exist yet; the reconcile pass will pick it up", root)
                continue
            observer.schedule(handler, str(root), recursive=True, event_filter=EVENTS)
        observer.start()
        return observer, handler

    def _reload(self, observer: object) -> tuple[object, _Changes] | None:
        self.reload_requested = False
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return None
        if new.state_dir != self.cfg.state_dir:
            log.error("reload refused: state_dir cannot change while running (restart the daemon)")
            return None
        log.info("config reloaded from %s; runs and pending deliveries are planned again under it now", new.source)
        self.cfg = new
        # Quiet deadlines were set under the old quiet_seconds; the full pass that follows a
        # reload sets them again, and its delivery round asks the policy afresh (a window that
        # was widened sends at once, not at the next opening the old window gave).
        self.recheck.clear()
        observer.stop()  # type: ignore[attr-defined]
        observer.join()  # type: ignore[attr-defined]
        return self._start_observer()

    def run(self) -> int:
        self._lock_state_dir()
        writer = statelock.StateLock(self.cfg.state_dir, command="daemon")
        try:
            ledger = Ledger(self.cfg.ledger_path)
        except LedgerError as exc:
            raise DaemonError(str(exc)) from None
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        observer, changes = self._start_observer()
        book = ClaimBook(self.cfg)
        self._start_metrics()
        log.info("watching %s (%s); state in %s", ", ".join(map(str, self.cfg.watch.roots)) or "no roots",
                 self.cfg.watch.mode, self.cfg.state_dir)
        self.notify.ready(f"watching {len(self.cfg.watch.roots)} root(s)")
        next_full = 0.0  # a full pass at start finds what arrived while we were down
        try:
            while not self.stopping:
                if self.reload_requested:
                    restarted = self._reload(observer)
                    if restarted:
                        observer, changes = restarted
                        book = ClaimBook(self.cfg)
                        next_full = 0.0
                book.heartbeat(time.time())  # the leases live on the volume: renewed even while waiting
                self._alive()
                if not self._take_turn(writer):
                    self.wake.wait(BUSY_RETRY_SECONDS)  # events stay queued for the next turn
                    self.wake.clear()
                    continue
                try:
                    next_full = self._pass(ledger, changes, book, next_full)
                    self._disk_ok()
                    if self.publisher is not None:  # after the pass: what it found is in the file
                        self.publisher.write_textfile(metrics_config(self.cfg).textfile)  # type: ignore[attr-defined]
                except Exception as exc:
                    if not failures.disk_full(exc):
                        raise
                    self._disk_full(exc)  # pause; what this pass did not record, the next one does
                    self.wake.wait(DISK_FULL_RETRY_SECONDS)
                    self.wake.clear()
                    continue
                finally:
                    writer.release()
                # Wake for the next full pass, the next quiet deadline, and in time to renew our lease.
                wait_until = min([next_full, *self.recheck.values(), time.time() + self.cfg.watch.lease_seconds / 3,
                                  time.time() + (self.notify.wake_within() or float("inf")),
                                  time.time() + (FLOOR_RETRY_SECONDS if self._floor_said else float("inf"))])
                timeout = max(0.0, wait_until - time.time())
                self.wake.wait(timeout)
                self.wake.clear()
        finally:
            self.notify.stopping()
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=3)  # type: ignore[attr-defined]
            if self.publisher is not None:
                self.publisher.stop()  # type: ignore[attr-defined]
            ledger.close()
            log.info("stopped")
        return 0

    def _pass(self, ledger: Ledger, changes: _Changes, book: ClaimBook, next_full: float) -> float:
        """One turn under the state lock: classify what changed (or everything), then the
        stages. Returns when the next full pass is due."""
        now = time.time()
        if now >= next_full:
            changes.take()  # a full pass covers them
            self._absorb(reconcile(ledger, self.cfg, now=now, book=book))
            next_full = time.time() + self.cfg.watch.reconcile_seconds
        else:
            due = {d for d, t in self.recheck.items() if t <= now}
            batch = changes.take() | due
            for d in due:
                self.recheck.pop(d, None)
            if batch:
                self._absorb(reconcile(ledger, self.cfg, only=sorted(batch), now=now, book=book))
        paused = self._below_floor()
        for stage in self.stages:
            if self.stopping:
                break
            if paused and getattr(stage, "__name__", "") in PAUSED_BELOW_FLOOR:
                continue
            try:
                before, t0 = ledger.db.total_changes, time.monotonic()
                if stage(ledger, self.cfg):
                    self.wake.set()  # more work waiting: come straight back after events
                if self.publisher is not None and ledger.db.total_changes != before:
                    from .metrics import stage_name  # lazy: imports prometheus_client, only with [metrics]
                    self.publisher.observe(stage_name(stage), time.monotonic() - t0)  # type: ignore[attr-defined]
            except Exception as exc:  # one stage failing must not stop watching
                if failures.disk_full(exc):
                    raise
                log.exception("stage %s failed", getattr(stage, "__name__", stage))
        return next_full

    def _alive(self) -> None:
        """Each turn of the loop: the heartbeat file (`health`), systemd's watchdog, the textfile."""
        self.turns += 1
        now = time.time()
        health.write_heartbeat(self.cfg.state_dir, now, self.turns)
        self.notify.alive()

    def _start_metrics(self) -> None:
        mc = metrics_config(self.cfg)
        if mc.listen is None and mc.textfile is None:
            return
        from .metrics import Publisher  # prometheus_client only where metrics are asked for

        self.publisher = Publisher(self.cfg)
        try:
            self.publisher.start(mc.listen)
        except OSError as exc:
            raise DaemonError(f"cannot serve metrics on {mc.listen[0]}:{mc.listen[1]}: {exc.strerror or exc}; "  # type: ignore[index]
                              "another process has the port? set [metrics] listen to a free one") from None

    def _below_floor(self) -> bool:
        """The low-disk guard: below ``[retention] min_free_mb`` sealing waits (said once, and
        once more when it resumes)."""
        why = health.sealing_paused(self.cfg)
        if why and not self._floor_said:
            log.warning("%s", why)
        elif self._floor_said and not why:
            log.info("the disk holding %s is above the floor again; sealing resumed", self.cfg.state_dir)
        self._floor_said = why
        return why is not None

    def _disk_full(self, exc: Exception) -> None:
        if not self._full_said:
            log.error("the disk holding %s is full (%s: %s bytes free); work is paused and tried again every %gs: "
                      "free space there", self.cfg.state_dir, exc, failures.free_bytes(self.cfg.state_dir),
                      DISK_FULL_RETRY_SECONDS)
            self._full_said = True

    def _disk_ok(self) -> None:
        if self._full_said:
            log.info("the disk holding %s has room again; work resumed", self.cfg.state_dir)
            self._full_said = False

    def _absorb(self, result: PassResult) -> None:
        self.recheck.update(result.rechecks)
