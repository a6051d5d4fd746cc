"""The delivery loop: every sealed or imported segment to every target policy allows, once.

The ledger holds one ``deliveries`` row per (run, segment, target). One round for a target:
 1. list the segments waiting (bundles ``sealed``/``exported`` in this node's outbox, or
    ``imported`` into this gateway's staging) and ask the policy about each (pure);
 2. probe the target unless its back-off says not yet; record online/offline/key_rejected/no_key;
 3. in waves (the first waiting segment of every run, then the next ...): open and verify each
    bundle into a private work directory, ask the server how many history rows of each run it
    holds (one GraphQL request for the whole wave), cut each log to what the server lacks
    (``segments.plan_cut``), send them with one stock ``wandb sync -n P`` per project and
    entity, then ask the server again; only its answer marks a segment ``confirmed``. A long
    wave's first P segments start uploading while the rest are opened (``wave_parts``).
A crash anywhere is settled the same way: the next round asks the server before sending, so an
upload that finished before the crash is confirmed without sending it again, and one that
stopped halfway is completed from where the server's rows end. An upload still running from a
killed agent (it runs in its own session) is waited for, never raced.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .. import ids, statedir
from .. import config as config_mod
from ..ledger import Ledger
from ..runs import find_log
from ..segments import LogFacts, plan_cut, read_facts, write_cut
from ..wandb_log import LogError
from . import backoff, confirm, policy, probe, sweeps, upload
from .settings import SyncSettings, Target, policies, sync_settings, targets

log = logging.getLogger("tfwb_agent.deliver")

Reporter = Callable[..., None]


def _quiet(event: str, **info: Any) -> None:
    pass


class _NotYet(Exception):
    """An earlier segment must be confirmed first."""


NOT_CONFIRMED = "not confirmed after wandb sync"
STOPPED = "stopped (the agent was stopped) before the server confirmed it; the next round asks the server what arrived"


class DeliveryError(Exception):
    """A segment that cannot be delivered now; the message says why, in words."""


@dataclass
class Unit:
    """One segment of one run, ready to be considered for delivery."""
    run_id: str
    segment: int
    content_id: str
    bundle_id: str
    source: str                 # outbox | staged
    path: Path                  # the bundle file (outbox) or the staged directory
    created: float
    project: str | None = None
    entity: str | None = None
    byte_start: int = 0
    identity_known: bool = True  # False: an older ledger's row that never kept its project and entity

    @property
    def separate_part(self) -> bool:
        """A later segment whose log starts afresh (a restarted job's own run directory), not a
        longer prefix of the same log (a live run's next cut): its rows add to the earlier ones."""
        return self.segment > 0 and not self.byte_start


@dataclass
class Outcome:
    run_id: str
    segment: int
    target: str
    state: str                  # confirmed | pending | held | failed | uploading | skipped
    detail: str
    rows_sent: int = 0
    bytes_sent: int = 0


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


@dataclass
class RoundReport:
    target: str
    status: str | None = None   # the target's status after this round
    detail: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    waiting: int = 0            # segments allowed but not sent this round (offline, back-off, uploads running)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "detail": self.detail, "waiting": self.waiting,
                "outcomes": [o.__dict__ for o in self.outcomes]}


# --- where segments come from ---------------------------------------------------------

def _staged_run_dir(staged: Path) -> Path | None:
    dirs = [p for p in staged.iterdir() if p.is_dir() and not p.is_symlink()] if staged.is_dir() else []
    return dirs[0] if len(dirs) == 1 else None


NO_IDENTITY = ("the ledger does not know this bundle's project and entity (recorded by an older agent, which did "
               "not keep them); seal the run again (`tfwb-agent seal`), then sync")


def pending_units(ledger: Ledger) -> list[Unit]:
    """Every bundle this host could deliver, oldest run first, segments in order, with the
    project and entity the ledger keeps for it (never read again from a log or a bundle)."""
    units: dict[tuple[str, int], Unit] = {}
    for r in ledger.deliverable():
        source = "staged" if r["state"] == "imported" else "outbox"
        u = Unit(r["run_id"], r["segment"], r["content_id"], r["bundle_id"], source, Path(r["path"]), r["created"],
                 r["run_project"], r["run_entity"], r["byte_start"] or 0, bool(r["identity_known"]))
        units[(u.run_id, u.segment)] = u  # a newer bundle of the same segment replaces an older one
    return sorted(units.values(), key=lambda u: (u.created if u.segment == 0 else 0, u.run_id, u.segment))


# --- ledger bookkeeping -------------------------------------------------------------------

def _delivery(ledger: Ledger, u: Unit, target: str) -> dict[str, Any] | None:
    return ledger.delivery(u.run_id, u.segment, target)


def _set(ledger: Ledger, u: Unit, target: str, state: str, audit: dict[str, Any] | None = None,
         **fields: Any) -> None:
    ledger.set_delivery(run_id=u.run_id, segment=u.segment, content_id=u.content_id, bundle_id=u.bundle_id,
                        target=target, state=state, audit=audit, **fields)


def target_row(ledger: Ledger, name: str) -> dict[str, Any] | None:
    return ledger.target(name)


def record_probe(ledger: Ledger, name: str, result: probe.ProbeResult, settings: SyncSettings,
                 now: float | None = None) -> dict[str, Any]:
    """Store a probe's verdict and when to probe next (back-off while offline)."""
    now = time.time() if now is None else now
    prev = target_row(ledger, name) or {"failures": 0}
    if result.status == probe.ONLINE:
        failures, nxt = 0, None
    elif result.status in (probe.OFFLINE, probe.NO_KEY):
        # No key to send yet: reading it again costs nothing on the network, so it is looked for
        # on the offline schedule and delivery starts by itself once the key is in place.
        failures = prev["failures"] + 1
        nxt = now + backoff.delay(failures, settings.backoff_base, settings.backoff_cap)
    else:  # key rejected: wait long; an operator fixes the key and runs `targets check` or `sync`
        failures = prev["failures"] + 1
        nxt = now + settings.key_rejected_retry
    ledger.record_target(name, result.status, result.detail, failures, nxt, now)
    return {"name": name, "status": result.status, "detail": result.detail, "failures": failures, "next_attempt": nxt}


def probe_target(ledger: Ledger, name: str, t: Target, settings: SyncSettings,
                 now: float | None = None) -> tuple[probe.ProbeResult, dict[str, Any], str]:
    """Probe target ``name`` with its key and record the verdict; returns the probe's result,
    the recorded row and the key ("" when it could not be read: then the verdict says so)."""
    try:
        key = t.api_key()
    except config_mod.ConfigError as exc:
        res, key = probe.ProbeResult(probe.NO_KEY, f"no API key: {exc}; put the key where [targets.{name}] "
                                     "says (api_key_file, api_key_env or a systemd credential)"), ""
    else:
        res = probe.probe(t.base_url, key, t.timeout, ca_file=t.ca_file, target=name)
    return res, record_probe(ledger, name, res, settings, now), key


def _approved(ledger: Ledger, run_id: str) -> bool:
    return ledger.is_approved(run_id)


# --- one segment ----------------------------------------------------------------------------

def materialize(cfg: config_mod.Config, u: Unit, work: Path) -> Path:
    """A private, writable run directory holding the segment: opened and verified from the
    outbox bundle, or copied from the gateway's staging (verified when it was imported)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    if u.source == "staged":
        src = _staged_run_dir(u.path)
        if src is None:
            raise DeliveryError(f"staged bundle {u.path} holds no single run directory")
        dst = work / src.name
        shutil.copytree(src, dst, symlinks=True)
        return dst
    from ..seal import Refused, keys_config, open_bundle, open_keys
    from ..seal.keystore import KeyFileError
    try:
        keys = open_keys(keys_config(cfg))
    except (KeyFileError, ValueError, config_mod.ConfigError) as exc:
        raise DeliveryError(f"cannot open this node's bundles: {exc} (set keys.identity and keys.trusted_nodes)") from None
    try:
        opened = open_bundle(u.path, keys, staging_root=work)
    except Refused as exc:
        raise DeliveryError(f"bundle {u.path.name} refused: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"cannot read bundle {u.path}: {exc}") from None
    assert opened.staged is not None
    rd = opened.staged / opened.manifest["run_dir"]
    if not rd.is_dir():
        raise DeliveryError(f"bundle {u.path.name} holds no run directory {opened.manifest['run_dir']!r}")
    return rd


def _relocate(run_dir: Path) -> Path:
    """Redacted runs carry run-table artifact files in ``_staging`` by absolute path: point
    those at where this copy lives, or wandb sync cannot find them."""
    if (run_dir / "_staging").is_dir():
        from ..redact.run import relocate_staging
        relocate_staging(run_dir)
    return run_dir


def destination(t: Target, u: Unit, facts: LogFacts) -> tuple[str, str | None]:
    project = t.project or u.project or facts.project or "uncategorized"
    entity = t.entity or u.entity or facts.entity or None
    return project, entity


class _Settle:
    """Deliver segments to one target: open them, ask the server, send what it lacks, ask again."""

    def __init__(self, ledger: Ledger, cfg: config_mod.Config, t: Target, key: str, settings: SyncSettings,
                 report: Reporter) -> None:
        self.ledger, self.cfg, self.t, self.key, self.settings, self.report = ledger, cfg, t, key, settings, report
        self.sweeps = sweeps.Sweeps(cfg, t, key)  # trials attached to their W&B sweep (sweeps.py)

    def ask(self, opened: list["Prepared"], after_upload: bool = False) -> list[confirm.Judgement]:
        """The server's word on each opened segment, in one request for many (raises on server trouble)."""
        wanted = [confirm.Wanted(p.entity, p.project, p.unit.run_id, p.base + p.facts.history_rows) for p in opened]
        found = confirm.fetch_runs(self.t.base_url, self.key, wanted, self.t.timeout, ca_file=self.t.ca_file,
                                   target=self.t.name)
        how = confirm.assess_sent if after_upload else confirm.assess
        return [how(p.facts, srv_run, p.base) for p, srv_run in zip(opened, found)]

    def base_rows(self, u: Unit) -> int:
        """History rows the server holds of this run before a separate part begins: what the
        earlier segments, confirmed in order, brought."""
        if not u.separate_part:
            return 0
        prev = _delivery(self.ledger, Unit(u.run_id, u.segment - 1, "", "", "", Path(), 0), self.t.name)
        if not prev or prev["state"] != "confirmed" or prev["server_rows"] is None:
            raise _NotYet(f"segment {u.segment - 1} of {u.run_id} is not confirmed on {self.t.name} yet")
        return int(prev["server_rows"])

    def open(self, u: Unit) -> "Prepared | Outcome":
        """Open the segment into its private work directory and read its facts."""
        try:
            work = statedir.deliver_work(self.cfg, self.t.name, u.run_id, u.segment)
        except ids.BadId as exc:
            return self.failed(u, f"{exc}; not delivered", None)
        try:
            run_dir = _relocate(materialize(self.cfg, u, work / "open"))
            log_path = find_log(run_dir)
            if log_path is None:
                raise DeliveryError(f"segment {u.segment} of {u.run_id} holds no .wandb log")
            facts = read_facts(log_path)
            project, entity = destination(self.t, u, facts)
            return Prepared(u, work, run_dir, log_path, facts, project, entity, self.base_rows(u))
        except Exception as exc:
            shutil.rmtree(work, ignore_errors=True)
            return self.settle_error(u, exc)

    def cut(self, p: "Prepared", j: confirm.Judgement) -> "Prepared | Outcome":
        """Settled by the server's answer, or cut down to what the server lacks."""
        u, keep = p.unit, False
        try:
            if j.kind == confirm.COMPLETE:
                return self.confirmed(u, j, 0, 0, "already on the server", p.base + p.facts.history_rows)
            if j.kind == confirm.UNKNOWN:
                return self.retry(u, f"not sent: {j.detail}; asked again later", None)
            if j.kind == confirm.MISMATCH:
                return self.failed(u, f"the server holds this run but not as sent: {j.detail}; not sending again "
                                      "(that would duplicate rows)", j.server_rows)
            cut = plan_cut(p.facts, j.server_rows, send_end=j.end_behind or j.kind == confirm.ABSENT)
            if cut is None:
                raise DeliveryError(f"segment {u.segment} of {u.run_id}: nothing to send, yet the server lacks it "
                                    f"({j.detail})")
            cut = replace(cut, sweep_id=self.sweeps.sweep_id_for(p.log_path, p.project, p.entity))
            upload_log = p.log_path.with_name(p.log_path.name + ".cut")
            p.size = write_cut(p.log_path, upload_log, cut)
            upload_log.replace(p.log_path)
            p.server_rows, p.rows, p.resumed = j.server_rows, cut.rows, cut.resumed
            keep = True
            return p
        except Exception as exc:
            return self.settle_error(u, exc)
        finally:
            if not keep:
                shutil.rmtree(p.work, ignore_errors=True)

    def send(self, batch: list["Prepared"]) -> list[Outcome]:
        """One ``wandb sync`` for the whole batch (same project and entity), then the server's
        word on each segment."""
        t, ledger, first = self.t, self.ledger, batch[0]
        scratch = first.work.parent / f"sync-{first.unit.run_id}-{first.unit.segment}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, mode=0o700)
        out_log = scratch / "wandb-sync.log"
        try:
            for p in batch:
                self.report("upload_start", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, rows=p.rows)
            try:
                up = upload.start([p.run_dir for p in batch], t.base_url, self.key, first.project, first.entity,
                                  scratch / "wandb-home", out_log, self.settings.max_parallel, t.ca_file)
            except upload.Stopped:
                return [self.retry(p.unit, STOPPED, None) for p in batch]
            started = upload.process_start_time(up.pid)
            for p in batch:
                _set(ledger, p.unit, t.name, "uploading", uploader_pid=up.pid, uploader_start=started,
                     server_rows=p.base + p.server_rows,
                     attempts=(_delivery(ledger, p.unit, t.name) or {}).get("attempts", 0) + 1,
                     reason=f"sending {p.rows} history rows" + (" (resumed)" if p.resumed else ""))
            rounds = -(-len(batch) // max(1, self.settings.max_parallel))
            rc = self.wait(up, batch, self.settings.upload_timeout * rounds)
            upload.finished(up)
            if upload.stopping.is_set():  # the server is not asked now: the next round asks it
                return [self.retry(p.unit, STOPPED, None) for p in batch]
            try:
                judged = self.ask(batch, after_upload=True)
            except Exception as exc:
                return [self.settle_error(p.unit, exc) for p in batch]
            return [self.judge_sent(p, after, rc, out_log) for p, after in zip(batch, judged)]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            for p in batch:
                shutil.rmtree(p.work, ignore_errors=True)

    def wait(self, up: upload.Upload, batch: list["Prepared"], timeout: float) -> int | None:
        """Wait for the upload to end (killed after ``timeout``); meanwhile report each run whose
        ``.synced`` marker wandb wrote (for progress only: the server's answer decides)."""
        deadline = time.monotonic() + timeout
        waiting = list(batch)
        rc: int | None = None
        while True:
            try:
                rc = up.proc.wait(timeout=PROGRESS_POLL)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    upload.kill(up)
                    break
            for p in [p for p in waiting if p.log_path.with_name(p.log_path.name + ".synced").exists()]:
                waiting.remove(p)
                self.report("upload_end", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, returncode=None)
        for p in waiting:
            self.report("upload_end", run_id=p.unit.run_id, segment=p.unit.segment, bytes=p.size, returncode=rc)
        return rc

    def judge_sent(self, p: "Prepared", after: confirm.Judgement, rc: int | None, out_log: Path) -> Outcome:
        u = p.unit
        if after.kind == confirm.COMPLETE:
            return self.confirmed(u, after, p.rows, p.size, "sent and confirmed", p.base + p.facts.history_rows)
        if after.kind == confirm.MISMATCH:
            return self.failed(u, f"sent, but {after.detail}; not sending again", after.server_rows)
        tls = upload.diagnose(upload.tail(out_log, 4000), self.t.base_url, self.t.name)
        if tls:
            return self.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {tls}", None)
        if after.kind == confirm.UNKNOWN:
            return self.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {after.detail}", None)
        why = upload.tail(out_log, 600).replace(self.key, "<key>").strip().splitlines()
        last = why[-1] if why else ""
        return self.retry(u, f"{NOT_CONFIRMED} (exit {rc}): {after.detail}"
                             + (f"; wandb said: {last[:300]}" if last else ""), after.server_rows)

    def settle_error(self, u: Unit, exc: Exception) -> Outcome:
        if isinstance(exc, _NotYet):
            return self.retry(u, str(exc), None)
        if isinstance(exc, DeliveryError):
            return self.failed(u, str(exc), None)
        if isinstance(exc, confirm.srv.TLSFailure):
            return self.retry(u, str(exc), None)
        if isinstance(exc, (confirm.srv.Unreachable, confirm.srv.KeyRejected)):
            return self.retry(u, f"server trouble: {exc}", None)
        if isinstance(exc, confirm.srv.ServerError):
            return self.retry(u, f"server answered oddly: {exc}", None)
        if isinstance(exc, LogError):  # a verified bundle whose log is damaged: it will not heal by waiting
            return self.failed(u, f"segment {u.segment} of {u.run_id}: its .wandb log cannot be read ({exc}); "
                                  "not delivered (`sync --retry-failed` tries again)", None)
        # Anything else is a bug, but one unit's bug must not abort the round for the others.
        log.exception("%s segment %d -> %s: unexpected error", u.run_id, u.segment, self.t.name)
        return self.retry(u, f"unexpected error ({type(exc).__name__}: {exc}); asked again later", None)

    def confirmed(self, u: Unit, j: confirm.Judgement, rows: int, size: int, how: str, through: int) -> Outcome:
        now = time.time()
        prev = _delivery(self.ledger, u, self.t.name) or {}
        # server_rows: the run's history rows through this segment (what a later part builds on).
        _set(self.ledger, u, self.t.name, "confirmed", last_error=None, reason=f"{how}: {j.detail}",
             server_rows=through, rows_sent=prev.get("rows_sent", 0) + rows,
             bytes_sent=prev.get("bytes_sent", 0) + size, confirmed_at=now, next_attempt=None,
             uploader_pid=None, uploader_start=None, audit={
                 "kind": "delivered", "run_id": u.run_id, "segment": u.segment, "content_id": u.content_id,
                 "bundle_id": u.bundle_id, "target": self.t.name, "base_url": self.t.base_url, "rows_sent": rows,
                 "bytes_sent": size, "server_rows": through, "how": how})
        log.info("%s segment %d -> %s: confirmed (%s; %d rows, %d bytes sent)", u.run_id, u.segment, self.t.name,
                 how, rows, size)
        return Outcome(u.run_id, u.segment, self.t.name, "confirmed", how, rows, size)

    def retry(self, u: Unit, why: str, server_rows: int | None) -> Outcome:
        prev = _delivery(self.ledger, u, self.t.name) or {}
        n = max(1, prev.get("attempts", 0))
        nxt = time.time() + backoff.delay(n, self.settings.backoff_base, self.settings.backoff_cap)
        _set(self.ledger, u, self.t.name, "pending", last_error=why, next_attempt=nxt, server_rows=server_rows,
             uploader_pid=None, uploader_start=None)
        log.warning("%s segment %d -> %s: will retry: %s", u.run_id, u.segment, self.t.name, why)
        return Outcome(u.run_id, u.segment, self.t.name, "pending", why)

    def failed(self, u: Unit, why: str, server_rows: int | None) -> Outcome:
        _set(self.ledger, u, self.t.name, "failed", last_error=why, server_rows=server_rows,
             uploader_pid=None, uploader_start=None, next_attempt=None)
        log.error("%s segment %d -> %s: failed: %s", u.run_id, u.segment, self.t.name, why)
        return Outcome(u.run_id, u.segment, self.t.name, "failed", why)


# --- one round for one target ----------------------------------------------------------------

def deliver_round(ledger: Ledger, cfg: config_mod.Config, target_name: str, *, only_run: str | None = None,
                  dry_run: bool = False, force_probe: bool = False, wait_for_others: bool = False,
                  retry_failed: bool = False, report: Reporter = _quiet, now: float | None = None,
                  exclusive: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> RoundReport:
    """Deliver what policy allows now to ``target_name``; return what happened, per segment.

    One process at a time delivers to a target (the daemon's stage and a `sync` by hand would
    otherwise both find a run absent on the server and both send it). With ``wait_for_others``
    the round waits for such a process, and for uploads a killed one left running; without it
    (the daemon) it leaves those to finish and goes on with the rest. ``exclusive()`` is held
    around the round once the target is ours: a command's hold on the state directory (the
    daemon holds it already for its whole pass)."""
    all_targets = targets(cfg)
    if target_name not in all_targets:
        known = ", ".join(sorted(all_targets)) or "none configured"
        raise config_mod.ConfigError(cfg.source, f"targets.{target_name}", f"no such target (known: {known})")
    args = dict(only_run=only_run, force_probe=force_probe, wait_for_others=wait_for_others, retry_failed=retry_failed,
                report=report, now=now)
    if dry_run:
        return _round(ledger, cfg, target_name, all_targets[target_name], dry_run=True, **args)
    with _target_lock(cfg, target_name, wait=wait_for_others) as held:
        if not held:
            row = target_row(ledger, target_name) or {}
            return RoundReport(target_name, row.get("status"), f"another tfwb-agent process is delivering to "
                               f"{target_name} now", waiting=1)
        with exclusive():
            return _round(ledger, cfg, target_name, all_targets[target_name], dry_run=False, **args)


@contextlib.contextmanager
def _target_lock(cfg: config_mod.Config, target_name: str, wait: bool) -> Iterator[bool]:
    """Hold the target's delivery lock (an flock, so a killed process lets go of it); yields
    whether it is held. Uploaders started under it do not inherit it (close_fds)."""
    root = statedir.deliver_root(cfg)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(root / f"{ids.check('target name', target_name)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
            if wait:
                log.warning("another tfwb-agent process is delivering to %s; waiting for it to finish", target_name)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        yield held
    finally:
        os.close(fd)


def _sweep_leftovers(ledger: Ledger, cfg: config_mod.Config, target_name: str) -> None:
    """Clear what killed agents left in the target's work directory (rebuilt runs, wandb's
    scratch), unless an upload one of them started is still running and reading it."""
    root = statedir.deliver_target(cfg, target_name)
    if not root.is_dir():
        return
    rows = ledger.uploaders(target_name)
    if any(upload.alive(r["uploader_pid"], r["uploader_start"]) for r in rows):
        return
    for p in root.iterdir():
        shutil.rmtree(p, ignore_errors=True)


def _round(ledger: Ledger, cfg: config_mod.Config, target_name: str, t: Target, *, only_run: str | None,
           dry_run: bool, force_probe: bool, wait_for_others: bool, retry_failed: bool, report: Reporter,
           now: float | None) -> RoundReport:
    settings = sync_settings(cfg)
    rules = policies(cfg)
    now = time.time() if now is None else now
    local_now = datetime.fromtimestamp(now)
    rr = RoundReport(target_name)
    to_send: list[Unit] = []
    for u in pending_units(ledger):
        if only_run and u.run_id != only_run:
            continue
        d = _delivery(ledger, u, target_name)
        if d and d["state"] == "confirmed" and d["content_id"] == u.content_id:
            continue  # delivered: nothing to ask, nothing to send
        if d and d["state"] == "failed" and d["content_id"] == u.content_id and not retry_failed:
            continue  # needs an operator (`sync --retry-failed` after looking)
        if not u.identity_known:
            if not dry_run and (d is None or d["state"] != "held" or d["reason"] != NO_IDENTITY):
                _set(ledger, u, target_name, "held", reason=NO_IDENTITY, last_error=None, next_attempt=None)
            rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "held", NO_IDENTITY))
            continue
        dec = policy.decide(rules, u.project, target_name, now=local_now, age_days=(now - u.created) / 86400,
                            approved=_approved(ledger, u.run_id))
        if not dec.may_send:
            state = "pending" if dec.verdict == policy.WAIT else "held"
            if not dry_run and (d is None or d["state"] != state or d["reason"] != dec.reason):
                _set(ledger, u, target_name, state, reason=dec.reason, last_error=None,
                     next_attempt=dec.next_open.timestamp() if dec.next_open else None)
            rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "held" if state == "held" else "waiting",
                                       dec.reason))
            continue
        if d and d["state"] == "uploading" and d["uploader_pid"] and upload.alive(d["uploader_pid"], d["uploader_start"]):
            if not wait_for_others:
                rr.waiting += 1
                rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "uploading",
                                           f"an upload started earlier (pid {d['uploader_pid']}) is still running"))
                continue
            while upload.alive(d["uploader_pid"], d["uploader_start"]) and not upload.stopping.is_set():
                time.sleep(0.5)  # a poll interval: the earlier uploader's exit is what we wait for
            if upload.stopping.is_set():
                rr.waiting += 1
                continue
        # A back-off after a failed attempt (last_error set) is waited out; a wait for a policy
        # window is not: the policy was asked again just now, under the config in force (a
        # reload may have widened the window), and it says send.
        if d and d["state"] == "pending" and d["last_error"] and d["next_attempt"] and d["next_attempt"] > now \
                and not force_probe:
            rr.waiting += 1
            continue
        to_send.append(u)
    if not to_send:
        row = target_row(ledger, target_name)
        rr.status, rr.detail = (row["status"], row["detail"]) if row else (None, None)
        return rr
    if dry_run:
        for u in to_send:
            rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "would_send", "policy allows it now"))
        return rr

    row = target_row(ledger, target_name)
    if row and row["status"] != probe.ONLINE and row["next_attempt"] and row["next_attempt"] > now and not force_probe:
        rr.status, rr.detail, rr.waiting = row["status"], row["detail"], rr.waiting + len(to_send)
        return rr
    res, rec, key = probe_target(ledger, target_name, t, settings, now)
    rr.status, rr.detail = rec["status"], rec["detail"]
    if res.status != probe.ONLINE:
        log.warning("target %s is %s: %s; next attempt in %.0fs", target_name, res.status, res.detail,
                    (rec["next_attempt"] or now) - now)
        rr.waiting += len(to_send)
        return rr

    _sweep_leftovers(ledger, cfg, target_name)
    settle = _Settle(ledger, cfg, t, key, settings, report)
    report("round_start", target=target_name, segments=len(to_send))
    # Segments of one run go in order, one wave after the other; different runs side by side.
    queues: dict[str, list[Unit]] = {}
    for u in sorted(to_send, key=lambda x: x.segment):
        queues.setdefault(u.run_id, []).append(u)
    with ThreadPoolExecutor(max_workers=settings.max_parallel, thread_name_prefix="deliver") as pool:
        while queues and not upload.stopping.is_set():
            for o in _deliver_wave(settle, [q[0] for q in queues.values()], pool):
                report("segment_done", outcome=o)
                rr.outcomes.append(o)
                q = queues[o.run_id]
                q.pop(0)
                if o.state != "confirmed" or not q:
                    del queues[o.run_id]  # done, or a later segment waits for this one
    return rr


PROGRESS_POLL = 1.0  # seconds between looks for wandb's per-run .synced markers while it uploads
BATCH_MAX = 64  # runs per wandb sync process: bounds its argv and how long confirmations wait


def wave_parts(wave: list[Unit], parallel: int) -> list[list[Unit]]:
    """Pure: the order a wave is opened and sent in. A long wave goes in two parts: its first
    ``parallel`` segments start uploading while the rest are opened (decrypting, verifying and
    reading a bundle is ~0.1 s of this process's CPU each, time the server would otherwise sit
    idle); a short one goes whole."""
    if len(wave) <= 2 * parallel:
        return [wave]
    return [wave[:parallel], wave[parallel:]]


def _deliver_wave(settle: _Settle, wave: list[Unit], pool: ThreadPoolExecutor) -> Iterator[Outcome]:
    """The wave's outcomes as they are settled (an upload's as soon as the server confirmed it),
    so that progress follows the server, not the slowest upload of the wave."""
    with ThreadPoolExecutor(max_workers=settle.settings.max_parallel, thread_name_prefix="send") as senders:
        sending = []
        for part in wave_parts(wave, settle.settings.max_parallel):
            if upload.stopping.is_set():
                break
            ready, settled = _prepare(settle, part, pool)
            yield from settled
            sending += [senders.submit(settle.send, b) for b in batches(ready, settle.ledger, settle.t.name)]
        for f in as_completed(sending):
            yield from f.result()


def _prepare(settle: _Settle, units: list[Unit], pool: ThreadPoolExecutor) -> tuple[list[Prepared], list[Outcome]]:
    """Open ``units``, ask the server about them in one request, cut each to what it lacks:
    the segments to send, and the outcomes of those settled already (or refused)."""
    opened = list(pool.map(settle.open, units))
    outcomes = [o for o in opened if isinstance(o, Outcome)]
    ready = [p for p in opened if isinstance(p, Prepared)]
    if not ready:
        return [], outcomes
    try:
        judged = settle.ask(ready)
    except Exception as exc:
        for p in ready:
            shutil.rmtree(p.work, ignore_errors=True)
        return [], outcomes + [settle.settle_error(p.unit, exc) for p in ready]
    cut = list(pool.map(settle.cut, ready, judged))
    return [p for p in cut if isinstance(p, Prepared)], outcomes + [o for o in cut if isinstance(o, Outcome)]


def batches(ready: list[Prepared], ledger: Ledger, target: str) -> list[list[Prepared]]:
    """Group segments into uploads: one per project and entity, except a segment whose last
    upload was not confirmed, which goes alone (one run that wandb cannot take must not hold
    back the others again), and every segment alone where wandb sync cannot take several."""
    if not upload.syncs_in_parallel():
        return [[p] for p in ready]
    out: list[list[Prepared]] = []
    groups: dict[tuple[str, str | None], list[Prepared]] = {}
    for p in ready:
        d = _delivery(ledger, p.unit, target) or {}
        if d.get("state") == "pending" and (d.get("last_error") or "").startswith(NOT_CONFIRMED):
            out.append([p])
        else:
            groups.setdefault(p.batch_key, []).append(p)
    for group in groups.values():
        out.extend(group[i:i + BATCH_MAX] for i in range(0, len(group), BATCH_MAX))
    return out


def deliver_stage(ledger: Ledger, cfg: config_mod.Config) -> None:
    """The daemon's stage: one round for every configured target (after cutting live segments)."""
    if not targets(cfg):
        return
    if sync_settings(cfg).live:
        try:
            from .live import seal_live_segments
            seal_live_segments(ledger, cfg)
        except Exception:  # live segments are an extra; delivery of the rest goes on
            log.exception("cutting live segments failed")
    for name in targets(cfg):
        try:
            deliver_round(ledger, cfg, name)
        except Exception:
            log.exception("delivery to %s failed", name)
