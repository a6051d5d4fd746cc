"""A delivery round: every waiting segment policy allows, to one target, once.

One round for a target:
 1. list the segments waiting (``work.pending_units``) and ask the policy about each (pure);
 2. probe the target unless its back-off says not yet; record online/offline/key_rejected/no_key;
 3. in waves (the first waiting segment of every run, then the next ...; ``waves.py``): open and
    verify each bundle into a private work directory, ask the server how many history rows of
    each run it holds (one GraphQL request for the whole wave, while it is opened), cut each
    log to what the server lacks, send them with one stock ``wandb sync -n P`` per project and
    entity, then ask the server again; only its answer marks a segment ``confirmed``
    (``settle.py``).
A crash anywhere is settled the same way: the next round asks the server before sending, so an
upload that finished before the crash is confirmed without sending it again, and one that
stopped halfway is completed from where the server's rows end. An upload still running from a
killed agent (it runs in its own session) is waited for, never raced: one process at a time
delivers to a target (an flock per target).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from datetime import datetime
from typing import Any, Callable, ContextManager, Iterator

from .. import config as config_mod
from .. import ids, procs, statedir
from ..ledger import Ledger
from . import ahead as ahead_mod
from . import policy, probe, upload
from .outcomes import Outcome, RoundReport, delivery, set_state
from .settings import Target, policies, sync_settings, targets
from .settle import Reporter, Settler
from .target_status import probe_target, target_row
from .waves import deliver_waves
from .work import NO_IDENTITY, Unit, pending_units, settled

log = logging.getLogger("tfwb_agent.deliver")


def _quiet(event: str, **info: Any) -> None:
    pass


def deliver_round(ledger: Ledger, cfg: config_mod.Config, target_name: str, *, only_run: str | None = None,
                  dry_run: bool = False, force_probe: bool = False, wait_for_others: bool = False,
                  retry_failed: bool = False, report: Reporter = _quiet, now: float | None = None,
                  exclusive: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                  ahead: upload.Warm | None = None) -> RoundReport:
    """Deliver what policy allows now to ``target_name``; return what happened, per segment.

    One process at a time delivers to a target (the daemon's stage and a `sync` by hand would
    otherwise both find a run absent on the server and both send it). With ``wait_for_others``
    the round waits for such a process, and for uploads a killed one left running; without it
    (the daemon) it leaves those to finish and goes on with the rest. ``exclusive()`` is held
    around the round once the target is ours: a command's hold on the state directory (the
    daemon holds it already for its whole pass). ``ahead``: a ``wandb sync`` the caller started
    before it (``ahead.py``), used for the first upload, else ended here."""
    try:
        return _locked_round(ledger, cfg, target_name, dry_run, exclusive, ahead,
                             dict(only_run=only_run, force_probe=force_probe, wait_for_others=wait_for_others,
                                  retry_failed=retry_failed, report=report, now=now))
    finally:
        if ahead is not None:
            ahead.discard()  # nothing, once an upload took it


def _locked_round(ledger: Ledger, cfg: config_mod.Config, target_name: str, dry_run: bool,
                  exclusive: Callable[[], ContextManager[Any]], ahead: upload.Warm | None,
                  args: dict[str, Any]) -> RoundReport:
    all_targets = targets(cfg)
    if target_name not in all_targets:
        known = ", ".join(sorted(all_targets)) or "none configured"
        raise config_mod.ConfigError(cfg.source, f"targets.{target_name}", f"no such target (known: {known})")
    if dry_run:
        return _round(ledger, cfg, target_name, all_targets[target_name], dry_run=True, ahead=None, **args)
    with _target_lock(cfg, target_name, wait=args["wait_for_others"]) as held:
        if not held:
            row = target_row(ledger, target_name) or {}
            return RoundReport(target_name, row.get("status"), f"another tfwb-agent process is delivering to "
                               f"{target_name} now", waiting=1)
        with exclusive():
            return _round(ledger, cfg, target_name, all_targets[target_name], dry_run=False, ahead=ahead, **args)


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
    if any(procs.alive(r["uploader_pid"], r["uploader_start"]) for r in rows):
        return
    for p in root.iterdir():
        shutil.rmtree(p, ignore_errors=True)


def _warm_early(cfg: config_mod.Config, target_name: str, t: Target, row: dict[str, Any] | None,
                ahead: upload.Warm | None) -> upload.Warm | None:
    """A ``wandb sync`` started before the probe, to import wandb while it runs: only for a
    target that was online when last probed (or never was) and sends with the agent's own
    wandb (ended unused if the probe says otherwise now). The caller's, where it started one
    ahead."""
    if ahead is not None:
        return ahead
    if not ahead_mod.worth_warming(t, row):
        return None
    return ahead_mod.warm_for(target_name, t, statedir.deliver_target(cfg, target_name) / f"sync-warm-{os.getpid()}-0")


def _choose(ledger: Ledger, cfg: config_mod.Config, target_name: str, rr: RoundReport, *, only_run: str | None,
            dry_run: bool, force_probe: bool, wait_for_others: bool, retry_failed: bool, now: float) -> list[Unit]:
    """The segments to send now; the others' outcome (held, waiting, uploading) goes in ``rr``."""
    rules = policies(cfg)
    local_now = datetime.fromtimestamp(now)
    to_send: list[Unit] = []
    for u in pending_units(ledger):
        if only_run and u.run_id != only_run:
            continue
        d = delivery(ledger, u, target_name)
        if settled(d, u, retry_failed):
            continue  # delivered, or needs an operator (`sync --retry-failed` after looking)
        if not u.identity_known:
            if not dry_run and (d is None or d["state"] != "held" or d["reason"] != NO_IDENTITY):
                set_state(ledger, u, target_name, "held", reason=NO_IDENTITY, last_error=None, next_attempt=None)
            rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "held", NO_IDENTITY))
            continue
        dec = policy.decide(rules, u.project, target_name, now=local_now, age_days=(now - u.created) / 86400,
                            approved=ledger.is_approved(u.run_id))
        if not dec.may_send:
            state = "pending" if dec.verdict == policy.WAIT else "held"
            if not dry_run and (d is None or d["state"] != state or d["reason"] != dec.reason):
                set_state(ledger, u, target_name, state, reason=dec.reason, last_error=None,
                          next_attempt=dec.next_open.timestamp() if dec.next_open else None)
            rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "held" if state == "held" else "waiting",
                                       dec.reason))
            continue
        if d and d["state"] == "uploading" and d["uploader_pid"] and procs.alive(d["uploader_pid"], d["uploader_start"]):
            if not wait_for_others:
                rr.waiting += 1
                rr.outcomes.append(Outcome(u.run_id, u.segment, target_name, "uploading",
                                           f"an upload started earlier (pid {d['uploader_pid']}) is still running"))
                continue
            while procs.alive(d["uploader_pid"], d["uploader_start"]) and not upload.stopping.is_set():
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
    return to_send


def _round(ledger: Ledger, cfg: config_mod.Config, target_name: str, t: Target, *, only_run: str | None,
           dry_run: bool, force_probe: bool, wait_for_others: bool, retry_failed: bool, report: Reporter,
           now: float | None, ahead: upload.Warm | None) -> RoundReport:
    settings = sync_settings(cfg)
    now = time.time() if now is None else now
    rr = RoundReport(target_name)
    to_send = _choose(ledger, cfg, target_name, rr, only_run=only_run, dry_run=dry_run, force_probe=force_probe,
                      wait_for_others=wait_for_others, retry_failed=retry_failed, now=now)
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
    _sweep_leftovers(ledger, cfg, target_name)
    early = _warm_early(cfg, target_name, t, row, ahead)
    res, rec, key = probe_target(ledger, target_name, t, settings, now)
    rr.status, rr.detail = rec["status"], rec["detail"]
    if res.status != probe.ONLINE:
        if early is not None:
            early.discard()
            shutil.rmtree(early.home.parent, ignore_errors=True)
        log.warning("target %s is %s: %s; next attempt in %.0fs", target_name, res.status, res.detail,
                    (rec["next_attempt"] or now) - now)
        rr.waiting += len(to_send)
        return rr

    settler = Settler(ledger, cfg, t, key, settings, report, spare=early)
    report("round_start", target=target_name, segments=len(to_send))
    rr.outcomes.extend(deliver_waves(settler, to_send, report))
    return rr


def deliver_stage(ledger: Ledger, cfg: config_mod.Config) -> None:
    """The daemon's stage: one round for every configured target. Live segments are cut before
    it, by the pipeline's own stage (``pipeline.live_stage``)."""
    for name in targets(cfg):
        try:
            deliver_round(ledger, cfg, name)
        except Exception:
            log.exception("delivery to %s failed", name)
