"""Segments of a run's `.wandb` log: what a log holds, and the part of it still to send.

A server that already holds the first ``H`` history rows of a run gets only the rest: a new
`.wandb` file with the file header, the run's header and run records (the run record marked
``resumed``), then only the records after the ``H``-th history record. Stock ``wandb sync`` of
such a file appends to the run on the server, so every step arrives once (DESIGN.md,
"Segments of a live run"). The same cut serves a live run's next segment and a delivery that
a crash or a dying server interrupted halfway.

Reading is streaming (one record at a time, ``runlog``'s one fold); the decisions are plain
functions over the facts.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runlog
from .wandb_log import FILE_HEADER_LEN, LogReader, LogWriter, parse_record


@dataclass
class LogFacts:
    """What a `.wandb` log carries, as far as delivery cares."""
    size: int = 0
    end: int = FILE_HEADER_LEN          # after the last whole record
    torn: bool = False
    history_rows: int = 0
    history_ends: list[int] = field(default_factory=list)  # offset just after each history record
    first_step: int | None = None
    last_step: int | None = None
    history_keys: set[str] = field(default_factory=set)    # numeric keys seen in history
    metric_values: int = 0              # numeric (key, step) values in history: rows a server stores
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary as wandb computes it
    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    exit_code: int | None = None        # None: no exit record (still live, or crashed)
    data_after_exit: bool = False       # history or summary written after the exit record
    ends_known: bool = True             # False: from sealed facts, ``history_ends`` holds the last end only

    def rows_before(self, offset: int) -> int:
        """History rows whose records lie wholly before ``offset``."""
        return bisect.bisect_right(self.history_ends, offset)


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_facts(log: Path, limit: int | None = None) -> LogFacts:
    """The log's segment facts, from one fold of its whole records (up to byte ``limit``)."""
    fold = runlog.read(log, runlog.Fold(media=False), limit=limit)
    return LogFacts(size=fold.size, end=fold.end, torn=fold.torn_at is not None, history_rows=len(fold.history_ends),
                    history_ends=fold.history_ends, first_step=fold.first_step, last_step=fold.last_step,
                    history_keys=fold.history_keys, metric_values=fold.metric_values,
                    # Only the summary's last values are decoded, once: decoding every value of
                    # every row was most of the time reading a log took.
                    summary={k: _loads(raw) for k, raw in fold.last_raw.items()},
                    run_id=fold.run_id, project=fold.project, entity=fold.entity, exit_code=fold.exit_code,
                    data_after_exit=fold.data_after_exit)


SEALED_FACTS_VERSION = 1
ENDS_KEPT_MAX = 100_000  # history rows up to which every row's offset is kept (as differences: ~4 bytes a row)


def sealed_facts(facts: LogFacts) -> dict[str, Any]:
    """Pure: what delivery needs to know of a log before it sends it, as plain data kept in the
    bundle's manifest at sealing (``facts_from_sealed``): it plans from these without folding
    the log again. Each history row's offset (where a cut after part of the rows starts) only
    up to ``ENDS_KEPT_MAX`` rows: a longer log is read for such a cut (``LogFacts.ends_known``)."""
    ends = facts.history_ends
    kept = {"history_ends_diff": [b - a for a, b in zip([0, *ends], ends)]} if len(ends) <= ENDS_KEPT_MAX else {}
    return {**kept, "version": SEALED_FACTS_VERSION, "size": facts.size, "end": facts.end, "torn": facts.torn,
            "history_rows": facts.history_rows, "last_history_end": facts.history_ends[-1] if facts.history_ends else None,
            "first_step": facts.first_step, "last_step": facts.last_step, "metric_values": facts.metric_values,
            "summary": facts.summary, "run_id": facts.run_id, "project": facts.project, "entity": facts.entity,
            "exit_code": facts.exit_code, "data_after_exit": facts.data_after_exit}


def _int(v: Any, none: bool = False) -> bool:
    return (v is None and none) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def facts_from_sealed(d: Any, log_size: int) -> LogFacts | None:
    """Pure: the facts ``sealed_facts`` kept, for a log now ``log_size`` bytes long; None when
    they are missing (an older agent sealed it), malformed, or not of this log's size: then
    the log is read (``read_facts``)."""
    if not isinstance(d, dict) or d.get("version") != SEALED_FACTS_VERSION or d.get("size") != log_size:
        return None
    rows, last = d.get("history_rows"), d.get("last_history_end")
    if not (_int(rows) and _int(d.get("end")) and _int(d.get("metric_values")) and _int(last, none=True)
            and _int(d.get("first_step"), none=True) and _int(d.get("last_step"), none=True)
            and (last is None) == (rows == 0) and isinstance(d.get("summary"), dict)
            and isinstance(d.get("torn"), bool) and isinstance(d.get("data_after_exit"), bool)
            and (d.get("exit_code") is None or isinstance(d.get("exit_code"), int))
            and all(d.get(k) is None or isinstance(d.get(k), str) for k in ("run_id", "project", "entity"))):
        return None
    ends = _ends(d.get("history_ends_diff"), rows, last)
    return LogFacts(size=log_size, end=d["end"], torn=d["torn"], history_rows=rows,
                    history_ends=ends or ([] if last is None else [last]), first_step=d["first_step"],
                    last_step=d["last_step"], metric_values=d["metric_values"], summary=d["summary"],
                    run_id=d["run_id"], project=d["project"], entity=d["entity"], exit_code=d["exit_code"],
                    data_after_exit=d["data_after_exit"], ends_known=ends is not None)


def _ends(diffs: Any, rows: int, last: int | None) -> list[int] | None:
    """Each history row's end offset from their kept differences; None if not kept or not
    consistent with the row count and the last row's end."""
    # ``type(x) is int`` (not ``_int``, which a row's worth of calls made most of this cost): a
    # bool is not an int here either.
    if not isinstance(diffs, list) or len(diffs) != rows or not all(type(x) is int for x in diffs) \
            or (diffs and min(diffs) <= 0):
        return None
    ends = list(itertools.accumulate(diffs))
    return ends if (ends[-1] if ends else None) == last else None


def comparable_summary(summary: dict[str, Any]) -> dict[str, float]:
    """The part of a summary every W&B-compatible server keeps as is: numeric top-level values
    of keys that are not wandb-internal (``_step``, ``_runtime`` ...)."""
    return {k: float(v) for k, v in summary.items() if not k.startswith("_") and _numeric(v)}


END_KEY, END_REASON_KEY = "tfwb/ended", "tfwb/ended_reason"


def end_marker(ended: str | None, reason: str | None, supersedes_crash: bool) -> dict[str, str] | None:
    """Pure: the summary keys that tell the server how a run ended, or None (a plain finished
    run carries none). A crashed run says so with its reason. A run that finishes after an
    earlier segment said "crashed" (a pause taken for a crash, a killed job resumed) says
    "finished" and empties the reason: servers merge summaries across resumed uploads
    (OpenWandb) or keep the last one sent (W&B), and either way the last word stands."""
    if ended == "crashed":
        return {END_KEY: "crashed", END_REASON_KEY: reason or "no exit record"}
    if ended == "finished" and supersedes_crash:
        return {END_KEY: "finished", END_REASON_KEY: ""}
    return None


@dataclass(frozen=True)
class Cut:
    """What to send: records of ``log`` from ``start`` to ``end``; with ``resumed``, after the
    header and run records (the run record marked resumed)."""
    start: int
    end: int
    resumed: bool
    rows: int  # history rows this cut carries
    exit_last: bool = False  # move the exit record after the data that follows it
    sweep_id: str = ""  # set in the run record: the W&B sweep the run attaches to (deliver/sweeps.py)


def plan_cut(facts: LogFacts, server_rows: int, send_end: bool = False) -> Cut | None:
    """The records to send so that a server holding ``server_rows`` history rows of this run
    ends holding every row of ``facts`` once. None: it already holds them all.

    ``send_end``: the server holds every row but not how the run ended (its summary lacks the
    log's ``tfwb/ended``, or the run is not there at all): send the records after the last
    history row alone (the summary, the end marker, the exit record), with no row."""
    if server_rows >= facts.history_rows:
        if not send_end:
            return None
        if facts.history_rows == 0:
            return Cut(FILE_HEADER_LEN, facts.end, False, 0, facts.data_after_exit)
        return Cut(facts.history_ends[-1], facts.end, True, 0, facts.data_after_exit)
    if server_rows <= 0:
        return Cut(FILE_HEADER_LEN, facts.end, False, facts.history_rows, facts.data_after_exit)
    if not facts.ends_known:
        raise ValueError("a cut after part of the rows needs every row's offset: read the log (read_facts)")
    return Cut(facts.history_ends[server_rows - 1], facts.end, True, facts.history_rows - server_rows,
               facts.data_after_exit)


def write_cut(src: Path, dst: Path, cut: Cut) -> int:
    """Write the `.wandb` file for ``cut`` to ``dst``; return its size. A whole log is copied
    byte for byte (cut at its last whole record); a resumed cut is re-framed.

    wandb 0.15 writes a run's last history row and its summary *after* the exit record when
    steps are given explicitly (``log(..., step=n)``), and wandb 0.31's sync stops reading at
    the exit record: that row never reached the server. With ``exit_last`` the exit record (and
    the end markers after it) go last, after the data that followed them. With ``sweep_id``,
    the run record names that sweep (wandb sync sends it with the run: it attaches to the sweep)."""
    # Lazy: wandb.proto is preloaded without the SDK (wandb_proto.py); were that to fail, this
    # import would load the whole SDK (~1 s): only where records are read.
    from wandb.proto import wandb_internal_pb2 as pb

    if not cut.resumed and not cut.exit_last and not cut.sweep_id:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            left = cut.end
            while left > 0:
                block = fin.read(min(left, 1 << 20))
                if not block:
                    break
                fout.write(block)
                left -= len(block)
            fout.flush()
            os.fsync(fout.fileno())
            return fout.tell()
    held: list[bytes] = []  # the exit record and the end markers after it
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        w = LogWriter(fout)
        for offset, payload in LogReader(fin):
            if offset >= cut.end:
                break
            rec = parse_record(payload, offset, pb)
            kind = rec.WhichOneof("record_type")
            if kind == "run" and cut.sweep_id:
                rec.run.sweep_id = cut.sweep_id
                payload = rec.SerializeToString()
            if cut.resumed and offset < cut.start:
                if kind == "header":
                    w.write(payload)
                elif kind == "run":
                    rec.run.resumed = True
                    w.write(rec)
                continue
            if cut.resumed and kind in ("header", "run"):
                continue  # already written at the top
            if cut.exit_last and (kind == "exit" or (held and kind in ("final", "footer"))):
                held.append(payload)
                continue
            w.write(payload)
        for payload in held:
            w.write(payload)
        fout.flush()
        os.fsync(fout.fileno())
        return w.offset
