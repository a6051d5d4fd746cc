"""Asking the server about many runs in one GraphQL request, and falling back to one run per
request where a server refuses that.

The server here is a stub on 127.0.0.1, named as such: it stands in for a W&B server with a
query-complexity limit, which cannot run here (OpenWandb takes the many-run query, and the
delivery tests use it for everything else).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tfwb_agent.deliver import confirm


class _StubLimitedServer(BaseHTTPRequestHandler):
    """GraphQL that refuses a query naming more than one run; run 'b' exists with 7 rows."""
    queries: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        runs = body["query"].count("run(name:")
        type(self).queries.append(runs)
        if runs > 1:
            doc = {"errors": [{"message": "query is too complex"}], "data": None}
        else:
            name = body["variables"]["r0"]
            run = {"name": name, "state": "finished", "summaryMetrics": "{}", "historyLineCount": 7,
                   "files": {"edges": []}} if name == "b" else None
            doc = {"data": {"q0": {"run": run}}}
        raw = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


def test_a_refused_many_run_query_falls_back_to_one_run_per_request() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StubLimitedServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        wanted = [confirm.Wanted("e", "p", r) for r in ("a", "b", "c")]
        found = confirm.fetch_runs(url, "stub-key", wanted, timeout=5)
        assert [f.exists for f in found] == [False, True, False]
        assert found[1].history_rows == 7
        assert _StubLimitedServer.queries == [3, 1, 1, 1]
    finally:
        httpd.shutdown()


def test_the_many_run_query_names_each_run_under_its_own_alias() -> None:
    q = confirm.runs_query(3)
    for i in range(3):
        assert f"q{i}: project(name: $p{i}, entityName: $e{i}) {{ run(name: $r{i})" in q
        assert f"$p{i}: String!, $e{i}: String, $r{i}: String!" in q
