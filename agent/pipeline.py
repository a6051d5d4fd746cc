"""The daemon's stages after classification: redact and seal each ended run, then deliver.

A stage is ``fn(ledger, cfg)``, run by the daemon after every pass. Each is idempotent: after a
crash the next call repeats whatever had not reached the ledger, with the same result.
"""
from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import failures, ids, statedir
from .claims import Claims
from .ledger import Ledger
from .reconcile import ClaimBook
from .segments import end_marker

log = logging.getLogger("tfwb_agent.pipeline")

SEAL_BATCH = 20
RETRY_SECONDS = 60.0  # a run whose sealing failed for a passing reason (disk full) waits this long
_warned: set[str] = set()
_recovered: set[Path] = set()  # outboxes cleaned of a previous crash's temporary files


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def ensure_redaction_secret(cfg: config_mod.Config) -> None:
    """Create the default site secret once, if the config names none (0600, 32 random bytes)."""
    from .redact.policy import DEFAULT_SECRET_NAME, policy_from_config

    if policy_from_config(cfg).secret_ref is not None:
        return
    path = cfg.state_dir / DEFAULT_SECRET_NAME
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    log.warning("created a redaction secret at %s; copy it to every node of the site (redact.secret_file) "
                "so that equal samples get equal tags across nodes", path)


def mark_crashed(run_dir: Path, reason: str | None) -> None:
    """Append to a crashed run's (redacted) log a summary saying so. wandb sync shows a run
    with no exit record as finished, and servers differ in what they make of that; a summary
    key arrives everywhere and is what a dashboard can filter on."""
    mark_ended(run_dir, end_marker("crashed", reason, False))


def mark_ended(run_dir: Path, marker: dict[str, str] | None) -> None:
    """Append the summary keys ``marker`` (``segments.end_marker``) to a (redacted) run's log,
    after its last whole record. Written after an exit record they still arrive: delivery
    moves the exit record last (``segments.Cut.exit_last``)."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    from .runs import find_log
    from .wandb_log import LogReader, LogWriter

    log_path = find_log(run_dir)
    if log_path is None or not marker:
        return
    with open(log_path, "r+b") as f:
        reader = LogReader(f)
        for _ in reader:
            pass
        assert reader.tail is not None
        rec = pb.Record()
        for key, value in marker.items():
            item = rec.summary.update.add()
            item.key, item.value_json = key, json.dumps(value)
        f.truncate(reader.tail.end)  # the redactor writes whole records; never append after a torn one
        LogWriter(f, append_at=reader.tail.end).write(rec)
        f.flush()
        os.fsync(f.fileno())


def supersedes_crash(ledger: Ledger, row: dict[str, Any]) -> bool:
    """Whether an earlier segment of this run may have told the server "crashed": its ending
    was revised (a pause taken for a crash), or it is a later part of a run (a killed job
    resumed with the same id writes a new run directory)."""
    if (row.get("facts") or {}).get("revisions"):
        return True
    return bool(row["run_id"]) and part_number(ledger, row) > 0


def next_segment(ledger: Ledger, row: dict[str, Any]) -> Any:
    """The segment a run directory is sealed as: its part number (``part_number``), or, for a
    run whose ending was revised after it had been sealed (``reconcile`` notes where its sealed
    segments end), the next segment of the same log: delivery sends only what the server lacks."""
    from .seal import Segment

    facts = row.get("facts") or {}
    if facts.get("next_segment") is None:
        return part_number(ledger, row)
    return Segment(int(facts["next_segment"]), max(1, int(facts.get("segment_start") or 0)), None)


def part_number(ledger: Ledger, row: dict[str, Any]) -> int:
    """Which part of its run this directory is. A job killed and restarted with the same run id
    writes a second ``offline-run-<time>-<id>`` directory that resumes the run: the parts are
    its segments, in the order of their start times (the directory names)."""
    keys = ledger.part_keys(row["run_id"])
    return sorted(keys, key=lambda k: (Path(k).name, k)).index(row["key"])


class HeldElsewhere(Exception):
    """Another node holds the run now, or has sealed it: the run is left to that node."""

    def __init__(self, message: str, sealed: Any = None) -> None:
        super().__init__(message)
        self.sealed = sealed  # our bundle of it, if one was made before we knew


def seal_one(ledger: Ledger, cfg: config_mod.Config, row: dict[str, Any], keys: Any, policy: Any,
             secret: bytes, claims: Claims) -> Path:
    """Redact one ended run into this process's own work directory and seal it, from exactly
    what redaction wrote; mark it sealed, in the ledger and on the volume (``claims``)."""
    from . import runlog
    from .redact.run import redact_run
    from .seal import RunIdentity, seal_run
    from .seal.bundle import snapshot
    from .seal.outbox import withdraw

    run_dir = Path(row["key"])
    ids.check("run id", row["run_id"])
    if not claims.acquire(run_dir.name):  # the lease may have lapsed since the pass that found it
        raise HeldElsewhere(f"{_held_by(claims, run_dir.name)}; leaving it to that node")
    resume = claims.resume_point(run_dir.name)
    if resume is not None and (row["facts"].get("next_segment") or 0) < resume["segment"]:
        # Delivered live up to some segment (by a node that is gone now, or by this one before
        # its ledger was rebuilt): the rest is sealed as the segment after those, never again
        # as one of them.
        facts = dict(row["facts"], next_segment=resume["segment"], segment_start=resume["byte_start"])
        ledger.set_run_facts(row["key"], facts)
        row = dict(row, facts=facts)
    work = statedir.work_for(cfg, run_dir.name)
    try:
        redacted = work / run_dir.name
        # The plan from the fold the classification made of the log: the log is read once more, to be rewritten.
        report = redact_run(run_dir, redacted, policy, secret, cfg.map_path,
                            fold=runlog.cached(row.get("log_path"), row.get("read_offset")))
        mark_ended(redacted, end_marker(row["ended"], row["reason"], supersedes_crash(ledger, row)))
        written = snapshot(redacted)

        def mark_sealed(db: Any, sealed: Any) -> None:
            # Inside the ledger's transaction, after the bundle is whole in the outbox: the
            # marker on the volume first; if another node's is there, this transaction and our
            # bundle go.
            _record_on_volume(claims, run_dir.name, sealed)
            ledger.mark_run_sealed(row["key"])

        try:
            sealed = seal_run(cfg, keys, ledger, redacted,
                              RunIdentity(row["run_id"], row["project"], row["entity"], row["wandb_version"]),
                              next_segment(ledger, row), report.to_dict(), run_key=row["key"], on_sealed=mark_sealed,
                              expect=written)
        except HeldElsewhere as exc:
            if exc.sealed is not None and withdraw(exc.sealed, keys.signer.public()):
                log.info("%s: withdrew %s: %s", row["run_id"], exc.sealed.path.name, exc)
            raise
        if sealed.reused:  # already sealed before a crash: make sure the run and the volume say so
            _record_on_volume(claims, run_dir.name, sealed)
            ledger.mark_run_sealed(row["key"])
        return sealed.path
    finally:
        statedir.release_work(work)


def _held_by(claims: Claims, run: str) -> str:
    marker = claims.sealed_by(run)
    if marker:
        return f"sealed by {marker.get('node', '?')} as {marker.get('bundle', '?')}"
    return f"held by {claims.holder(run) or '?'}"


def _record_on_volume(claims: Claims, run: str, sealed: Any) -> None:
    marker = claims.record_sealed(run, bundle=sealed.path.name, bundle_id=sealed.bundle_id,
                                  content_id=sealed.content_id)
    if marker.get("node") != claims.node:
        raise HeldElsewhere(f"sealed by {marker.get('node', '?')} as {marker.get('bundle', '?')} first", sealed)


def seal_stage(ledger: Ledger, cfg: config_mod.Config) -> bool:
    """Seal a batch of the ended runs this node holds; True if more are waiting."""
    from .redact.policy import load_secret, policy_from_config
    from .redact.run import RedactError
    from .seal import SealError, keys_config, outbox_dir, recover_outbox, seal_keys
    from .seal.keystore import KeyFileError

    outbox = outbox_dir(cfg)
    if outbox not in _recovered and outbox.is_dir():
        for leftover in recover_outbox(outbox):
            log.info("removed %s, left by a crash while sealing", leftover)
        _recovered.add(outbox)
    for leftover in statedir.sweep_work(cfg):
        log.info("removed work/%s, left by a process that is gone", leftover)
    # Runs delivered live are closed by their last live segment (deliver/live.py), not here.
    if not ledger.runs_to_seal(limit=1):
        return False  # the common idle case: no key or policy file read
    try:
        keys = seal_keys(keys_config(cfg))
    except (KeyFileError, ValueError, config_mod.ConfigError) as exc:
        _warn_once("keys", f"runs wait unsealed: {exc}")  # the message says what to do
        return False
    try:
        ensure_redaction_secret(cfg)
        policy = policy_from_config(cfg)
        secret = load_secret(policy, cfg)
    except (config_mod.ConfigError, OSError) as exc:
        _warn_once("secret", f"runs wait unsealed: {exc}")
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
            path = seal_one(ledger, cfg, row, keys, policy, secret, book.for_run(Path(row["key"])))
            log.info("%s: sealed into %s", row["run_id"], path.name)
        except HeldElsewhere as exc:
            log.info("%s: %s", row["key"], exc)
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


def _delivery_stage() -> list[Callable[[Ledger, config_mod.Config], bool | None]]:
    try:
        from .deliver.engine import deliver_stage
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.deliver.engine":
            raise
        return []  # a build without delivery
    return [deliver_stage]


STAGES: list[Callable[[Ledger, config_mod.Config], bool | None]] = [seal_stage, *_delivery_stage()]
