"""Settling segments with one target: open them, ask the server, send what it lacks, ask again.

Only the server's answer settles a segment (``confirm``): before sending (already there: nothing
is sent; partly there: the log is cut to what the server lacks, ``segments.plan_cut``) and after
(``wandb sync`` exiting 0 proves nothing). What each answer means for the ledger is ``Book``'s.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .. import config as config_mod
from .. import ids, procs, statedir
from ..ledger import Ledger
from ..runlog import find_log
from ..segments import Cut, LogFacts, facts_from_sealed, plan_cut, read_facts, write_cut
from ..wandb_log import FILE_HEADER_LEN
from . import confirm, questions, sweeps, sync_log, upload
from .opening import materialize, relocate
from .outcomes import NOT_CONFIRMED, STOPPED, Book, DeliveryError, NotYet, Outcome
from .settings import SyncSettings, Target
from .work import Unit

Reporter = Callable[..., None]

PROGRESS_POLL = 1.0  # seconds between looks for wandb's per-run .synced markers while it uploads


@dataclass
class Prepared:
    """A segment opened into its work directory; once the server has answered, cut down to
    what the server lacks."""
    unit: Unit
    work: Path
    run_dir: Path
    log_path: Path
    facts: LogFacts
    project: str
    entity: str | None
    base: int                   # rows of earlier parts the server holds (separate parts only)
    server_rows: int = 0        # rows of this part the server already holds
    rows: int = 0               # rows to send
    resumed: bool = False
    size: int = 0               # bytes of the cut log

    @property
    def batch_key(self) -> tuple[str, str | None]:
        return self.project, self.entity


def destination(t: Target, u: Unit, facts: LogFacts) -> tuple[str, str | None]:
    project = t.project or u.project or facts.project or "uncategorized"
    entity = t.entity or u.entity or facts.entity or None
    return project, entity


class Settler:
    """Deliver segments to one target (its key in hand, the target online)."""

    def __init__(self, ledger: Ledger, cfg: config_mod.Config, t: Target, key: str, settings: SyncSettings,
                 report: Reporter, spare: upload.Warm | None = None) -> None:
        self.ledger, self.cfg, self.t, self.key, self.settings, self.report = ledger, cfg, t, key, settings, report
        self.book = Book(ledger, t, settings)
        self.sweeps = sweeps.Sweeps(cfg, t, key)  # trials attached to their W&B sweep (sweeps.py)
        self.spare: list[upload.Warm] = [spare] if spare else []  # wandb sync processes started ahead
        self.spare_lock = threading.Lock()
        self.warmed = 0

    def prewarm(self) -> None:
        """Have one ``wandb sync`` waiting for its runs while the next ones are opened and asked
        about (its start-up overlaps this process's work instead of following it). A spare is
        claimed when its batch is handed to a sender (``claim_spare``), not when the sender
        thread gets to it: which batch it serves is decided there, not by a race."""
        with self.spare_lock:
            if self.spare or upload.stopping.is_set():
                return
            self.warmed += 1
            root = statedir.deliver_target(self.cfg, self.t.name) / f"sync-warm-{os.getpid()}-{self.warmed}"
            w = upload.warm(self.t.base_url, self.key, root, self.t.ca_file)
            if w is not None:
                self.spare.append(w)

    def close(self) -> None:
        """End the spare processes no batch took."""
        with self.spare_lock:
            spare, self.spare = self.spare, []
        for w in spare:
            w.discard()
            shutil.rmtree(w.home.parent, ignore_errors=True)

    def claim_spare(self) -> upload.Warm | None:
        """A spare ``wandb sync`` for the batch about to be handed to ``send``, if one waits."""
        with self.spare_lock:
            return self.spare.pop(0) if self.spare else None

    def _start(self, batch: list[Prepared], w: upload.Warm | None) -> tuple[upload.Upload, Path]:
        """Start the batch's upload, in ``w`` if given: (the upload, its directory)."""
        first = batch[0]
        if w is not None:
            return upload.start_warm(w, [p.run_dir for p in batch], first.project, first.entity,
                                     self.settings.max_parallel), w.home.parent
        scratch = first.work.parent / f"sync-{first.unit.run_id}-{first.unit.segment}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, mode=0o700)
        return upload.start([p.run_dir for p in batch], self.t.base_url, self.key, first.project, first.entity,
                            scratch / "wandb-home", scratch / "wandb-sync.log", self.settings.max_parallel,
                            self.t.ca_file), scratch

    def ask(self, opened: list[Prepared], after_upload: bool = False,
            ahead: questions.Ahead | None = None) -> list[confirm.Judgement]:
        """The server's word on each opened segment, in one request for many (raises on server
        trouble); ``ahead``: what it said of them while they were opened (``questions.py``)."""
        wanted = [confirm.Wanted(p.entity, p.project, p.unit.run_id,
                                 None if after_upload else p.base + p.facts.history_rows) for p in opened]
        facts, bases = [p.facts for p in opened], [p.base for p in opened]
        if after_upload:
            return questions.after(self.t, self.key, wanted, facts, bases)
        keys = [(p.unit.run_id, p.unit.segment, p.project, p.entity) for p in opened]
        return questions.before(self.t, self.key, keys, wanted, facts, bases, ahead or {})

    def ask_ahead(self, units: list[Unit]) -> questions.Ahead:
        return questions.ahead(self.t, self.key, units)

    def base_rows(self, u: Unit) -> int:
        """History rows the server holds of this run before the part of ``u`` begins (a restarted
        job's own run directory): what the segments before the part, confirmed in order,
        brought. A live cut of that part counts from the same base as the part's first segment
        (counted from 0, a cut whose rows the server held fewer of than the whole run was taken
        for already there, and its last rows were never sent)."""
        first = self.ledger.part_start(u.run_id, u.segment)
        if first == 0:
            return 0
        prev = self.ledger.delivery(u.run_id, first - 1, self.t.name)
        if not prev or prev["state"] != "confirmed" or prev["server_rows"] is None:
            raise NotYet(f"segment {first - 1} of {u.run_id} is not confirmed on {self.t.name} yet")
        return int(prev["server_rows"])

    def open(self, u: Unit) -> Prepared | Outcome:
        """Open the segment into its private work directory and read its facts."""
        try:
            work = statedir.deliver_work(self.cfg, self.t.name, u.run_id, u.segment)
        except ids.BadId as exc:
            return self.book.failed(u, f"{exc}; not delivered", None)
        try:
            run_dir, sealed = materialize(self.cfg, self.ledger, u, work / "open")
            if relocate(run_dir):
                sealed = None  # the log was rewritten here: read it
            log_path = find_log(run_dir)
            if log_path is None:
                raise DeliveryError(f"segment {u.segment} of {u.run_id} holds no .wandb log")
            # The facts kept at sealing, when they are of this very log: folding it again was
            # most of the CPU opening a bundle took.
            facts = facts_from_sealed(sealed, log_path.stat().st_size) or read_facts(log_path)
            project, entity = destination(self.t, u, facts)
            return Prepared(u, work, run_dir, log_path, facts, project, entity, self.base_rows(u))
        except Exception as exc:
            shutil.rmtree(work, ignore_errors=True)
            return self.book.settle_error(u, exc)

    def cut(self, p: Prepared, j: confirm.Judgement) -> Prepared | Outcome:
        """Settled by the server's answer, or cut down to what the server lacks."""
        u, keep = p.unit, False
        try:
            if j.kind == confirm.COMPLETE:
                return self.book.confirmed(u, j, 0, 0, "already on the server", p.base + p.facts.history_rows)
            if j.kind == confirm.UNKNOWN:
                return self.book.retry(u, f"not sent: {j.detail}; asked again later", None)
            if j.kind == confirm.MISMATCH:
                return self.book.failed(u, f"the server holds this run but not as sent: {j.detail}; not sending "
                                           "again (that would duplicate rows)", j.server_rows)
            if 0 < j.server_rows < p.facts.history_rows and not p.facts.ends_known:
                p.facts = read_facts(p.log_path)  # part of the rows on the server, a log too long to keep each row's end
            cut = plan_cut(p.facts, j.server_rows, send_end=j.end_behind or j.kind == confirm.ABSENT)
            if cut is None:
                raise DeliveryError(f"segment {u.segment} of {u.run_id}: nothing to send, yet the server lacks it "
                                    f"({j.detail})")
            cut = replace(cut, sweep_id=self.sweeps.sweep_id_for(p.log_path, p.project, p.entity))
            if cut == Cut(FILE_HEADER_LEN, p.facts.size, False, p.facts.history_rows) and not p.facts.torn:
                p.size = p.facts.size  # the whole log as sealed: sent as it is, not copied first
            else:
                upload_log = p.log_path.with_name(p.log_path.name + ".cut")
                p.size = write_cut(p.log_path, upload_log, cut)
                upload_log.replace(p.log_path)
            p.server_rows, p.rows, p.resumed = j.server_rows, cut.rows, cut.resumed
            keep = True
            return p
        except Exception as exc:
            return self.book.settle_error(u, exc)
        finally:
            if not keep:
                shutil.rmtree(p.work, ignore_errors=True)

    def send(self, batch: list[Prepared], spare: upload.Warm | None = None) -> list[Outcome]:
        """One ``wandb sync`` for the whole batch (same project and entity), in ``spare`` if
        given (``claim_spare``), then the server's word on each segment."""
        book, scratch = self.book, None
        try:
            for p in batch:
                self.report("upload_start", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, rows=p.rows)
            try:
                up, scratch = self._start(batch, spare)
            except upload.Stopped:
                return [book.retry(p.unit, STOPPED, None) for p in batch]
            out_log = up.log_path
            started = procs.process_start_time(up.pid)
            with self.ledger.tx():  # the batch's transitions in one commit: one fsync, not one each
                for p in batch:
                    book.set(p.unit, "uploading", uploader_pid=up.pid, uploader_start=started,
                             server_rows=p.base + p.server_rows,
                             attempts=book.delivery(p.unit).get("attempts", 0) + 1,
                             reason=f"sending {p.rows} history rows" + (" (resumed)" if p.resumed else ""))
            rounds = -(-len(batch) // max(1, self.settings.max_parallel))
            rc = self.wait(up, batch, self.settings.upload_timeout * rounds)
            upload.finished(up)
            if upload.stopping.is_set():  # the server is not asked now: the next round asks it
                return [book.retry(p.unit, STOPPED, None) for p in batch]
            said = sync_log.tail(out_log, 4000)  # what wandb said, kept before its directory goes
            # The directories go while the server is asked (their removal took as long as the
            # question, ~60 ms, after it): nothing reads them once wandb sync has ended.
            removing = threading.Thread(target=_remove, args=([scratch, *(p.work for p in batch)],),
                                        name="deliver-cleanup")
            removing.start()
            try:
                judged = self.ask(batch, after_upload=True)
            except Exception as exc:
                return [book.settle_error(p.unit, exc) for p in batch]
            finally:
                removing.join()
            with self.ledger.tx():
                return [self.judge_sent(p, after, rc, said) for p, after in zip(batch, judged)]
        finally:
            if spare is not None and not spare.spent:  # not started: its upload never began
                spare.discard()
                scratch = spare.home.parent
            _remove([scratch, *(p.work for p in batch)])

    def wait(self, up: upload.Upload, batch: list[Prepared], timeout: float) -> int | None:
        """Wait for the upload to end (killed after ``timeout``); meanwhile report each run whose
        ``.synced`` marker wandb wrote (for progress only: the server's answer decides)."""
        deadline = time.monotonic() + timeout
        waiting = list(batch)
        rc: int | None = None
        while True:
            rc = _wait_exit(up.proc, PROGRESS_POLL)
            if rc is not None:
                break
            if time.monotonic() > deadline:
                upload.kill(up)
                break
            for p in [p for p in waiting if p.log_path.with_name(p.log_path.name + ".synced").exists()]:
                waiting.remove(p)
                self.report("upload_end", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, returncode=None)
        for p in waiting:
            self.report("upload_end", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, returncode=rc)
        return rc

    def judge_sent(self, p: Prepared, after: confirm.Judgement, rc: int | None, said: str) -> Outcome:
        """The server's word on an upload that ended; ``said``: the end of wandb sync's log."""
        u, book = p.unit, self.book
        if after.kind == confirm.COMPLETE:
            return book.confirmed(u, after, p.rows, p.size, "sent and confirmed", p.base + p.facts.history_rows)
        if after.kind == confirm.MISMATCH:
            return book.failed(u, f"sent, but {after.detail}; not sending again", after.server_rows)
        tls = sync_log.diagnose(said, self.t.base_url, self.t.name)
        if tls:
            return book.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {tls}", None)
        if after.kind == confirm.UNKNOWN:
            return book.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {after.detail}", None)
        why = said[-600:].replace(self.key, "<key>").strip().splitlines()
        last = why[-1] if why else ""
        return book.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {after.detail}"
                             + (f"; wandb said: {last[:300]}" if last else ""), after.server_rows)


def _remove(dirs: list[Path | None]) -> None:
    for d in dirs:
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """``proc``'s exit status if it ends within ``timeout`` seconds, else None. Woken by the
    kernel the moment it ends (a pidfd), not by ``Popen.wait``'s polling, which looks every 50 ms
    once it has waited a while: up to 50 ms more before the server is asked, per upload."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here (an old kernel), or it was reaped already
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return proc.wait() if ready else None
