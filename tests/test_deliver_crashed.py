"""A crashed run arrives marked as crashed, with every record before its torn tail."""
from __future__ import annotations

import pytest

from conftest import CORPUS_RUNS, by_run_id, status
from deliver_helpers import make_deliver_site, server_summary
from openwandb_server import start_openwandb


@pytest.mark.slow(seconds=25)
def test_crashed_runs_arrive_marked_and_whole_up_to_the_tear(tmp_path, corpus):
    server = start_openwandb(tmp_path / "server")
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        out = site.scan_seal_sync(corpus, quiet_seconds=60, container_root="/runs")
        steps = {rid: r["steps"] for rid, r in by_run_id(status(site.cfg)).items()}
        assert out["deliveries"]["counts"] == {"confirmed": 4}, out["deliveries"]
        rows = {r["run_id"]: r for r in out["deliveries"]["rows"]}
        for run_id, (_version, how) in CORPUS_RUNS.items():
            summary = server_summary(server, run_id)
            assert rows[run_id]["server_rows"] == steps[run_id]  # all history before the tear
            if how == "crashed":
                assert summary.get("tfwb/ended") == "crashed", (run_id, summary.keys())
                assert "no exit record" in summary.get("tfwb/ended_reason", "")
            else:
                assert "tfwb/ended" not in summary
        assert steps["s900mviu"] == 143  # the 0.31 run, cut back at its torn tail
    finally:
        server.stop()
