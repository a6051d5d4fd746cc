"""Prometheus metrics scraped over HTTP from a running daemon (and its node-exporter textfile),
parsed with prometheus_client's own parser and compared with `status --json` and the disk."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import agent
from daemon_helpers import DaemonProc, wait_for
from seal_helpers import BUNDLE_GLOB, corpus_run_dirs
from test_k8s_secrets import _keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return samples(r.read().decode())


def test_metrics_from_a_running_daemon_agree_with_status(tmp_path, corpus):
    node_key, _identity, recipient = _keys(tmp_path)
    root = tmp_path / "watched"
    for src in sorted(corpus_run_dirs(corpus).values())[:2]:
        shutil.copytree(src, root / src.name)
    # A third "run" that is not one (no .wandb log): classified invalid, another state to count.
    (root / "offline-run-20260101_000000-notarun").mkdir()
    old = time.time() - 3600  # quiet for an hour: invalid from the first look, not a run starting
    os.utime(root / "offline-run-20260101_000000-notarun", (old, old))
    port = free_port()
    textfile = tmp_path / "textfile" / "tfwb.prom"
    textfile.parent.mkdir()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\nnode_name = "gpu01"\n[watch]\nroots = ["{root}"]\n'
                   f'mode = "poll"\npoll_seconds = 0.5\nquiet_seconds = 1\nlease_seconds = 3\n'
                   f'[keys]\nnode_key = "{node_key}"\nrecipients = ["{recipient}"]\n'
                   f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\n')
    outbox = tmp_path / "state" / "outbox"
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    wait_for(lambda: len(list(outbox.glob(BUNDLE_GLOB))) == 2, 90, "two runs sealed", d)
    st = json.loads(agent(cfg, "status", "--json").stdout)
    m = scrape(port)

    runs = {dict(k)["state"]: v for (name, k), v in m.items() if name == "tfwb_runs"}
    assert runs == {s: float(n) for s, n in st["counts"].items()}, (runs, st["counts"])
    assert runs.get("sealed") == 2.0
    files = [p for p in outbox.iterdir() if not p.name.startswith(".")]
    assert m[("tfwb_outbox_bundles", ())] == 2.0
    assert m[("tfwb_outbox_bytes", ())] == float(sum(p.stat().st_size for p in files))
    deliveries = {k: v for k, v in m.items() if k[0] == "tfwb_deliveries"}
    assert len(deliveries) == len(st["deliveries"]) == 0
    sealed_at = m[("tfwb_last_success_timestamp_seconds", (("stage", "seal"), ("target", "")))]
    newest = max(p.stat().st_mtime for p in outbox.glob(BUNDLE_GLOB))
    assert abs(sealed_at - newest) < 30, (sealed_at, newest)
    assert m[("tfwb_healthy", ())] == 1.0 and m[("tfwb_sealing_paused", ())] == 0.0
    assert not [k for k in m if k[0] == "tfwb_errors"], m
    # The daemon timed its sealing: at least one seal stage call that changed the ledger.
    assert m[("tfwb_stage_duration_seconds_count", (("stage", "seal"),))] >= 1

    # The textfile holds the same families, for node-exporter's textfile collector.
    def written() -> dict | None:  # rewritten every 10 s at most: wait for one after the sealing
        t = samples(textfile.read_text()) if textfile.exists() else {}
        return t if t.get(("tfwb_runs", (("state", "sealed"),))) == 2.0 else None

    t = wait_for(written, 30, "the metrics textfile after the sealing", d)
    assert {dict(k)["state"]: v for (name, k), v in t.items() if name == "tfwb_runs"} == runs
    assert t[("tfwb_outbox_bundles", ())] == 2.0
    d.terminate()


def test_metrics_listen_must_be_loopback(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    res = agent(cfg, "config", "check", check=False)
    assert res.returncode == 1 and "metrics.listen" in res.stderr and "not a loopback address" in res.stderr, \
        res.stderr
    assert "Traceback" not in res.stderr
