"""Which of many runs a server proves it does not hold, from each project's run list.

Asking about a run by name (``confirm``: one ``project { run(name:) }`` per run, aliased) costs
a server a lookup of the project and of the run for every run asked about, and W&B's GraphQL
layer validates every alias against every other. Most runs a delivery asks about before
sending are new ones the server has never seen. So they are first looked for, a project at a
time, in the project's run list filtered by their names, as W&B's public API lists runs
(``project { runs(filters: {"name": {"$in": [...]}}, first: N) }``, the shape
``wandb.Api().runs(path, filters=...)`` sends).

What the list proves is only absence, and only when the server sent back fewer runs than
``first`` asked for: then it sent every run it holds that the filter lets through (all of the
project's runs, where a server ignores the filter, as OpenWandb does), and a run named but not
sent back is not there. (This holds for a server that cuts a list at ``first`` and no sooner:
W&B takes pages far longer than the ``BATCH`` names asked at most.) A run the list shows, a
list as long as ``first``, an error about a project, or a server that refuses the query or
the key proves nothing: those runs are asked about by name as before (``confirm.fetch_rows``),
which reads the state, row count and errors of each, and says what went wrong.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from . import server as srv
from .confirm import BATCH, Wanted

log = logging.getLogger("tfwb_agent.deliver")


def lists_query(n: int) -> str:
    """One GraphQL request for ``n`` filtered run lists, each under its own alias (q0, q1, ...)."""
    params = ", ".join(f"$p{i}: String!, $e{i}: String, $f{i}: JSONString, $n{i}: Int" for i in range(n))
    body = " ".join(f"q{i}: project(name: $p{i}, entityName: $e{i}) {{ runs(filters: $f{i}, first: $n{i}) "
                    "{ edges { node { name } } } }" for i in range(n))
    return f"query TfwbRunLists({params}) {{ {body} }}"


def _groups(wanted: Sequence[Wanted]) -> list[tuple[str | None, str, list[int]]]:
    """The indexes of ``wanted`` by project and entity, at most ``BATCH`` names each."""
    by: dict[tuple[str | None, str], list[int]] = {}
    for i, w in enumerate(wanted):
        by.setdefault((w.entity, w.project), []).append(i)
    out = []
    for (entity, project), idx in by.items():
        out += [(entity, project, idx[j:j + BATCH]) for j in range(0, len(idx), BATCH)]
    return out


def proven_absent(names: Sequence[str], node: Any) -> set[str]:
    """Pure: the ``names`` one project's answer (``node``: the aliased ``project``) proves the
    server does not hold; ``first`` was ``len(set(names))``. A project the server says is not
    there holds none of them."""
    if node is None:
        return set(names)
    edges = ((node.get("runs") or {}).get("edges")) if isinstance(node, dict) else None
    if not isinstance(edges, list):
        return set()  # not an answer to what was asked
    if len(edges) >= len(set(names)):
        return set()  # perhaps cut at ``first``: only asking by name can tell
    shown = {(e.get("node") or {}).get("name") for e in edges if isinstance(e, dict)}
    return set(names) - shown


def absent_runs(base_url: str, api_key: str, wanted: Sequence[Wanted], timeout: float = 20.0, *,
                ca_file: str | None = None, target: str | None = None) -> set[int]:
    """The indexes of ``wanted`` the server proves it does not hold, in one request (nothing,
    where the request fails short of the server: the questions by name that follow say why)."""
    groups = _groups(wanted)
    if not groups:
        return set()
    variables: dict[str, Any] = {}
    for i, (entity, project, idx) in enumerate(groups):
        names = sorted({wanted[j].run_id for j in idx})
        variables.update({f"p{i}": project, f"e{i}": entity, f"f{i}": json.dumps({"name": {"$in": names}}),
                          f"n{i}": len(names)})
    try:
        ans = srv.graphql_answer(base_url, api_key, lists_query(len(groups)), variables, timeout, ca_file=ca_file,
                                 target=target)
    except (srv.Unreachable, srv.TLSFailure):
        raise  # asking by name would meet the same: not asked twice
    except srv.ServerError as exc:  # the query or the key refused: asked by name, which says why
        log.info("%s did not list runs by name (%s); asking about each run", target or base_url, exc)
        return set()
    out: set[int] = set()
    for i, (_entity, _project, idx) in enumerate(groups):
        alias = f"q{i}"
        if ans.errors_for(alias) or alias not in ans.data:
            continue  # an error, or no word about this project at all (not a null project)
        gone = proven_absent([wanted[j].run_id for j in idx], ans.data[alias])
        out.update(j for j in idx if wanted[j].run_id in gone)
    return out
