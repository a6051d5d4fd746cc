"""Ask the server what it holds of a run, and judge that against what was sent.

Neither ``wandb sync``'s exit status nor its ``.synced`` marker is trusted (both report success
when data was lost, see the corpus README). A segment counts as delivered only when the server
holds at least as many history rows as the log carries up to the segment's end, and its summary
equals the summary that log implies.

How many history rows the server holds: GraphQL ``historyLineCount`` (W&B), or the lines of the
run's ``wandb-history.jsonl`` file where the server keeps one (OpenWandb answers 0 for the
count but keeps the file; it is fetched only when the count is 0). Many runs are asked about
in one GraphQL request (aliases): on a server that checks the API key with bcrypt on every
request (OpenWandb, about 0.2 s of its CPU each), requests are what delivery time is made of.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlparse

from ..segments import END_KEY, LogFacts, comparable_summary
from . import server as srv

RUN_FIELDS = ('name state summaryMetrics historyLineCount '
              'files(names: ["wandb-history.jsonl"]) { edges { node { name directUrl } } }')
BATCH = 50  # runs per GraphQL request: every request costs the server an API-key check


def runs_query(n: int) -> str:
    """One GraphQL request for ``n`` runs, each under its own alias (q0, q1, ...)."""
    params = ", ".join(f"$p{i}: String!, $e{i}: String, $r{i}: String!" for i in range(n))
    body = " ".join(f"q{i}: project(name: $p{i}, entityName: $e{i}) {{ run(name: $r{i}) {{ {RUN_FIELDS} }} }}"
                    for i in range(n))
    return f"query TfwbRuns({params}) {{ {body} }}"


ABSENT, PARTIAL, COMPLETE, MISMATCH = "absent", "partial", "complete", "mismatch"


@dataclass(frozen=True)
class ServerRun:
    exists: bool
    state: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    history_rows: int = 0


@dataclass(frozen=True)
class Judgement:
    kind: str            # absent | partial | complete | mismatch
    server_rows: int
    detail: str
    end_behind: bool = False  # partial: every row is there, but not how the run ended


@dataclass(frozen=True)
class Wanted:
    entity: str | None
    project: str
    run_id: str


def fetch_runs(base_url: str, api_key: str, wanted: Sequence[Wanted], timeout: float = 20.0) -> list[ServerRun]:
    """What the server holds of each run, in the order asked: one GraphQL request per 50 runs,
    then one download of the history file for each run the server holds but gives no row count
    for (OpenWandb)."""
    out: list[ServerRun] = []
    for at in range(0, len(wanted), BATCH):
        chunk = wanted[at:at + BATCH]
        variables: dict[str, Any] = {}
        for i, w in enumerate(chunk):
            variables.update({f"p{i}": w.project, f"e{i}": w.entity, f"r{i}": w.run_id})
        try:
            data = srv.graphql(base_url, api_key, runs_query(len(chunk)), variables, timeout=timeout)
        except (srv.Unreachable, srv.KeyRejected):
            raise
        except srv.ServerError:
            if len(chunk) == 1:
                raise
            # A server that refuses a query asking for many runs (a complexity limit, aliases
            # it does not take) is asked about one run at a time.
            out.extend(fetch_runs(base_url, api_key, [w], timeout)[0] for w in chunk)
            continue
        out.extend(_server_run(base_url, api_key, (data.get(f"q{i}") or {}).get("run"), timeout)
                   for i in range(len(chunk)))
    return out


def _server_run(base_url: str, api_key: str, run: dict[str, Any] | None, timeout: float) -> ServerRun:
    if not run:
        return ServerRun(False)
    summary = run.get("summaryMetrics") or {}
    if isinstance(summary, str):
        try:
            summary = json.loads(summary)
        except ValueError:
            summary = {}
    rows = int(run.get("historyLineCount") or 0)
    edges = ((run.get("files") or {}).get("edges")) or []
    url = next((e["node"].get("directUrl") for e in edges
                if e and e.get("node") and e["node"].get("name") == "wandb-history.jsonl"), None)
    if url and not rows:
        rows = _count_lines(base_url, api_key, url, timeout)
    return ServerRun(True, run.get("state"), summary if isinstance(summary, dict) else {}, rows)


def _count_lines(base_url: str, api_key: str, url: str, timeout: float) -> int:
    # The key goes only to the server itself, never to a storage host a signed URL names.
    same_host = urlparse(url).netloc == urlparse(base_url).netloc
    try:
        body = srv.request("GET", url, api_key if same_host else "", timeout=timeout)
    except srv.NotFound:
        return 0
    except srv.KeyRejected:
        return 0  # a private storage URL we may not read: fall back on historyLineCount
    return sum(1 for line in body.splitlines() if line.strip())


def _close(a: Any, b: float) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def judge(sent: LogFacts, server: ServerRun, base: int = 0) -> Judgement:
    """Pure: does ``server`` hold everything of ``sent`` (a log up to a segment's end)? ``base``:
    rows of this run the server holds from earlier parts, before ``sent``'s first row.
    ``server_rows`` in the answer counts the server's rows of ``sent`` alone."""
    if not server.exists:
        if base:
            return Judgement(MISMATCH, 0, f"the server has no such run, yet earlier segments brought {base} rows")
        return Judgement(ABSENT, 0, "the server has no such run")
    if server.history_rows < base:
        return Judgement(MISMATCH, server.history_rows, f"the server holds {server.history_rows} history rows, fewer "
                         f"than the {base} earlier segments brought")
    rows = server.history_rows - base
    if rows < sent.history_rows:
        return Judgement(PARTIAL, rows, f"the server holds {rows} of {sent.history_rows} history rows")
    if rows == sent.history_rows:
        # Later segments change the summary: compare it only when the rows match exactly.
        # Compare the keys the server has: servers differ in which summary keys they show
        # (some hide `_`-keys; a run cut for a live segment may not carry its final summary yet).
        want = comparable_summary(sent.summary)
        for key, value in want.items():
            if key in server.summary and not _close(server.summary[key], value):
                return Judgement(MISMATCH, rows, f"summary {key!r} on the server differs from what was sent")
        ended = sent.summary.get(END_KEY)
        if ended is not None and server.summary.get(END_KEY) != ended:
            return Judgement(PARTIAL, rows, f"the server holds all {rows} history rows but its summary says "
                             f"{END_KEY} = {server.summary.get(END_KEY)!r}, not {ended!r}", end_behind=True)
    return Judgement(COMPLETE, rows, f"the server holds all {sent.history_rows} history rows"
                     + (f" (and {rows - sent.history_rows} more from later segments)" if rows > sent.history_rows else ""))
