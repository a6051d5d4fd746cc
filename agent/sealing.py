"""The one sealing path, for ended runs and live segments alike: hold the run on the volume,
redact it into this process's own work directory, seal what redaction wrote as the run's next
segment, and record that on the volume and in the ledger (inside the ledger's transaction).

An ended run is sealed from its whole log (``seal_ended``). A live run (``sync.live = true``)
is cut at the last whole record the watcher read and sealed as its next segment every
``sync.live_interval`` seconds (``seal_live``); when it has ended, one last segment carries how
it ended and the run is marked sealed, so the ended-run stage leaves it alone. Each segment's
bundle holds the redacted log from its start: delivery asks the server how many rows it holds
and sends only the rest (``segments.plan_cut``). Which runs to seal, and what a failure means
for a run, is the daemon's stages' business (``pipeline``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import config as config_mod
from . import durable, ids, runlog, statedir
from .claims import Claims
from .deliver.settings import sync_settings
from .ledger import Ledger
from .reconcile import ClaimBook
from .redact.policy import DEFAULT_SECRET_NAME, Policy, load_secret, policy_from_config
from .redact.report import RedactionReport
from .redact.run import RedactError, redact_run
from .runlog import find_log
from .seal import RunIdentity, SealedBundle, SealKeys, Segment, keys_config, seal_keys, seal_run
from .seal.bundle_write import snapshot
from .seal.outbox import withdraw
from .segments import LogFacts, end_marker, read_facts, sealed_facts
from .wandb_log import LogReader, LogWriter

log = logging.getLogger("tfwb_agent.sealing")


@dataclass(frozen=True)
class Sealer:
    """What sealing needs from the node's files: read once per stage call, not per run."""
    keys: SealKeys
    policy: Policy
    secret: bytes


def load_sealer(cfg: config_mod.Config) -> Sealer:
    keys = seal_keys(keys_config(cfg))
    ensure_redaction_secret(cfg)
    policy = policy_from_config(cfg)
    return Sealer(keys, policy, load_secret(policy, cfg))


def ensure_redaction_secret(cfg: config_mod.Config) -> None:
    """Create the default site secret once, if the config names none (0600, 32 random bytes)."""
    if policy_from_config(cfg).secret_ref is not None:
        return
    path = cfg.state_dir / DEFAULT_SECRET_NAME
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not durable.create_exclusive(path, secrets.token_bytes(32), mode=0o600):
        return  # another process made it first: that one is the node's secret
    log.warning("created a redaction secret at %s; copy it to every node of the site (redact.secret_file) "
                "so that equal samples get equal tags across nodes", path)


class HeldElsewhere(Exception):
    """Another node holds the run now, or has sealed it: the run is left to that node."""

    def __init__(self, message: str, sealed: Any = None) -> None:
        super().__init__(message)
        self.sealed = sealed  # our bundle of it, if one was made before we knew


# --- ended runs -------------------------------------------------------------------------------

def seal_ended(ledger: Ledger, cfg: config_mod.Config, sealer: Sealer, row: dict[str, Any], claims: Claims) -> Path:
    """Redact one ended run into this process's own work directory and seal it, from exactly
    what redaction wrote; mark it sealed, in the ledger and on the volume (``claims``)."""
    run_dir = Path(row["key"])
    ids.check("run id", row["run_id"])
    resume = _hold(claims, run_dir.name)  # the lease may have lapsed since the pass that found it
    if resume is not None and (row["facts"].get("next_segment") or 0) < resume["segment"]:
        # Delivered live up to some segment (by a node that is gone now, or by this one before
        # its ledger was rebuilt): the rest is sealed as the segment after those, never again
        # as one of them.
        facts = dict(row["facts"], next_segment=resume["segment"], segment_start=resume["byte_start"])
        ledger.set_run_facts(row["key"], facts)
        row = dict(row, facts=facts)
    work = statedir.work_for(cfg, run_dir.name)
    try:
        redacted = work / sealed_dir_name(run_dir.name, row["run_id"])
        # The plan from the fold the classification made of the log: the log is read once more, to be rewritten.
        report = _redact(ledger, cfg, sealer, row, run_dir, redacted, ended=True,
                         fold=runlog.cached(row.get("log_path"), row.get("read_offset")))

        def mark_sealed(db: Any, sealed: SealedBundle) -> None:
            _record_on_volume(claims, run_dir.name, sealed)
            ledger.mark_run_sealed(row["key"])

        red_log = find_log(redacted)
        sealed = _seal(ledger, cfg, sealer, row, redacted, report, next_segment(ledger, row), mark_sealed,
                       expect=snapshot(redacted), log_facts=read_facts(red_log) if red_log else None)
        if sealed.reused:  # already sealed before a crash: make sure the run and the volume say so
            _record_on_volume(claims, run_dir.name, sealed)
            ledger.mark_run_sealed(row["key"])
        return sealed.path
    finally:
        statedir.release_work(work)


_WANDB_DIR_NAME = re.compile(r"((?:offline-)?run-\d{8}_\d{6})-")


def sealed_dir_name(dir_name: str, run_id: str) -> str:
    """The name a run's directory has in its bundle: wandb's own, ``offline-run-<time>-<run id>``,
    from its time and the run's id (checked), never a name someone gave the directory
    (``offline-run-…-P7126`` for a run whose id is another): the name leaves with the bundle."""
    m = _WANDB_DIR_NAME.match(dir_name)
    return f"{m.group(1) if m else 'offline-run-00000000_000000'}-{run_id}"


def next_segment(ledger: Ledger, row: dict[str, Any]) -> int | Segment:
    """The segment a run directory is sealed as: its part number (``Ledger.part_number``), or,
    for a run whose ending was revised after it had been sealed (``reconcile`` notes where its
    sealed segments end), the next segment of the same log: delivery sends only what the server lacks."""
    facts = row.get("facts") or {}
    if facts.get("next_segment") is None:
        return _first_segment(ledger, row)
    return Segment(int(facts["next_segment"]), max(1, int(facts.get("segment_start") or 0)), None)


def _first_segment(ledger: Ledger, row: dict[str, Any]) -> int:
    """The first segment of a run directory: its part number; for a later part of a run (a
    killed job resumed with the same id writes a new directory), after every segment sealed of
    the run's other parts (the first part's live segments among them), never one of them."""
    part = ledger.part_number(row["run_id"], row["key"])
    return max(part, ledger.first_segment_after_other_parts(row["run_id"], row["key"])) if part else 0


# --- live runs --------------------------------------------------------------------------------

def seal_live_segments(ledger: Ledger, cfg: config_mod.Config, now: float | None = None) -> list[str]:
    """Cut and seal the next segment of every live run that grew; close runs that ended.
    Returns ``<run id>-<segment>`` for each segment sealed."""
    now = time.time() if now is None else now
    rows = ledger.live_runs()
    if not rows:
        return []
    sealer = load_sealer(cfg)
    interval = sync_settings(cfg).live_interval
    book = ClaimBook(cfg)
    done = []
    for row in rows:
        ended = row["state"] == "ended"
        if not ended and now - row["facts"].get("live_cut_at", 0) < interval:
            continue
        try:
            k = seal_live(ledger, cfg, sealer, row, book.for_run(Path(row["key"])), now)
        except ids.BadId as exc:
            log.warning("%s: live segment not sealed: %s", row["run_id"], exc)
            continue
        except HeldElsewhere as exc:
            log.info("%s: %s; leaving it to that node", row["key"], exc)
            ledger.drop_run(row["key"])
            continue
        except RedactError as exc:
            # The run's own trouble (identifiers that may not leave, a damaged log): `status`
            # says why, and it is tried again once an interval, not on every pass (a snapshot
            # copied and redacted each time); once it ends, sealing it whole quarantines it.
            log.warning("%s: live segment not sealed: %s", row["run_id"], exc)
            ledger.set_run_facts(row["key"], dict(row["facts"], live_cut_at=now),
                                 last_error=f"live segment not sealed: {exc}")
            continue
        except Exception as exc:  # one run's trouble must not stop the others
            log.warning("%s: live segment not sealed: %s", row["run_id"], exc)
            continue
        if k is not None:
            done.append(f"{row['run_id']}-{k}")
    return done


def seal_live(ledger: Ledger, cfg: config_mod.Config, sealer: Sealer, row: dict[str, Any], claims: Claims,
              now: float) -> int | None:
    """Seal a live run's next segment (its last, once it has ended): the segment number, or
    None when it has nothing new."""
    if not row["run_id"]:
        return None  # its run record is not read yet: nothing to seal, nor a segment to number
    facts = dict(row["facts"])
    ended = row["state"] == "ended"
    run_dir = Path(row["key"])
    resume = _hold(claims, run_dir.name)  # another node may have taken it over, or sealed it
    # A run sealed whole as crashed, then revived by growth (runs.classify), goes on from
    # the segment after its sealed ones.
    k = facts.get("live_segments", facts.get("next_segment"))
    if k is None:
        k = _first_segment(ledger, row)
    if resume is not None and resume["segment"] > k:
        # The volume says segments up to resume-1 are sealed (by another node before a
        # takeover, or by this one before its ledger was rebuilt): go on after them, never
        # seal one of them again.
        log.info("%s: live segments 0-%d were sealed by %s; going on from segment %d", row["run_id"],
                 resume["segment"] - 1, resume["by"], resume["segment"])
        k = resume["segment"]
        facts.update(live_segments=k, live_byte_end=resume["byte_start"], live_rows=resume["rows"])
        ledger.set_run_facts(row["key"], facts)
    # What the watcher has read of the log (whole records up to read_offset, `steps` history
    # rows): whether the run grew is known without reading it again.
    rows_now, cut_end = row["steps"], row["read_offset"]
    if not ended and rows_now <= facts.get("live_rows", 0):
        return None
    src_log = find_log(run_dir)
    if src_log is None:
        return None
    ids.check("run id", row["run_id"])
    work = statedir.work_for(cfg, f"live-{run_dir.name}")
    try:
        # A still-growing log: redact a snapshot cut at its last whole record.
        snap = work / "snapshot" / run_dir.name
        shutil.copytree(run_dir, snap, symlinks=True, ignore=shutil.ignore_patterns("*.wandb"))
        with open(src_log, "rb") as fin, open(snap / src_log.name, "wb") as fout:
            fout.write(fin.read(cut_end))
        redacted = work / "out" / sealed_dir_name(run_dir.name, row["run_id"])
        # The last segment says how the run ended, even when it brings no new row: the server
        # is sent its summary alone then (segments.plan_cut with send_end).
        report = _redact(ledger, cfg, sealer, row, snap, redacted, ended=ended, complete=ended, written_by=src_log)
        red_log = find_log(redacted)
        red_facts = read_facts(red_log) if red_log else None
        byte_end = red_facts.end if red_facts else 0

        def mark(db: Any, sealed: SealedBundle) -> None:
            # The markers on the volume first (the run's, for the last segment; the segment's).
            if ended:
                _record_on_volume(claims, run_dir.name, sealed)
            marker = claims.record_segment(run_dir.name, k, bundle=sealed.path.name, bundle_id=sealed.bundle_id,
                                           content_id=sealed.content_id, byte_end=byte_end, rows=rows_now)
            if marker.get("node") != claims.node:
                raise HeldElsewhere(f"live segment {k} sealed by {marker.get('node', '?')} as "
                                    f"{marker.get('bundle', '?')} first", sealed)
            f = dict(facts, live_segments=k + 1, live_rows=rows_now, live_cut_at=now, live_byte_end=byte_end)
            if ended:
                ledger.mark_run_sealed(row["key"], facts=f)
            else:
                ledger.set_run_facts(row["key"], f, last_error=None)   # a failure before is over

        _seal(ledger, cfg, sealer, row, redacted, report,
              Segment(k, facts.get("live_byte_end", facts.get("segment_start", 0)), None), mark, log_facts=red_facts)
        log.info("%s: sealed live segment %d (%d history rows%s)", row["run_id"], k, rows_now,
                 ", final" if ended else "")
        return k
    finally:
        statedir.release_work(work)


# --- the steps both share ---------------------------------------------------------------------

def _hold(claims: Claims, run: str) -> dict[str, Any] | None:
    """Hold the run on the volume, or raise ``HeldElsewhere``; where the segments already
    sealed of it end (``Claims.resume_point``), if any were."""
    if not claims.acquire(run):
        marker = claims.sealed_by(run)
        if marker:
            raise HeldElsewhere(f"sealed by {marker.get('node', '?')} as {marker.get('bundle', '?')}")
        raise HeldElsewhere(f"held by {claims.holder(run) or '?'}")
    return claims.resume_point(run)


def _redact(ledger: Ledger, cfg: config_mod.Config, sealer: Sealer, row: dict[str, Any], src: Path, redacted: Path,
            ended: bool, **how: Any) -> RedactionReport:
    """Redact ``src`` into ``redacted``; a run that has ended gets the summary keys saying how."""
    report = redact_run(src, redacted, sealer.policy, sealer.secret, cfg.map_path, **how)
    if ended:
        mark_ended(redacted, end_marker(row["ended"], row["reason"], supersedes_crash(ledger, row)))
    return report


def _seal(ledger: Ledger, cfg: config_mod.Config, sealer: Sealer, row: dict[str, Any], redacted: Path,
          report: RedactionReport, segment: int | Segment,
          on_sealed: Callable[[Any, SealedBundle], None], expect: Any = None,
          log_facts: LogFacts | None = None) -> SealedBundle:
    """Seal the redacted run into the outbox, with its log's facts (read from the redacted log
    here, on the node, so that delivery plans without folding it). ``on_sealed`` runs inside the ledger's transaction,
    after the bundle is whole in the outbox; if it finds another node's marker on the volume
    (``HeldElsewhere``), the transaction and our bundle go."""
    try:
        return seal_run(cfg, sealer.keys, ledger, redacted,
                        RunIdentity(row["run_id"], row["project"], row["entity"], row["wandb_version"]),
                        segment, report.to_dict(), run_key=row["key"], on_sealed=on_sealed, expect=expect,
                        log_facts=sealed_facts(log_facts) if log_facts is not None else None)
    except HeldElsewhere as exc:
        if exc.sealed is not None and withdraw(exc.sealed, sealer.keys.signer.public()):
            log.info("%s: withdrew %s: %s", row["run_id"], exc.sealed.path.name, exc)
        raise


def _record_on_volume(claims: Claims, run: str, sealed: SealedBundle) -> None:
    marker = claims.record_sealed(run, bundle=sealed.path.name, bundle_id=sealed.bundle_id,
                                  content_id=sealed.content_id)
    if marker.get("node") != claims.node:
        raise HeldElsewhere(f"sealed by {marker.get('node', '?')} as {marker.get('bundle', '?')} first", sealed)


def supersedes_crash(ledger: Ledger, row: dict[str, Any]) -> bool:
    """Whether an earlier segment of this run may have told the server "crashed": its ending
    was revised (a pause taken for a crash), or it is a later part of a run (a killed job
    resumed with the same id writes a new run directory)."""
    if (row.get("facts") or {}).get("revisions"):
        return True
    return bool(row["run_id"]) and ledger.part_number(row["run_id"], row["key"]) > 0


def mark_ended(run_dir: Path, marker: dict[str, str] | None) -> None:
    """Append the summary keys ``marker`` (``segments.end_marker``) to a (redacted) run's log,
    after its last whole record. Written after an exit record they still arrive: delivery
    moves the exit record last (``segments.Cut.exit_last``)."""
    # Lazy: importing wandb costs about a second; the CLI modules that import this one stay fast.
    from wandb.proto import wandb_internal_pb2 as pb

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
        os.fsync(f.fileno())  # an append in place, not durable.replacing: a torn append is cut by the next reader
