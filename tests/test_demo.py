"""The README's first command: `tfwb-agent demo` runs the whole pipeline and reports no leak."""
from __future__ import annotations

import json
import subprocess
import sys


def test_demo_seals_every_run_and_leaks_nothing(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "tfwb_agent", "demo", "--json", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    assert report is not None, proc.stderr[-3000:]
    assert report["leaks"] == [], report["leaks"]
    assert proc.returncode == 0 and report["ok"], proc.stderr[-3000:]
    ended = sorted(r["ended"] for r in report["runs"])
    assert ended == ["crashed", "finished"]
    assert all(r["state"] == "exported" for r in report["runs"])
    assert len(report["imported"]) == 2 and len(report["bundles"]) == 2
    assert report["checked_files"] > 4
    assert report["redaction"].get("media image hashed", 0) >= 4  # the default policy hashes every image
    # Nothing of the gateway's private key or the demo's token in what it printed.
    identity = (work / "keys" / "gateway.agekey").read_text().split("AGE-SECRET-KEY-")[1][:20]
    assert identity not in proc.stdout + proc.stderr
    assert "hf_DemoToken" not in proc.stdout + proc.stderr
