"""Ask the server what it holds of a run, and judge that against what was sent.

Neither ``wandb sync``'s exit status nor its ``.synced`` marker is trusted (both report success
when data was lost, see the corpus README). A segment counts as delivered only when the server
holds at least as many history rows as the log carries up to the segment's end, and its summary
equals the summary that log implies.

How many history rows the server holds: GraphQL ``historyLineCount`` (W&B), or the lines of the
run's ``wandb-history.jsonl`` file where the server keeps one (OpenWandb answers 0 for the
count but keeps the file); the larger figure counts.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..segments import LogFacts, comparable_summary
from . import server as srv

RUN_QUERY = """
query TfwbRun($project: String!, $entity: String, $run: String!) {
  project(name: $project, entityName: $entity) {
    run(name: $run) {
      name state summaryMetrics historyLineCount
      files(names: ["wandb-history.jsonl"]) { edges { node { name directUrl } } }
    }
  }
}
"""
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


def fetch_run(base_url: str, api_key: str, entity: str | None, project: str, run_id: str,
              timeout: float = 20.0) -> ServerRun:
    data = srv.graphql(base_url, api_key, RUN_QUERY, {"project": project, "entity": entity, "run": run_id},
                       timeout=timeout)
    run = ((data.get("project") or {}).get("run"))
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
    if url:
        rows = max(rows, _count_lines(base_url, api_key, url, timeout))
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
        # wandb 0.31's sync sends no summary values for logs written by 0.15 (the server shows
        # only `_step`, which some servers hide): compare the keys the server has.
        want = comparable_summary(sent.summary)
        for key, value in want.items():
            if key in server.summary and not _close(server.summary[key], value):
                return Judgement(MISMATCH, rows, f"summary {key!r} on the server differs from what was sent")
    return Judgement(COMPLETE, rows, f"the server holds all {sent.history_rows} history rows"
                     + (f" (and {rows - sent.history_rows} more from later segments)" if rows > sent.history_rows else ""))
