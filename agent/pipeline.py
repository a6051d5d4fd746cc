"""The daemon's stages after classification: seal ended runs, cut live segments, deliver.

A stage is ``fn(ledger, cfg)``, run by the daemon after every pass. Each is idempotent: after a
crash the next call repeats whatever had not reached the ledger, with the same result. Sealing
itself is ``sealing``'s (one path for ended runs and live segments); a stage chooses the runs
and decides what a failure means for a run.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import failures, ids, sealing, statedir
from .deliver.engine import deliver_stage
from .deliver.settings import sync_settings, targets
from .ledger import Ledger
from .reconcile import ClaimBook
from .redact.policy import load_secret, policy_from_config
from .redact.run import RedactError
from .seal import SealError, keys_config, outbox_dir, recover_outbox, seal_keys
from .seal.keystore import KeyFileError

Stage = Callable[[Ledger, config_mod.Config], "bool | None"]

log = logging.getLogger("tfwb_agent.pipeline")

SEAL_BATCH = 20
RETRY_SECONDS = 60.0  # a run whose sealing failed for a passing reason (disk full) waits this long


class SealStage:
    """The daemon's ended-run stage: seal a batch of the ended runs this node holds (``__call__``).
    One lives as long as its daemon: it says each reason runs wait unsealed once, and cleans
    the outbox of a previous crash's temporary files once."""
    __name__ = "seal_stage"  # the stage's name in the daemon's log, its floor guard and metrics

    def __init__(self) -> None:
        self.warned: set[str] = set()
        self.recovered: set[Path] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)

    def __call__(self, ledger: Ledger, cfg: config_mod.Config) -> bool:
        """Seal a batch of the ended runs this node holds; True if more are waiting."""
        outbox = outbox_dir(cfg)
        if outbox not in self.recovered and outbox.is_dir():
            for leftover in recover_outbox(outbox):
                log.info("removed %s, left by a crash while sealing", leftover)
            self.recovered.add(outbox)
        for leftover in statedir.sweep_work(cfg):
            log.info("removed work/%s, left by a process that is gone", leftover)
        # Runs delivered live are closed by their last live segment (live_stage), not here.
        if not ledger.runs_to_seal(limit=1):
            return False  # the common idle case: no key or policy file read
        try:
            keys = seal_keys(keys_config(cfg))
        except (KeyFileError, ValueError, config_mod.ConfigError) as exc:
            self._warn_once("keys", f"runs wait unsealed: {exc}")  # the message says what to do
            return False
        try:
            sealing.ensure_redaction_secret(cfg)
            policy = policy_from_config(cfg)
            secret = load_secret(policy, cfg)
        except (config_mod.ConfigError, OSError) as exc:
            self._warn_once("secret", f"runs wait unsealed: {exc}")
            return False
        now = time.time()
        # A batch per call: the daemon goes back to its events between batches.
        batch = ledger.runs_to_seal(limit=SEAL_BATCH)
        book = ClaimBook(cfg)  # renews this node's lease as it goes: a long batch keeps its runs
        tried = 0
        for row in batch:
            failed_at = row["facts"].get("seal_failed_at", 0)
            if now - failed_at < RETRY_SECONDS:
                continue
            tried += 1
            try:
                path = sealing.seal_ended(ledger, cfg, sealing.Sealer(keys, policy, secret), row,
                                           book.for_run(Path(row["key"])))
                log.info("%s: sealed into %s", row["run_id"], path.name)
            except sealing.HeldElsewhere as exc:
                log.info("%s: %s; leaving it to that node", row["key"], exc)
                ledger.drop_run(row["key"])
            except RedactError as exc:
                if _disk_full_cause(exc):
                    raise _disk_full_cause(exc) from None  # a full disk is not the run's fault: pause, keep it
                _quarantine(ledger, row, f"redaction failed: {exc}")
            except ids.BadId as exc:
                _quarantine(ledger, row, f"{exc}; the agent never builds a file name from it")
            except SealError as exc:
                _retry_later(ledger, row, f"sealing failed, will retry: {exc}")
            except OSError as exc:
                if failures.disk_full(exc):
                    raise  # the daemon pauses until there is room (scan --seal says so and stops)
                _retry_later(ledger, row, f"sealing failed, will retry: {exc}")
            except Exception as exc:  # one bad run must not stop the others
                if isinstance(exc, sqlite3.Error) or failures.disk_full(exc):
                    raise  # the ledger (read-only, damaged, its disk full) is the trouble, not this run
                log.exception("sealing %s failed", row["key"])
                _quarantine(ledger, row, f"internal error while sealing: {type(exc).__name__}: {exc}")
        # More to do only if this batch was full and moved: runs waiting to retry don't spin the loop.
        return len(batch) == SEAL_BATCH and tried > 0


def _disk_full_cause(exc: BaseException) -> BaseException | None:
    cause = exc.__cause__ or exc.__context__
    return cause if cause is not None and failures.disk_full(cause) else None


def _quarantine(ledger: Ledger, row: dict[str, Any], reason: str) -> None:
    log.error("%s: quarantined: %s", row["key"], reason)
    ledger.quarantine_run(row["key"], reason)


def _retry_later(ledger: Ledger, row: dict[str, Any], reason: str) -> None:
    log.warning("%s: %s", row["key"], reason)
    facts = dict(row["facts"], seal_failed_at=time.time())
    ledger.set_run_facts(row["key"], facts, last_error=reason)


def live_stage(ledger: Ledger, cfg: config_mod.Config) -> None:
    """Cut and seal the next segment of every live run that grew, where runs are delivered
    live (``sync.live`` and a target to deliver to): before delivery, which sends them."""
    if not targets(cfg) or not sync_settings(cfg).live:
        return
    try:
        sealing.seal_live_segments(ledger, cfg)
    except Exception:  # live segments are an extra; the other stages go on
        log.exception("cutting live segments failed")


def stages() -> list[Stage]:
    """The stages of one daemon, in order (new objects: what a stage remembers lives as long as it)."""
    return [SealStage(), live_stage, deliver_stage]


def seal_stage(ledger: Ledger, cfg: config_mod.Config) -> bool:
    """One call of a fresh sealing stage, for a command that seals once (``scan --seal``)."""
    return SealStage()(ledger, cfg)
