"""Redact one run directory into a complete, syncable copy: the guarded entry points.

The plan comes from the one fold of the `.wandb` file (``plan.py``). Then one pass rewrites
the records (``records.py``: what is not understood does not leave), the media files they name
decided and written first (``media_files.py``: many placeholders made by the hashing helper
process on the other core, files created by the background writer), so every reference gets
the same new name. Then ``files/`` is walked for what no record named (``files_copy.py``).
``logs/`` and debug logs are never copied. The source is only read; files are copied block by
block, so memory does not grow with their size. The state of one redaction is a
``redaction.Redaction``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from wandb.proto import wandb_internal_pb2 as pb

from .. import durable, ids, runlog
from ..runlog import find_log
from ..wandb_log import LogError, LogReader, LogWriter, parse_record
from .background_writer import BackgroundWriter
from .errors import RedactError
from .files_copy import copy_files_dir
from .plan import PlanOutdated, apply_plan, changes_plan
from .policy import Policy
from .console_records import Console
from .files_records import rewrite_bytes
from .records import STAGING, rewrite
from .redaction import Redaction
from .report import RedactionReport

__all__ = ["RedactError", "plan_run", "redact_run", "relocate_staging"]


def _find_log(src: Path) -> Path:
    log = find_log(src)  # the one rule for which file is a run's log
    if log is None:
        raise RedactError(f"{src}: no run-*.wandb file (a regular file) in the run directory")
    return log


def _payloads(path: Path, report: RedactionReport):
    """``(offset, bytes)`` of the log's whole records; notes a torn tail in ``report``."""
    with open(path, "rb") as f:
        reader = LogReader(f)
        yield from reader
        report.torn_tail = reader.tail is not None and reader.tail.torn_at is not None


def _records(path: Path, report: RedactionReport):
    """``(offset, record)`` of the log's whole records; notes a torn tail in ``report``."""
    for offset, payload in _payloads(path, report):
        yield offset, parse_record(payload, offset, pb)


def _redact(src: Path, dst: Path | None, policy: Policy, secret: bytes,
            map_path: Callable[[str], Path], complete: bool, fold: runlog.Fold | None,
            written_by: Path | None = None) -> RedactionReport:
    src = Path(src)
    log = _find_log(src)
    if fold is None or not fold.whole or fold.file_id != _file_id(log):
        fold = runlog.read(log, runlog.Fold(values=False))
    r = Redaction(src, dst, policy, secret, map_path)
    apply_plan(r, fold, written_by or log)
    # The copy's log is named after the run's id as its run record says (the id the routing
    # rules check), not after the file's own name, which anyone may have given it
    # (``run-P7126.wandb``); with no usable id, its name scrubbed as a file name.
    run_id = fold.run_id if fold.run_id and ids.why_not(fold.run_id) is None \
        else r.out.name(log.stem.removeprefix("run-"), "file_names")
    r.report.run_id = run_id if ids.why_not(run_id) is None else "unnamed"
    writer, out = None, None
    if dst is not None:
        dst.mkdir(parents=True, exist_ok=True)
        if any(dst.iterdir()):
            raise RedactError(f"{dst}: the destination is not empty")
        out = open(dst / f"run-{r.report.run_id}.wandb", "wb")
        writer = LogWriter(out)
        r.writer = BackgroundWriter()
    console = Console(r)
    finished = False        # the log's exit record seen

    def release_console(ended: bool) -> None:
        for o in console.close(ended):
            r.out.message(o, "console")
            r.report.records_out += 1
            if writer is not None:
                writer.write(o)

    try:
        r.media.prepare()
        for offset, payload in _payloads(log, r.report):
            # Most records of a big run are files records of one shape, rewritten from their
            # bytes into the bytes the generic path gives (files_records); the rest are parsed.
            fast = rewrite_bytes(r, payload)
            if fast is not False:
                r.report.records_in += 1
                if fast is not None:
                    r.report.records_out += 1
                    if writer is not None:
                        writer.write(fast)
                continue
            rec = parse_record(payload, offset, pb)
            if offset >= fold.end and changes_plan(rec, fold):
                raise PlanOutdated(f"{log.name} grew past byte {fold.end} with a record that changes the plan")
            if rec.HasField("exit") and not finished:
                finished = True
                # Console text still held (a last line waiting for one that never came) goes
                # before the run's end: wandb sync sends no console after it.
                release_console(True)
            r.report.records_in += 1
            for o in rewrite(r, rec, console):
                r.report.records_out += 1
                if writer is not None:
                    writer.write(o)
        # Console text still held (a line without its end) leaves only with the whole log: a
        # live snapshot keeps it for the next segment, so each segment's copy is a prefix of
        # the next one's.
        if complete:
            release_console(finished)
        r.media.finish_helper()
        copy_files_dir(r, complete)
    finally:
        r.media.kill_helper()
        if out is not None:
            out.close()
        if r.writer is not None:
            r.writer.close()     # every file is on disk (or its error raised) before we return
    # What is not copied is counted by name (the name as the scrubber leaves it: a directory of
    # the user's own, named after a patient, is counted under its scrubbed name).
    for p in sorted(src.iterdir()):
        if p.name not in ("files", log.name):
            r.report.dropped_paths[r.out.name(p.name, "file_names") if p.is_dir() else "other files"] += 1
    return r.report


def _file_id(p: Path) -> tuple[int, int]:
    st = os.stat(p, follow_symlinks=False)
    return st.st_dev, st.st_ino


def _empty(d: Path) -> None:
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _guarded(src: Path, dst: Path | None, policy: Policy, secret: bytes,
             map_path: Callable[[str], Path], complete: bool = True,
             fold: runlog.Fold | None = None, written_by: Path | None = None) -> RedactionReport:
    # A damaged log or an unparsable record is this run's problem, not the agent's: say so in
    # the one exception type callers quarantine on.
    try:
        try:
            return _redact(src, dst, policy, secret, map_path, complete, fold, written_by)
        except PlanOutdated:
            # The log grew since it was folded (a run taken for ended wrote again): plan anew
            # from the whole log, into an emptied destination. Twice: it is still being written.
            if dst is not None:
                _empty(dst)
            try:
                return _redact(src, dst, policy, secret, map_path, complete, None, written_by)
            except PlanOutdated as exc:
                raise RedactError(f"{src}: the .wandb file is still being written ({exc}); "
                                  "redact a run once it has ended, or a snapshot of it") from None
    except LogError as exc:
        raise RedactError(f"{src}: cannot read the .wandb file: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise RedactError(f"{src}: malformed content: {exc}") from exc
def redact_run(src_run_dir: Path, dst_dir: Path, policy: Policy, secret: bytes,
               map_path: Callable[[str], Path], complete: bool = True,
               fold: runlog.Fold | None = None, written_by: Path | None = None) -> RedactionReport:
    """Write a redacted copy of ``src_run_dir`` into ``dst_dir`` (created; must be empty).

    ``dst_dir`` becomes a run directory: give it a name wandb sync recognises
    (``offline-run-...``; ``redact_run(src, out / src.name, ...)``). Run-table artifacts'
    files are copied into ``dst_dir/_staging`` and the records point there by absolute path;
    call ``relocate_staging`` after moving the directory.

    ``complete=False`` for a snapshot of a run still being written (a live segment): console
    text whose line has not ended yet is kept back for the next snapshot, and so is the last
    line of each text file it copies (``output.log``'s may be unfinished).

    ``fold``: the fold of the whole log the caller made already (``runlog.cached``: the
    classification's); the plan comes from it, and the log is read once, to be rewritten.
    Without it, the log is folded here first (one more pass).

    ``written_by``: the file whose owner is the user who wrote the run (by default its log; for
    a snapshot the agent made, the log on the volume): that user's name is taken out."""
    return _guarded(Path(src_run_dir), Path(dst_dir), policy, secret, map_path, complete, fold, written_by)


def plan_run(src_run_dir: Path, policy: Policy, secret: bytes,
             map_path: Callable[[str], Path]) -> RedactionReport:
    """What ``redact_run`` would do, computed the same way, with nothing written."""
    return _guarded(Path(src_run_dir), None, policy, secret, map_path)


def relocate_staging(run_dir: Path) -> int:
    """Point artifact records at ``run_dir/_staging`` after the run directory moved (e.g. out
    of a bundle on the gateway). Rewrites the `.wandb` file; returns entries repointed."""
    run_dir = Path(run_dir).resolve()
    log = _find_log(run_dir)
    n = 0
    with durable.replacing(log, mode=0o600) as f:  # a decrypted run: its owner's alone
        w = LogWriter(f)
        for _, rec in _records(log, RedactionReport()):
            if rec.WhichOneof("record_type") == "artifact":
                for e in rec.artifact.manifest.contents:
                    i = e.local_path.find(f"/{STAGING}/")
                    if i >= 0:
                        e.local_path = str(run_dir) + e.local_path[i:]
                        n += 1
            w.write(rec)
    return n
