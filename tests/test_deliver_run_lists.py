"""What a project's run list proves (``deliver.run_lists``): a run named but not listed is absent
only when the list is shorter than ``first``; a list cut at ``first``, an error about a project
or a refused query proves nothing, and those runs are asked about by name.

Against real OpenWandb, which ignores the filter and lists a project's newest runs (the hardest
case: a run it holds may be cut off the list), and against stubs on 127.0.0.1, named as such,
for what OpenWandb cannot be made to answer: a server that honours the filter, one that refuses
the query, and an error about one project among several.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliver_helpers import RestartableServer

from tfwb_agent.deliver import confirm, questions, run_lists, server as srv
from tfwb_agent.deliver.settings import Target
from tfwb_agent.deliver.work import Unit

W = confirm.Wanted


@pytest.fixture(scope="module")
def openwandb(tmp_path_factory):
    server = RestartableServer(tmp_path_factory.mktemp("ow")).start()
    yield server
    server.stop()


def _create_runs(server, project: str, names: list[str]) -> None:
    """Runs made on the server as wandb makes them (``upsertBucket``), oldest first."""
    for name in names:
        srv.graphql(server.url, server.api_key,
                    "mutation M($n: String!, $p: String!) { upsertBucket(input: {name: $n, modelName: $p, "
                    "entityName: \"admin\"}) { bucket { name } } }", {"n": name, "p": project})
    held = confirm.fetch_rows(server.url, server.api_key, [W("admin", project, n) for n in names])
    assert all(r.exists for r in held), "the runs were not made"


def _calls(monkeypatch, module, name: str) -> list[list[str]]:
    """The run ids of every call of ``module.name(base_url, api_key, wanted, ...)`` from now on
    (it still runs)."""
    calls: list[list[str]] = []
    real = getattr(module, name)

    def counted(base_url, api_key, wanted, *args, **kwargs):
        calls.append([w.run_id for w in wanted])
        return real(base_url, api_key, wanted, *args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_fresh_project_proves_every_run_absent_in_one_request(openwandb) -> None:
    wanted = [W("admin", "rl-fresh", f"new{i}") for i in range(5)]
    assert run_lists.absent_runs(openwandb.url, openwandb.api_key, wanted) == set(range(5))


def test_a_run_the_server_holds_is_never_proven_absent_even_when_the_list_cuts_it_off(openwandb) -> None:
    """OpenWandb lists the project's newest runs whatever the filter says: asked about an old
    run alone (first = 1), it lists a newer one. That list is as long as asked for, so it proves
    nothing; asked with room to spare, the runs it does not show are absent."""
    _create_runs(openwandb, "rl-held", ["old1", "old2", "newest"])
    held = run_lists.absent_runs(openwandb.url, openwandb.api_key, [W("admin", "rl-held", "old1")])
    assert held == set(), "a run the server holds was called absent"
    wanted = [W("admin", "rl-held", n) for n in ("old1", "x1", "x2", "x3", "newest")]
    assert run_lists.absent_runs(openwandb.url, openwandb.api_key, wanted) == {1, 2, 3}
    # A list exactly as long as first (three runs held, three asked): nothing proven.
    wanted = [W("admin", "rl-held", n) for n in ("x1", "x2", "x3")]
    assert run_lists.absent_runs(openwandb.url, openwandb.api_key, wanted) == set()


def test_ahead_takes_the_list_for_absence_and_asks_the_rest_by_name(openwandb, monkeypatch) -> None:
    """``questions.ahead``: the runs the list proves absent are not asked about by name; a run
    the server holds is, and its rows are read."""
    _create_runs(openwandb, "rl-ahead", ["there"])
    asked = _calls(monkeypatch, confirm, "fetch_rows")
    t = Target("local", openwandb.url, ("file", "unused"), timeout=10, entity="admin")
    units = [Unit(r, 0, f"c{r}", f"b{r}", "outbox", Path(f"/b/{r}"), 0, project="rl-ahead")
             for r in ("there", "new1", "new2")]
    ans = questions.ahead(t, openwandb.api_key, units)
    assert asked == [["there"]]
    assert {k[0]: r.exists for k, r in ans.items()} == {"there": True, "new1": False, "new2": False}
    assert all(r.known for r in ans.values())


def test_many_projects_in_one_request_and_each_proves_only_its_own(openwandb) -> None:
    _create_runs(openwandb, "rl-a", ["a1"])
    wanted = [W("admin", "rl-a", "a1"), W("admin", "rl-b", "b1"), W("admin", "rl-a", "a2"),
              W("admin", "rl-b", "a1")]  # a1 lives in rl-a only
    assert run_lists.absent_runs(openwandb.url, openwandb.api_key, wanted) == {1, 2, 3}


def test_the_list_query_names_each_project_under_its_own_alias() -> None:
    q = run_lists.lists_query(2)
    for i in range(2):
        assert f"q{i}: project(name: $p{i}, entityName: $e{i}) {{ runs(filters: $f{i}, first: $n{i})" in q
        assert f"$p{i}: String!, $e{i}: String, $f{i}: JSONString, $n{i}: Int" in q


@pytest.mark.parametrize("node, names, absent", [
    (None, ["a", "b"], {"a", "b"}),                                        # no such project
    ({"runs": {"edges": []}}, ["a", "b"], {"a", "b"}),
    ({"runs": {"edges": [{"node": {"name": "a"}}]}}, ["a", "b"], {"b"}),
    ({"runs": {"edges": [{"node": {"name": "z"}}, {"node": {"name": "y"}}]}}, ["a", "b"], set()),  # cut at first
    ({"runs": {"edges": [{"node": {"name": "z"}}]}}, ["a", "a", "b"], {"a", "b"}),  # a twice: first was 2
    ({"runs": None}, ["a"], set()),                                        # not an answer
    ({"runs": {"edges": "nonsense"}}, ["a"], set()),
    ("nonsense", ["a"], set()),
])
def test_what_one_projects_answer_proves(node: Any, names: list[str], absent: set[str]) -> None:
    assert run_lists.proven_absent(names, node) == absent


# --- stubs for what OpenWandb cannot be made to answer ---------------------------------------------

def _stub(answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> tuple[ThreadingHTTPServer, str, list]:
    seen: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            code, doc = answer(body)
            raw = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *a: object) -> None:
            pass
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}", seen


def test_a_server_that_honours_the_filter_proves_the_missing_ones_absent() -> None:
    held = {"p": {"r1", "r3"}}

    def answer(body):
        v, data = body["variables"], {}
        for alias in [k[1:] for k in v if k.startswith("p")]:
            names = json.loads(v[f"f{alias}"])["name"]["$in"]
            data[f"q{alias}"] = {"runs": {"edges": [{"node": {"name": n}} for n in names
                                                    if n in held.get(v[f"p{alias}"], set())][:v[f"n{alias}"]]}}
        return 200, {"data": data}
    httpd, url, seen = _stub(answer)
    try:
        wanted = [W("e", "p", r) for r in ("r1", "r2", "r3", "r4")]
        assert run_lists.absent_runs(url, "stub-key", wanted) == {1, 3}
        assert json.loads(seen[0]["variables"]["f0"]) == {"name": {"$in": ["r1", "r2", "r3", "r4"]}}
        assert seen[0]["variables"]["n0"] == 4
        # All four held: a list as long as first, nothing to prove.
        held["p"] = {"r1", "r2", "r3", "r4"}
        assert run_lists.absent_runs(url, "stub-key", wanted) == set()
    finally:
        httpd.shutdown()


def test_an_error_about_one_project_proves_nothing_about_it_and_a_refused_query_nothing_at_all() -> None:
    """Nor does an answer that leaves a project out: only a project named and null is one the
    server does not have."""
    mode = {"refuse": False, "leave_out": False}

    def answer(body):
        if mode["refuse"]:
            return 200, {"errors": [{"message": "Unknown argument 'filters' on field 'Project.runs'"}], "data": None}
        if mode["leave_out"]:
            return 200, {"data": {"q1": None}}
        return 200, {"data": {"q0": None, "q1": {"runs": {"edges": []}}},
                     "errors": [{"message": "permission denied", "path": ["q0"]}]}
    httpd, url, _seen = _stub(answer)
    try:
        wanted = [W("e", "denied", "r1"), W("e", "open", "r2")]
        assert run_lists.absent_runs(url, "stub-key", wanted) == {1}
        mode["leave_out"] = True
        assert run_lists.absent_runs(url, "stub-key", wanted) == {1}
        mode["refuse"] = True
        assert run_lists.absent_runs(url, "stub-key", wanted) == set()
    finally:
        httpd.shutdown()


def test_more_names_than_one_batch_go_in_lists_of_at_most_a_batch(openwandb) -> None:
    names = [f"many{i}" for i in range(confirm.BATCH + 3)]
    wanted = [W("admin", "rl-many", n) for n in names]
    assert run_lists.absent_runs(openwandb.url, openwandb.api_key, wanted) == set(range(len(names)))
    groups = run_lists._groups(wanted)
    assert [len(g[2]) for g in groups] == [confirm.BATCH, 3]


def test_a_later_segments_run_is_asked_about_by_name_only(openwandb, monkeypatch) -> None:
    """Its earlier segments went first, so its run is on the server: the list could prove
    nothing about it and is not asked (the 10 % delta's round makes one request, not two)."""
    _create_runs(openwandb, "rl-later", ["grown"])
    listed = _calls(monkeypatch, run_lists, "absent_runs")
    t = Target("local", openwandb.url, ("file", "unused"), timeout=10, entity="admin")
    grown = Unit("grown", 1, "cg", "bg", "outbox", Path("/b/grown"), 0, project="rl-later")
    ans = questions.ahead(t, openwandb.api_key, [grown])
    assert listed == [] and [r.exists for r in ans.values()] == [True]
    ans = questions.ahead(t, openwandb.api_key, [grown, Unit("fresh", 0, "cf", "bf", "outbox", Path("/b/f"), 0,
                                                             project="rl-later")])
    assert listed == [["fresh"]]
    assert {k[0]: r.exists for k, r in ans.items()} == {"grown": True, "fresh": False}


@settings(max_examples=300, deadline=None)
@given(held=st.lists(st.sampled_from([f"r{i}" for i in range(12)]), unique=True),
       asked=st.lists(st.sampled_from([f"r{i}" for i in range(12)]), min_size=1, max_size=8),
       shape=st.sampled_from(["honours the filter", "ignores it, newest first", "ignores it and first",
                              "honours it, each run twice", "honours it, names not asked too"]))
def test_no_server_shape_gets_a_held_run_called_absent(held, asked, shape) -> None:
    """Whatever a server does with the filter and ``first`` (within W&B's rule that a list is
    cut at ``first`` and no sooner), a run it holds is never among those proven absent."""
    first = len(set(asked))
    match = [n for n in reversed(held) if n in asked]          # newest first, as OpenWandb lists
    names = {"honours the filter": match[:first],
             "ignores it, newest first": list(reversed(held))[:first],
             "ignores it and first": list(reversed(held)),
             "honours it, each run twice": [n for n in match for _ in range(2)][:first],
             "honours it, names not asked too": (match + [n for n in reversed(held) if n not in asked])[:first],
             }[shape]
    node = {"runs": {"edges": [{"node": {"name": n}} for n in names]}}
    assert not run_lists.proven_absent(asked, node) & set(held)
