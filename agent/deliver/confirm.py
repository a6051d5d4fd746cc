"""Ask the server what it holds of a run, and judge that against what was sent.

Neither ``wandb sync``'s exit status nor its ``.synced`` marker is trusted (both report success
when data was lost, see the corpus README). A segment counts as delivered only when the server
holds as many history rows as the log carries up to the segment's end (more, right after an
upload, is an error: rows arrived twice), and its summary equals the summary that log implies.

Only what W&B's own client asks is asked, over ``/graphql``: ``project(name, entityName) {
run(name) { ... } }``. How many history rows the server holds: ``historyLineCount`` (W&B), or
the lines of the run's ``wandb-history.jsonl`` where the server gives 0 for the count but keeps
the file (OpenWandb; the file asked for in a second request, and downloaded, only then).
``summaryMetrics`` is heavy (wandb's own run listing leaves it out): it is asked in a second
request, only for the runs whose row count says the summary decides (``Wanted.summary_at``).

Many runs are asked about in one GraphQL request (aliases q0, q1, ...). Each alias is read on
its own: an alias that came back with an error is ``unknown`` (asked again later), never
"absent"; a permission error names the run and project it is about, and does not reject the
key for the others. Back-pressure: on 429, 5xx or a timeout the batch is halved and the next
request waits as long as the server said (``Retry-After``/``RateLimit-Reset``, capped) or a
short back-off; a server that refuses the many-run query is asked one run at a time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from ..segments import END_KEY, LogFacts, comparable_summary
from . import backoff
from . import server as srv
from .upload import stopping

LIGHT_FIELDS = "name state historyLineCount"
# Asked again only of the runs the server holds but gives no row count for (OpenWandb): a files
# lookup costs a server about as much as the run's own, on every run of every question, and
# W&B gives the count.
HISTORY_FILE_FIELDS = 'files(names: ["wandb-history.jsonl"]) { edges { node { name directUrl } } }'
SUMMARY_FIELDS = "summaryMetrics"
RUN_FIELDS = LIGHT_FIELDS  # what the batch query asks of every run
BATCH = 50  # runs per GraphQL request at most: every request costs the server an API-key check
BUSY_STRIKES = 6          # 429/5xx/timeouts in a row before a fetch gives up (the wave is retried later)
BUSY_WAIT_BUDGET = 300.0  # seconds one fetch may spend waiting as servers tell it to


def runs_query(n: int, fields: str = RUN_FIELDS) -> str:
    """One GraphQL request for ``n`` runs, each under its own alias (q0, q1, ...)."""
    params = ", ".join(f"$p{i}: String!, $e{i}: String, $r{i}: String!" for i in range(n))
    body = " ".join(f"q{i}: project(name: $p{i}, entityName: $e{i}) {{ run(name: $r{i}) {{ {fields} }} }}"
                    for i in range(n))
    return f"query TfwbRuns({params}) {{ {body} }}"


ABSENT, PARTIAL, COMPLETE, MISMATCH, UNKNOWN = "absent", "partial", "complete", "mismatch", "unknown"


@dataclass(frozen=True)
class ServerRun:
    exists: bool
    state: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    history_rows: int = 0
    known: bool = True        # False: the server's answer about this run was an error (see detail)
    detail: str = ""


@dataclass(frozen=True)
class Judgement:
    kind: str            # absent | partial | complete | mismatch | unknown
    server_rows: int
    detail: str
    end_behind: bool = False  # partial: every row is there, but not how the run ended


@dataclass(frozen=True)
class Wanted:
    entity: str | None
    project: str
    run_id: str
    summary_at: int | None = None  # ask for the summary only if the server holds this many rows (None: always)

    def where(self) -> str:
        return f"run {self.run_id} in project {self.entity + '/' if self.entity else ''}{self.project}"


Sleep = Callable[[float], Any]


def _default_sleep(seconds: float) -> None:
    if stopping.wait(seconds):  # a stopping agent does not sit out a server's Retry-After
        raise srv.Unreachable("the agent is stopping")


def _ask(base_url: str, api_key: str, wanted: Sequence[Wanted], fields: str, timeout: float, ca_file: str | None,
         target: str | None, sleep: Sleep) -> list[tuple[dict[str, Any] | None, str | None]]:
    """Each wanted run's node (or None: no such run) and, where its alias errored, why (then the
    node means nothing). Batches shrink under back-pressure and never grow back in one fetch."""
    out: list[tuple[dict[str, Any] | None, str | None]] = []
    size, strikes, waited = BATCH, 0, 0.0
    while len(out) < len(wanted):
        chunk = wanted[len(out):len(out) + size]
        variables: dict[str, Any] = {}
        for i, w in enumerate(chunk):
            variables.update({f"p{i}": w.project, f"e{i}": w.entity, f"r{i}": w.run_id})
        try:
            ans = srv.graphql_answer(base_url, api_key, runs_query(len(chunk), fields), variables, timeout,
                                     ca_file=ca_file, target=target)
        except srv.Busy as exc:
            strikes += 1
            pause = exc.retry_after if exc.retry_after is not None else backoff.delay(strikes, 1.0, 30.0)
            if strikes >= BUSY_STRIKES or waited + pause > BUSY_WAIT_BUDGET:
                raise srv.Busy(f"{exc} (still after {strikes} tries and {waited:.0f}s of waiting as told; "
                               "asked again later)", exc.retry_after) from None
            size = max(1, len(chunk) // 2)
            waited += pause
            sleep(pause)
            continue
        except (srv.Unreachable, srv.KeyRejected, srv.TLSFailure):
            raise
        except srv.ServerError:
            if len(chunk) == 1:
                raise
            # A server that refuses a query asking for many runs (a complexity limit, aliases
            # it does not take) is asked about one run at a time.
            size = 1
            continue
        strikes = 0
        unattributed = [e for e in ans.errors if e.alias is None or not e.alias.startswith("q")]
        for i, w in enumerate(chunk):
            alias = f"q{i}"
            node = ans.data.get(alias)
            errs = ans.errors_for(alias) or (unattributed if not node else [])
            if errs:
                e = errs[0]
                if e.kind == "permission":
                    why = f"permission denied reading {w.where()} (the key's user may not read that project): {e.message}"
                else:
                    why = f"the server answered with an error about {w.where()}: {e.message}"
                out.append((None, why))
            else:
                out.append(((node or {}).get("run"), None))
    return out


def fetch_runs(base_url: str, api_key: str, wanted: Sequence[Wanted], timeout: float = 20.0, *,
               ca_file: str | None = None, target: str | None = None, sleep: Sleep | None = None) -> list[ServerRun]:
    """What the server holds of each run, in the order asked: one GraphQL request per 50 runs
    (fewer under back-pressure); for the runs the server holds but gives no row count for
    (OpenWandb), one more request for their history files and a download of each; one more
    request for the summaries that decide."""
    # A caller that does not say when the summary matters gets it at once, in the same request.
    if any(w.summary_at is None for w in wanted):
        return _fetch(base_url, api_key, wanted, timeout, ca_file, target, sleep, with_summary=True)
    runs = _fetch(base_url, api_key, wanted, timeout, ca_file, target, sleep, with_summary=False)
    return add_summaries(base_url, api_key, wanted, runs, timeout, ca_file=ca_file, target=target, sleep=sleep)


def fetch_rows(base_url: str, api_key: str, wanted: Sequence[Wanted], timeout: float = 20.0, *,
               ca_file: str | None = None, target: str | None = None, sleep: Sleep | None = None) -> list[ServerRun]:
    """``fetch_runs`` without the summaries: whether each run is there, its state and rows
    (``summary_at`` is not looked at). ``add_summaries`` completes the answer."""
    return _fetch(base_url, api_key, wanted, timeout, ca_file, target, sleep, with_summary=False)


def _fetch(base_url: str, api_key: str, wanted: Sequence[Wanted], timeout: float, ca_file: str | None,
           target: str | None, sleep: Sleep | None, with_summary: bool) -> list[ServerRun]:
    sleep = sleep or _default_sleep
    found = _ask(base_url, api_key, wanted, LIGHT_FIELDS + (" " + SUMMARY_FIELDS if with_summary else ""), timeout,
                 ca_file, target, sleep)
    runs: list[ServerRun] = []
    for w, (run, why) in zip(wanted, found):
        if why is not None:
            runs.append(ServerRun(False, known=False, detail=why))
        elif not run:
            runs.append(ServerRun(False))
        else:
            runs.append(ServerRun(True, run.get("state"), _summary(run.get("summaryMetrics")) if with_summary else {},
                                  _count(run)))
    uncounted = [i for i, r in enumerate(runs) if r.exists and not r.history_rows]
    if uncounted:
        files = _ask(base_url, api_key, [wanted[i] for i in uncounted], HISTORY_FILE_FIELDS, timeout, ca_file, target,
                     sleep)
        for i, (run, why) in zip(uncounted, files):
            if why is not None:
                runs[i] = ServerRun(False, known=False, detail=why)
            elif not run:  # gone between the two requests: ask again later
                runs[i] = ServerRun(False, known=False, detail=f"{wanted[i].where()} vanished while being asked about")
            else:
                rows = _history_lines(base_url, api_key, run, timeout, ca_file, target)
                runs[i] = replace(runs[i], history_rows=rows)
    return runs


def add_summaries(base_url: str, api_key: str, wanted: Sequence[Wanted], runs: list[ServerRun],
                  timeout: float = 20.0, *, ca_file: str | None = None, target: str | None = None,
                  sleep: Sleep | None = None) -> list[ServerRun]:
    """``runs`` (``fetch_rows``' answer for ``wanted``) with the summary of each run that holds
    ``summary_at`` rows (where the summary decides), in one more request."""
    runs = list(runs)
    need = [i for i, (w, r) in enumerate(zip(wanted, runs)) if r.exists and r.history_rows == w.summary_at]
    if need:
        sums = _ask(base_url, api_key, [wanted[i] for i in need], SUMMARY_FIELDS, timeout, ca_file, target,
                    sleep or _default_sleep)
        for i, (run, why) in zip(need, sums):
            r = runs[i]
            if why is not None:
                runs[i] = ServerRun(False, known=False, detail=why)
            elif not run:  # gone between the two requests: ask again later
                runs[i] = ServerRun(False, known=False, detail=f"{wanted[i].where()} vanished while being asked about")
            else:
                runs[i] = ServerRun(True, r.state, _summary(run.get("summaryMetrics")), r.history_rows)
    return runs


def _summary(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _count(run: dict[str, Any]) -> int:
    try:
        return max(0, int(run.get("historyLineCount") or 0))
    except (TypeError, ValueError):
        return 0


def _history_lines(base_url: str, api_key: str, run: dict[str, Any], timeout: float, ca_file: str | None,
                   target: str | None) -> int:
    """The non-empty lines of the run's ``wandb-history.jsonl``, downloaded from where the
    server's ``directUrl`` points (0: no such file)."""
    edges = ((run.get("files") or {}).get("edges")) or []
    url = next((e["node"].get("directUrl") for e in edges
                if isinstance(e, dict) and isinstance(e.get("node"), dict)
                and e["node"].get("name") == "wandb-history.jsonl"), None)
    if not url or not isinstance(url, str):
        return 0
    try:
        body = srv.download(base_url, api_key, url, timeout, ca_file=ca_file, target=target)
    except srv.NotFound:
        return 0
    return sum(1 for line in body.splitlines() if line.strip())


def assess(sent: LogFacts, server: ServerRun, base: int = 0) -> Judgement:
    """``judge``, except that a run the server's answer errored about is ``unknown``."""
    if not server.known:
        return Judgement(UNKNOWN, 0, server.detail or "the server could not say what it holds of this run")
    return judge(sent, server, base)


def assess_sent(sent: LogFacts, server: ServerRun, base: int = 0) -> Judgement:
    """Right after an upload of ``sent``: more rows on the server than were sent is not success
    (rows arrived twice), it is a mismatch to report."""
    j = assess(sent, server, base)
    if j.kind == COMPLETE and j.server_rows > sent.history_rows:
        extra = j.server_rows - sent.history_rows
        return Judgement(MISMATCH, j.server_rows, f"the server holds {j.server_rows} history rows of this segment "
                         f"after the upload, {extra} more than the {sent.history_rows} sent (rows arrived twice?)")
    return j


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
