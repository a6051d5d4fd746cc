"""One look at a run: claim it, read what is new, classify it, record it in the ledger.

Used by ``tfwb-agent scan`` (every run once) and by the daemon (runs named by filesystem
events, plus the periodic full pass). Whatever goes wrong with one run is recorded on that run;
the pass goes on.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import ids, runs
from .claims import Claims
from .config import Config
from .ledger import Ledger

log = logging.getLogger("tfwb_agent.reconcile")

# Pipeline states past classification: the watcher never moves a run back out of them.
DOWNSTREAM = {"sealed", "exported", "delivered", "quarantined"}


@dataclass
class PassResult:
    seen: int = 0
    changed: list[str] = field(default_factory=list)
    claimed_elsewhere: int = 0
    seen_keys: set[str] = field(default_factory=set)
    rechecks: dict[Path, float] = field(default_factory=dict)  # live runs: when their quiet period ends


def facts_from_row(row: dict[str, Any]) -> runs.RunFacts:
    facts = dict(row["facts"])
    return runs.RunFacts(
        run_id=row["run_id"], project=row["project"], entity=row["entity"],
        wandb_version=row["wandb_version"], log_path=row["log_path"],
        read_offset=row["read_offset"], size=row["size"], mtime=row["mtime"] or 0.0,
        records=row["records"], steps=row["steps"], exit_code=row["exit_code"],
        torn_at=row["torn_at"], torn_reason=facts.pop("torn_reason", None),
        error=facts.pop("error", None), has_run_record=facts.pop("has_run_record", False), extra=facts,
    )


def row_from(key: str, f: runs.RunFacts, v: runs.Verdict, cfg: Config, prev: dict[str, Any] | None) -> dict[str, Any]:
    facts = dict(f.extra, has_run_record=f.has_run_record)
    if f.torn_reason:
        facts["torn_reason"] = f.torn_reason
    if f.error:
        facts["error"] = f.error
    if "artifact_files" in f.extra:
        facts["staging"] = runs.staging_report(f, cfg.map_path)
    row = {
        "key": key, "run_id": f.run_id, "project": f.project, "entity": f.entity,
        "wandb_version": (f.wandb_version or "").split("+")[0] or None, "log_path": f.log_path,
        "state": v.state, "ended": v.ended, "reason": v.reason,
        "read_offset": f.read_offset, "size": f.size, "steps": f.steps, "records": f.records,
        "exit_code": f.exit_code, "torn_at": f.torn_at, "facts": facts, "mtime": f.mtime,
        "last_error": v.reason if v.state == "invalid" else (prev or {}).get("last_error"),
    }
    if prev:
        row["first_seen"] = prev["first_seen"]
    return row


class ClaimBook:
    """The claims this agent holds, one ``Claims`` per claims directory, kept across passes."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.books: dict[Path, Claims] = {}

    def for_root(self, root: Path) -> Claims:
        d = self.cfg.claims_dir_for(root)
        if d not in self.books:
            self.books[d] = Claims(d, self.cfg.node_name, self.cfg.watch.lease_seconds)
        return self.books[d]

    def for_run(self, run_dir: Path) -> Claims:
        return self.for_root(_root_of(run_dir, self.cfg))

    def heartbeat(self, now: float | None = None) -> None:
        for c in self.books.values():
            c.heartbeat(now)


# States in which a run changes only if its file does: a full pass skips them after one stat.
SETTLED = {"ended", "invalid"}
# Sealed as crashed for want of an exit record, a run's ending is provisional: it may have been
# only quiet. Its log is still watched, and growth revises the ending (``_revise``).
REVISABLE = {"sealed", "exported", "delivered"}


def provisional(state: str | None, ended: str | None) -> bool:
    return ended == "crashed" and state in REVISABLE


def _unchanged(log_path: str | None, size: int, mtime: float | None) -> bool:
    if not log_path:
        return False
    try:
        st = os.stat(log_path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_size, st.st_mtime) == (size, mtime)


def _settled_and_unchanged(light: tuple | None) -> bool:
    """A run already classified whose log has the same size and mtime as last time."""
    if light is None:
        return False
    state, size, mtime, log_path, ended = light
    if state in DOWNSTREAM and not provisional(state, ended):
        return True
    if state not in SETTLED and not provisional(state, ended):
        return False
    return _unchanged(log_path, size, mtime)


def look(ledger: Ledger, cfg: Config, run_dir: Path, root: Path, book: ClaimBook,
         now: float | None = None, light: tuple | None = None) -> tuple[bool, float | None] | None:
    """Examine one run directory. Returns (changed, recheck_at), or None if another agent holds it.

    ``light``: what a full pass already knows of the run (state, size, mtime, log path); an
    unchanged, settled run then costs one stat, not a read of its log and its ledger row."""
    now = time.time() if now is None else now
    key = str(run_dir)
    if ids.why_not(run_dir.name):  # no claim file can be named after it: recorded, never handled
        return _odd_name(ledger, key, run_dir, light), None
    if _settled_and_unchanged(light) and (light[0] in DOWNSTREAM or book.for_root(root).acquire(run_dir.name, now)):
        return False, None
    prev = ledger.run(key)
    if prev and prev["state"] in DOWNSTREAM and (
            not provisional(prev["state"], prev["ended"]) or _unchanged(prev["log_path"], prev["size"], prev["mtime"])):
        return False, None  # ours, and past the watcher's part
    if not book.for_root(root).acquire(run_dir.name, now):
        if prev:  # ours once; another node holds it now (took it over, or sealed it)
            ledger.drop_run(key)
        return None
    before = facts_from_row(prev) if prev else None
    revision = None
    try:
        facts = runs.inspect(run_dir, before)
    except Exception as exc:  # the daemon survives bad input: record it on the run, go on
        log.exception("reading %s failed", run_dir)
        facts = before or runs.RunFacts()
        facts.error = f"internal error while reading: {type(exc).__name__}: {exc}"
    if prev and provisional(prev["state"], prev["ended"]):
        if not runs.revised(prev["ended"], before, facts):
            # Touched, nothing new: remember the file as it is, keep the sealed ending.
            ledger.note_file(key, facts.size, facts.mtime)
            return False, None
        revision = _revise(ledger, prev, facts, now)
    verdict = runs.classify(facts, now, cfg.watch.quiet_seconds)
    row = row_from(key, facts, verdict, cfg, prev)
    changed = prev is None or any(prev.get(k) != row[k] for k in ("state", "ended", "reason", "size", "steps"))
    if changed or revision or (prev and prev.get("mtime") != row["mtime"]):
        ledger.record_run(row, audit=revision)
    if changed:
        log.info("%s: %s%s%s", run_dir.name, verdict.state, f" ({verdict.ended})" if verdict.ended else "",
                 f": {verdict.reason}" if verdict.reason else "")
    return changed, verdict.recheck_at


def _revise(ledger: Ledger, prev: dict[str, Any], facts: runs.RunFacts, now: float) -> dict[str, Any]:
    """A run sealed as crashed has written again: it was only quiet. Note the revision in its
    facts (``status`` shows it in the reason) and where its sealed segments end, so that the
    growth is sealed as the next segment. Returns the audit log's line for it (the ledger
    writes it with the run's new state)."""
    top, end = ledger.sealed_extent(prev["run_id"], prev["key"])
    segment = 0 if top is None else int(top) + 1
    was_reason = (prev["reason"] or "").split("; ending revised")[0] or None
    entry = {"at": now, "was": prev["ended"], "was_state": prev["state"], "was_reason": was_reason,
             "rows_sealed": prev["steps"], "segment": segment}
    facts.extra["revisions"] = [*facts.extra.get("revisions", []), entry]
    facts.extra["next_segment"], facts.extra["segment_start"] = segment, int(end or prev["read_offset"] or 0)
    event = {"kind": "ending_revised", "run_id": prev["run_id"], "run_dir": prev["key"], "was": prev["ended"],
             "was_reason": was_reason, "was_state": prev["state"], "rows_sealed": prev["steps"],
             "rows_now": facts.steps, "next_segment": segment}
    log.warning("%s: was taken for crashed (%s) and sealed, but its log grew again (%d -> %d history rows): "
                "the ending is revised, the growth goes as segment %d", Path(prev["key"]).name,
                was_reason or "no exit record", prev["steps"], facts.steps, segment)
    return event


def _odd_name(ledger: Ledger, key: str, run_dir: Path, light: tuple | None) -> bool:
    reason = f"{ids.BadId('run directory', run_dir.name, ids.why_not(run_dir.name) or '')}; the agent leaves it alone"
    state = light[0] if light is not None else (ledger.run(key) or {}).get("state")
    if state == "invalid":
        return False
    ledger.record_run({"key": key, "state": "invalid", "reason": reason, "last_error": reason})
    log.warning("%s", reason)
    return True


def reconcile(ledger: Ledger, cfg: Config, only: Iterable[Path] | None = None, now: float | None = None,
              book: ClaimBook | None = None) -> PassResult:
    """Look at every run under the roots (or just ``only``) once."""
    book = book or ClaimBook(cfg)
    result = PassResult()
    known: dict[str, tuple] = {}
    if only is None:  # one query for the whole pass instead of one per run
        known = ledger.run_glance()
    targets: Iterable[tuple[Path, Path]]
    if only is None:
        targets = ((d, root) for root in cfg.watch.roots for d in runs.discover(root))
    else:
        targets = ((d, _root_of(d, cfg)) for d in only)
    batch = iter(targets)
    while True:
        # Commit in batches: one fsync per batch instead of per run on a large first pass.
        with ledger.tx():
            chunk = 0
            for run_dir, root in batch:
                _look_into(result, ledger, cfg, run_dir, root, book, now, known.get(str(run_dir)))
                chunk += 1
                if chunk == BATCH:
                    break
        if chunk < BATCH:
            break
    if only is None:
        _mark_vanished(ledger, known, result.seen_keys)
    return result


BATCH = 200


def _look_into(result: PassResult, ledger: Ledger, cfg: Config, run_dir: Path, root: Path, book: ClaimBook,
               now: float | None, light: tuple | None = None) -> None:
    result.seen += 1
    result.seen_keys.add(str(run_dir))
    outcome = look(ledger, cfg, run_dir, root, book, now, light)
    if outcome is None:
        result.claimed_elsewhere += 1
        return
    changed, recheck = outcome
    if changed:
        result.changed.append(str(run_dir))
    if recheck is not None:
        result.rechecks[run_dir] = recheck


def _root_of(run_dir: Path, cfg: Config) -> Path:
    for root in cfg.watch.roots:
        if run_dir.is_relative_to(root):
            return root
    return run_dir.parent


def _mark_vanished(ledger: Ledger, known: dict[str, tuple], seen: set[str]) -> None:
    """A run directory deleted before it was sealed is marked, not silently dropped."""
    reason = "the run directory disappeared before it was sealed"
    for key, (state, *_rest) in known.items():
        if key not in seen and state not in DOWNSTREAM and state != "invalid" and not Path(key).is_dir():
            ledger.mark_invalid(key, reason)
