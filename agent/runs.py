"""Runs on the shared volume: finding them, reading what they hold, deciding how they ended.

``discover`` walks the roots without following symlinks. ``inspect`` reads a run's `.wandb`
file from a saved offset and folds the new records (``runlog``, the one reader) into the run's
facts. ``classify`` is a pure function from those facts and the clock to a state.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from . import runlog
from .runlog import locate_log
from .wandb_log import FILE_HEADER_LEN, CorruptLog, NotAWandbLog

RUN_DIR_PREFIX = "offline-run-"
AGENT_DIR = ".tfwb-agent"


def discover(root: Path) -> Iterator[Path]:
    """Yield every ``offline-run-*`` directory under ``root``, at any depth, once.

    Symlinks are never followed (the corpus's ``latest-run`` link would double a run, and a
    link may point outside the volume). Run directories are not descended into.
    """
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # vanished or unreadable: the next reconcile sees it again
        with it:
            for entry in it:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if entry.name.startswith(RUN_DIR_PREFIX):
                    yield Path(entry.path)
                elif entry.name != AGENT_DIR:
                    stack.append(Path(entry.path))


def run_dir_of(path: Path, roots: tuple[Path, ...]) -> Path | None:
    """The run directory that ``path`` (a file or directory event) belongs to, if any."""
    if AGENT_DIR in path.parts:
        return None  # the agents' own claims, named after runs
    for parent in (path, *path.parents):
        if parent.name.startswith(RUN_DIR_PREFIX):
            return parent
        if parent in roots:
            return None
    return None


@dataclass
class RunFacts:
    """What the agent has learnt from a run's `.wandb` file so far (kept in the ledger)."""

    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    wandb_version: str | None = None
    log_path: str | None = None
    read_offset: int = 0
    size: int = 0
    mtime: float = 0.0
    records: int = 0
    steps: int = 0
    exit_code: int | None = None
    torn_at: int | None = None
    torn_reason: str | None = None
    error: str | None = None  # the file cannot be read as a run (with why)
    has_run_record: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # artifact paths, sensitive keys, revisions
    activity: float = 0.0  # the newest write to wandb's other files in the run directory (not kept)

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


# Files a live wandb process may write while its `.wandb` log stands still (wandb 0.31 writes
# the log in 32 KiB blocks): its console capture and its internal logs.
ACTIVITY_FILES = ("files/output.log", "logs/debug-internal.log", "logs/debug-core.log", "logs/debug.log")


def activity(run_dir: Path) -> float:
    """The newest mtime among ``ACTIVITY_FILES`` (0.0 if none): a sign of life besides the log."""
    newest = 0.0
    for name in ACTIVITY_FILES:
        try:
            st = os.stat(run_dir / name, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            newest = max(newest, st.st_mtime)
    return newest


def inspect(run_dir: Path, before: RunFacts | None = None) -> RunFacts:
    """Read what is new in the run's `.wandb` file since ``before`` and return updated facts.

    Never raises for a bad run: the problem goes into ``facts.error``.
    """
    before = replace(before or RunFacts(), activity=activity(run_dir))
    facts = _copy(before)
    try:
        log = locate_log(run_dir)
    except FileNotFoundError:
        log = None
    except OSError as exc:  # unreadable: say so, not "no .wandb file"
        facts.error = _os_reason(exc, run_dir)
        facts.log_path = None
        try:
            facts.mtime = run_dir.lstat().st_mtime
        except OSError:
            pass
        return facts
    if log is None:
        facts.error = "no run-*.wandb file in the run directory"
        try:
            facts.mtime = run_dir.lstat().st_mtime
        except OSError:
            pass
        return facts
    if facts.log_path and facts.log_path != str(log):
        facts = before = RunFacts()  # a different file: start over
    facts.log_path = str(log)

    def failed(reason: str) -> RunFacts:
        # Keep only what was learnt before this read, so a later read never counts twice.
        runlog.forget(log)
        out = _copy(before)
        out.log_path, out.error = str(log), reason
        return out

    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return failed(_os_reason(exc, log))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return failed(f"{log.name} is not a regular file")
        if (st.st_size, st.st_mtime) == (before.size, before.mtime) and before.read_offset and not before.error:
            return facts  # nothing new
        facts.error = None
        facts.mtime, facts.size = st.st_mtime, st.st_size
        if st.st_size < FILE_HEADER_LEN:
            facts.torn_at, facts.torn_reason = 0, "shorter than the .wandb header"
            return facts
        if facts.read_offset > st.st_size:
            return failed(f"{log.name} shrank from {facts.read_offset} to {st.st_size} bytes; it was rewritten")
        # The fold this process made of the log so far, or one that goes on from the saved facts.
        # (Its history values are not learnt: they serve delivery, which reads the redacted log.)
        fold = runlog.cached(log, facts.read_offset) if facts.read_offset else runlog.Fold(values=False)
        try:
            fold = runlog.feed(f, fold or _seed(facts))
        except NotAWandbLog as exc:
            return failed(f"not a wandb run log: {exc}")
        except CorruptLog as exc:
            return failed(f"corrupt .wandb file: {exc}")
        except OSError as exc:
            return failed(_os_reason(exc, log))
    runlog.remember(log, fold)
    _project(fold, facts)
    return facts


def _seed(facts: RunFacts) -> runlog.Fold:
    """A fold that goes on from saved facts (the ledger's, after a restart): the small facts of
    what was read before; its plan and segment facts cover only what it reads from here."""
    return runlog.Fold(start=facts.read_offset, end=facts.read_offset, values=False, records=facts.records,
                       rows=facts.steps,
                       run_id=facts.run_id, project=facts.project, entity=facts.entity,
                       wandb_version=facts.wandb_version, has_run_record=facts.has_run_record,
                       exit_code=facts.exit_code, sensitive=list(facts.extra.get("sensitive", [])),
                       artifact_files=list(facts.extra.get("artifact_files", [])))


def _project(fold: runlog.Fold, facts: RunFacts) -> None:
    """The run's facts, as the ledger keeps them, from the fold."""
    facts.records, facts.steps = fold.records, fold.rows
    facts.run_id, facts.project, facts.entity = fold.run_id, fold.project, fold.entity
    facts.wandb_version, facts.has_run_record, facts.exit_code = fold.wandb_version, fold.has_run_record, fold.exit_code
    if fold.sensitive:
        facts.extra["sensitive"] = list(fold.sensitive)
    if fold.artifact_files:
        facts.extra["artifact_files"] = list(fold.artifact_files)
    facts.read_offset = fold.end
    facts.torn_at, facts.torn_reason = fold.torn_at, fold.torn_reason


def _copy(facts: RunFacts) -> RunFacts:
    return replace(facts, extra={k: list(v) if isinstance(v, list) else v for k, v in facts.extra.items()})


def _os_reason(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {path.name}: permission denied (give the agent's user read access)"
    if exc.errno == errno.ELOOP:
        return f"{path.name} is a symlink; the agent never follows links out of a run"
    return f"cannot read {path.name}: {exc.strerror}"


@dataclass(frozen=True)
class Verdict:
    ended: str | None  # finished | crashed | None (live or invalid)
    state: str  # live | ended | invalid
    reason: str | None = None
    recheck_at: float | None = None  # when a live run's quiet period runs out


def classify(facts: RunFacts, now: float, quiet_seconds: float) -> Verdict:
    """How a run stands, from what was read and how long the run has been still.

    "Crashed" without an exit record is a provisional verdict: the run is still watched, and
    should its log grow again the ending is revised (``facts.extra["revisions"]``, noted in the
    reason). Still means: neither the log nor wandb's other files (``ACTIVITY_FILES``) changed
    for ``quiet_seconds``."""
    v = _classify(facts, now, quiet_seconds)
    revisions = facts.extra.get("revisions") or []
    if not revisions or v.state == "invalid":
        return v
    note = revision_note(revisions)
    return replace(v, reason=f"{v.reason}; {note}" if v.reason else note)


def revision_note(revisions: list[dict[str, Any]]) -> str:
    """In words, for `status`: how the run's ending was revised."""
    last = revisions[-1]
    times = "" if len(revisions) == 1 else f" ({len(revisions)} times)"
    return (f"ending revised{times}: taken for crashed ({last.get('was_reason') or 'no exit record'}), "
            f"then its log grew again" + (f"; the growth goes as segment {last['segment']}"
                                          if last.get("segment") is not None else ""))


def revised(prev_ended: str | None, before: RunFacts, after: RunFacts) -> bool:
    """Pure: a run taken for crashed that has written again (more whole records, or an exit)."""
    return prev_ended == "crashed" and not after.error and (
        after.records > before.records or (after.exit_code is not None and before.exit_code is None))


def _classify(facts: RunFacts, now: float, quiet_seconds: float) -> Verdict:
    quiet_until = max(facts.mtime, facts.activity) + quiet_seconds
    quiet = now >= quiet_until
    if facts.error:
        # A missing `.wandb` file in a fresh directory is a run that is just starting.
        if facts.log_path is None and not quiet:
            return Verdict(None, "live", "waiting for the .wandb file", quiet_until)
        return Verdict(None, "invalid", facts.error)
    if facts.finished:
        return Verdict("finished", "ended", None if facts.exit_code == 0 else f"exit code {facts.exit_code}")
    if not quiet:
        return Verdict(None, "live", None, quiet_until)
    if not facts.has_run_record:
        what = "only the file header" if facts.records == 0 else "no run record"
        return Verdict(None, "invalid", f"not a run: the .wandb file holds {what} and stopped growing")
    if facts.torn_at is not None:
        return Verdict("crashed", "ended", f"no exit record; torn tail cut at byte {facts.torn_at} "
                       f"({facts.torn_reason})")
    return Verdict("crashed", "ended", f"no exit record, no growth for {quiet_seconds:g}s")


def staging_report(facts: RunFacts, map_path: Callable[[str], Path]) -> dict[str, list[str]]:
    """The artifact staging files a run names, found through ``path_map``, and the missing ones."""
    found, missing = [], []
    for p in facts.extra.get("artifact_files", []):
        host = map_path(p)
        (found if host.is_file() else missing).append(str(host))
    return {"found": found, "missing": missing}
