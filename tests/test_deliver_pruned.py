"""A bundle retention pruned is no delivery work: a node with its own target must not try to
open a bundle whose file is gone (it would fail it, and `sync` would report a failure for a
bundle the site chose to drop). Here the site's own outbox limit prunes the older of two sealed
runs; delivery then sends the newer one, and the older one never reaches the server or the
delivery table."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import agent
from deliver_helpers import RestartableServer, corpus_dirs, make_deliver_site, metric_rows, seal_dirs, sync


def test_a_pruned_bundle_is_not_delivered(corpus: Path, tmp_path: Path) -> None:
    server = RestartableServer(tmp_path).start()
    try:
        site = make_deliver_site(tmp_path / "site", server.url, server.api_key)
        older, newer = seal_dirs(site, corpus_dirs(corpus)[:2])
        assert older != newer
        ledger = site.ledger()
        try:
            rows = {r["run_id"]: dict(r) for r in ledger.db.execute("SELECT run_id, name, bundle_id FROM bundles")}
        finally:
            ledger.close()
        outbox = site.config().state_dir / "outbox"
        keep_mb = ((outbox / rows[newer]["name"]).stat().st_size + 4096) / (1 << 20)  # room for the newer bundle only
        with open(site.cfg, "a") as f:
            f.write(f"[retention]\noutbox_max_mb = {keep_mb!r}\n")
        pruned = json.loads(agent(site.cfg, "prune", "--json").stdout)
        assert [r["ident"] for r in pruned["removed"]] == [rows[older]["bundle_id"]], pruned
        assert not (outbox / rows[older]["name"]).exists() and (outbox / rows[newer]["name"]).exists()

        done = sync(site, "--once")
        assert done.returncode == 0, done.stderr[-2000:]
        assert metric_rows(server, newer) > 0
        assert metric_rows(server, older) == 0
        assert server.query("SELECT COUNT(*) FROM runs WHERE run_id = ?", (older,))[0][0] == 0
        ledger = site.ledger()
        try:
            states = {r["run_id"]: r["state"] for r in ledger.db.execute("SELECT run_id, state FROM deliveries")}
        finally:
            ledger.close()
        assert states == {newer: "confirmed"}, states
    finally:
        server.stop()
