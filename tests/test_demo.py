"""The README's first command: `tfwb-agent demo` runs the whole pipeline and reports no leak."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow(seconds=55)
def test_demo_seals_exports_delivers_and_leaks_nothing(tmp_path):
    """`demo --to URL` is the plain `demo` (train, classify, redact, seal, export, import, leak
    check) plus a delivery: one run of it checks both (each demo trains TensorFlow twice)."""
    from openwandb_server import start_openwandb

    server = start_openwandb(tmp_path / "server")
    try:
        env = dict(os.environ, WANDB_API_KEY=server.api_key)
        proc = subprocess.run([sys.executable, "-m", "tfwb_agent", "demo", "--json", "--to", server.url,
                               "--work-dir", str(tmp_path / "demo")], capture_output=True, text=True,
                              timeout=600, env=env)
        report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
        assert report is not None, proc.stderr[-3000:]
        assert report["leaks"] == [], report["leaks"]
        assert proc.returncode == 0 and report["ok"], proc.stderr[-3000:]
        assert sorted(r["ended"] for r in report["runs"]) == ["crashed", "finished"]
        assert all(r["state"] == "exported" for r in report["runs"])
        assert len(report["imported"]) == 2 and len(report["bundles"]) == 2
        assert report["checked_files"] > 4
        assert report["redaction"].get("media image hashed", 0) >= 4  # the default policy hashes every image
        # Nothing of the gateway's private key or the demo's token in what it printed.
        identity = (tmp_path / "demo" / "keys" / "gateway.agekey").read_text().split("AGE-SECRET-KEY-")[1][:20]
        assert identity not in proc.stdout + proc.stderr
        assert "hf_DemoToken" not in proc.stdout + proc.stderr

        assert len(report["delivered"]) == 2
        assert all(d["state"] == "confirmed" for d in report["delivered"])
        steps = {r["run_id"]: r["steps"] for r in report["runs"]}
        for d in report["delivered"]:
            assert d["server_rows"] == steps[d["run_id"]] > 0  # every history row the run logged
            dup = server.query("SELECT key, step FROM metrics WHERE run_id = ? GROUP BY key, step "
                               "HAVING COUNT(*) > 1", (d["run_id"],))
            assert dup == [] and server.query("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (d["run_id"],))[0][0]
        assert server.api_key not in proc.stdout + proc.stderr
        # Nothing the server stored (database and files) holds what must stay on the site.
        from tfwb_agent.demo_train import DEMO_DATA_DIR, DEMO_TOKEN
        import socket

        home = os.path.expanduser("~").rstrip("/")
        forbidden = [DEMO_TOKEN.encode(), DEMO_DATA_DIR.encode(), json.dumps(socket.gethostname()).encode(),
                     json.dumps(home).encode(), f"{home}/".encode()]
        stored = [p for p in server.data_dir.rglob("*") if p.is_file()]
        assert any(p.name == "openwandb.db" for p in stored) and len(stored) > 3
        # The console arrived, scrubbed (so the scan below reads it): the line that named the token
        # is there, with a placeholder where the token was.
        consoles = [p.read_text() for p in stored if p.name == "output.log"]
        assert len(consoles) == 2, [p.name for p in stored]
        assert all("loading data from" in c and "with token" in c for c in consoles)
        for p in stored:
            data = p.read_bytes()
            assert not [f for f in forbidden if f in data], f"{p.relative_to(server.data_dir)} holds a site secret"
    finally:
        server.stop()
