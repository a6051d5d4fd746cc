"""Asking the server what it holds of a wave's segments: ahead, before sending, after.

Ahead: while a wave's bundles are opened, one request about all of its runs (the question needs
no bundle: the ledger names each run's project and entity): first each project's run list,
filtered by the runs' names, which proves most of a wave's runs absent at a fraction of the
server's cost (``run_lists.py``); the others by name. A long wave's second part is then
sent as soon as it is open, not after a question that the first part's uploads keep the server
from answering. The answer stays true until the part is sent: one process at a time delivers to
a target, and the runs of one wave are different runs. A segment opened into another project or
entity than the one asked about (named by its log only), or an answer that was an error, is
asked again once the segment is open.

Before sending, the summary is asked only for the runs whose row count says it decides (most of
a wave is partial or absent); right after an upload the rows almost always match, so it is
asked in the same request (one round trip to the server, not two).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

from ..segments import LogFacts
from . import confirm, run_lists
from .settings import Target
from .work import Unit

log = logging.getLogger("tfwb_agent.deliver")

# A segment as asked about: (run id, segment, project, entity).
Key = Tuple[str, int, str, Optional[str]]
Ahead = Dict[Key, confirm.ServerRun]


def ahead(t: Target, api_key: str, units: Sequence[Unit]) -> Ahead:
    """What the server holds of each of ``units``' runs, by key; {} if the question failed
    (each segment is then asked about once it is open, where a failure settles it)."""
    keyed: list[tuple[Key, confirm.Wanted]] = []
    for u in units:
        project, entity = t.project or u.project, t.entity or u.entity
        if project:
            keyed.append(((u.run_id, u.segment, project, entity), confirm.Wanted(entity, project, u.run_id)))
    if not keyed:
        return {}
    try:
        wanted = [w for _, w in keyed]
        # A later segment's run is on the server already (its earlier segments went first): a
        # list could not prove it absent, only cost a request more.
        new = [i for i, (k, _) in enumerate(keyed) if k[1] == 0]
        absent = {new[j] for j in run_lists.absent_runs(t.base_url, api_key, [wanted[i] for i in new], t.timeout,
                                                         ca_file=t.ca_file, target=t.name)} if new else set()
        rest = [i for i in range(len(keyed)) if i not in absent]
        found = confirm.fetch_rows(t.base_url, api_key, [wanted[i] for i in rest], t.timeout, ca_file=t.ca_file,
                                   target=t.name) if rest else []
    except Exception as exc:
        log.info("asking %s ahead about a wave failed (%s); asking once the bundles are open", t.name, exc)
        return {}
    answers = {keyed[i][0]: confirm.ServerRun(False) for i in absent}
    answers.update((keyed[i][0], r) for i, r in zip(rest, found))
    return answers


def before(t: Target, api_key: str, keys: Sequence[Key], wanted: Sequence[confirm.Wanted],
           facts: Sequence[LogFacts], bases: Sequence[int], known: Ahead) -> list[confirm.Judgement]:
    """The server's word on opened segments before sending (raises on server trouble): what
    ``known`` (asked ahead) says, the rest asked now in one request, then the summaries."""
    rows = [known.get(k) for k in keys]
    missing = [i for i, r in enumerate(rows) if r is None or not r.known]
    if missing:
        fresh = confirm.fetch_rows(t.base_url, api_key, [wanted[i] for i in missing], t.timeout,
                                   ca_file=t.ca_file, target=t.name)
        for i, r in zip(missing, fresh):
            rows[i] = r
    found = confirm.add_summaries(t.base_url, api_key, wanted, rows, t.timeout, ca_file=t.ca_file, target=t.name)
    return [confirm.assess(f, r, base) for f, r, base in zip(facts, found, bases)]


def after(t: Target, api_key: str, wanted: Sequence[confirm.Wanted], facts: Sequence[LogFacts],
          bases: Sequence[int]) -> list[confirm.Judgement]:
    """The server's word on segments right after their upload, in one request (raises on
    server trouble)."""
    found = confirm.fetch_runs(t.base_url, api_key, wanted, t.timeout, ca_file=t.ca_file, target=t.name)
    return [confirm.assess_sent(f, r, base) for f, r, base in zip(facts, found, bases)]
