"""Retention never removes what is not known to have arrived. A hostile but trusted-signed receipt
(made here with the stock minisign tool) tries: refused, imported-only, wrong-content and foreign
entries, and ids like ../x; only the bundle it truly says delivered goes. The site's explicit
outbox limits do drop unconfirmed bundles; quarantine keeps one copy per refused bundle, N days."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cli_fork import popen
from conftest import agent, status
from seal_helpers import BUNDLE_GLOB, corpus_run_dirs, make_site
from test_receipts import add_receipt_keys

from tfwb_agent import runs
from tfwb_agent.seal import RunIdentity, seal_run


def seal_segments(site, run_dir: Path, numbers: list[int]) -> None:
    cfg, keys, ledger = site.node(), site.seal_keys(), site.node_ledger()
    facts = runs.inspect(run_dir)
    try:
        for n in numbers:
            seal_run(cfg, keys, ledger, run_dir, RunIdentity(facts.run_id, facts.project, facts.entity,
                                                             facts.wandb_version), n, {"note": "test input"})
    finally:
        ledger.close()


def bundles(site) -> dict[int, dict]:
    return {r["segment"]: dict(r) for r in site.node_ledger().db.execute("SELECT * FROM bundles")}


def in_outbox(site) -> set[str]:
    return {p.name for p in site.outbox.iterdir() if not p.name.startswith(".")}


def signed_receipt(site, key: Path, dest: Path, sequence: int, entries: list[dict]) -> Path:
    """A receipt written and signed outside the agent: JSON by hand, signature by `minisign -S`."""
    dest.mkdir()
    name = f"tfwb-receipt-gateway-{sequence:012d}.json"
    doc = {"format": "tfwb-receipt", "format_version": 1, "gateway": "gateway", "gateway_key_id": "x",
           "sequence": sequence, "created": "2030-01-01T00:00:00Z", "bundles": entries}
    (dest / name).write_text(json.dumps(doc))
    subprocess.run(["minisign", "-S", "-s", str(key), "-m", str(dest / name), "-x", str(dest / f"{name}.minisig"),
                    "-t", f"tfwb-receipt v1 gateway=gateway sequence={sequence} file={name}"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return dest / name


def prune(cfg: Path, *args: str) -> dict:
    return json.loads(agent(cfg, "prune", "--json", *args).stdout)


def test_nothing_unconfirmed_is_pruned(corpus: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    key = add_receipt_keys(site)
    run_dir = corpus_run_dirs(corpus)["3salp52t"]
    seal_segments(site, run_dir, [1, 2, 3, 4, 5])
    usb = tmp_path / "usb"
    usb.mkdir()
    agent(site.node_cfg, "export", "--to", str(usb))
    seal_segments(site, run_dir, [0])  # sealed, never exported
    b = bundles(site)
    assert [b[n]["state"] for n in range(6)] == ["sealed"] + ["exported"] * 5
    every = set(in_outbox(site))
    assert len(every) == 12

    def entry(n: int, status: str, **kw) -> dict:
        return {"bundle_id": b[n]["bundle_id"], "content_id": b[n]["content_id"], "run_id": b[n]["run_id"],
                "segment": n, "status": status, "reason": None, "detail": None, "targets": [], **kw}

    entries = [entry(1, "refused", reason="bad_signature", detail="tampered on the way"),  # 1: refused
               entry(2, "imported"),                                                      # 2: not delivered yet
               entry(3, "delivered", content_id="0" * 64),                                # 3: other content
               entry(4, "delivered"),                                                     # 4: truly delivered
               dict(entry(4, "delivered"), bundle_id="../x"),                             # hostile ids
               dict(entry(4, "delivered"), bundle_id="../../outbox"),
               dict(entry(4, "delivered"), bundle_id="never-sealed-here"),
               dict(entry(5, "vanished")),                                                # 5: unknown status
               ]                                                                         # 0 and 5: not named
    signed_receipt(site, key, tmp_path / "back", 1000, entries)
    out = json.loads(agent(site.node_cfg, "receipts", "import", str(tmp_path / "back"), "--json").stdout)
    assert out[0]["status"] == "applied", out
    assert out[0]["marked"] == {"delivered": 1, "imported": 1, "refused": 1}
    assert out[0]["ignored"] == {"foreign": 3, "mismatch": 1, "unknown_status": 1}

    dry = prune(site.node_cfg, "--dry-run")
    assert [r["ident"] for r in dry["removed"]] == [b[4]["bundle_id"]] and in_outbox(site) == every
    done = prune(site.node_cfg)
    assert [r["ident"] for r in done["removed"]] == [b[4]["bundle_id"]] and done["kept_unconfirmed"] == 5
    gone = {b[4]["name"], b[4]["name"] + ".minisig"}
    assert in_outbox(site) == every - gone
    assert (tmp_path / "site").is_dir() and (site.outbox.parent / "ledger.sqlite3").is_file()  # ../x named nothing
    unconfirmed = {u["segment"]: u["gateway_says"] for u in status(site.node_cfg)["unconfirmed"]}
    assert unconfirmed == {0: None, 1: "refused", 2: "imported", 3: None, 5: None}
    assert prune(site.node_cfg)["removed"] == []

    # The site's explicit limits: a size, oldest first; then an age, whatever is left.
    sizes = {n: (site.outbox / b[n]["name"]).stat().st_size for n in (0, 1, 2, 3, 5)}
    keep = (sizes[0] + sizes[5] + 1) / (1 << 20)  # room for the two newest: 5, then 0 (sealed last)
    with open(site.node_cfg, "a") as f:
        f.write(f"[retention]\noutbox_max_mb = {keep!r}\n")
    done = prune(site.node_cfg)
    assert sorted(r["ident"] for r in done["removed"]) == sorted(b[n]["bundle_id"] for n in (1, 2, 3))
    assert all("outbox_max_mb" in r["why"] for r in done["removed"])
    assert in_outbox(site) == {b[n]["name"] + s for n in (0, 5) for s in ("", ".minisig")}
    with open(site.node_cfg, "a") as f:
        f.write("outbox_max_age_days = 1e-9\n")
    done = prune(site.node_cfg)
    assert sorted(r["ident"] for r in done["removed"]) == sorted(b[n]["bundle_id"] for n in (0, 5))
    assert in_outbox(site) == set()


def test_quarantine_one_copy_per_refused_bundle_kept_n_days(corpus: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    seal_segments(site, corpus_run_dirs(corpus)["itokze55"], [0])
    usb = tmp_path / "usb"
    usb.mkdir()
    agent(site.node_cfg, "export", "--to", str(usb))
    (bundle,) = usb.glob(BUNDLE_GLOB)
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    for _ in range(3):  # the same medium, imported three times
        out = agent(site.gw_cfg, "import", str(usb), "--json", check=False)
        assert out.returncode == 1 and json.loads(out.stdout)[0]["reason"] == "bad_signature"
    (entry,) = site.quarantine.iterdir()
    assert (entry / bundle.name).read_bytes() == bytes(data)
    # Another bundle refused for the same reason under the same name is another entry.
    data[len(data) // 3] ^= 0x01
    bundle.write_bytes(bytes(data))
    agent(site.gw_cfg, "import", str(usb), check=False)
    assert len(list(site.quarantine.iterdir())) == 2
    assert prune(site.gw_cfg)["removed"] == []  # 30 days by default
    with open(site.gw_cfg, "a") as f:
        f.write("[retention]\nquarantine_days = 1e-9\n")
    done = prune(site.gw_cfg)
    assert sorted(r["kind"] for r in done["removed"]) == ["quarantine", "quarantine"]
    assert list(site.quarantine.iterdir()) == []
    shutil.rmtree(usb)


def test_retention_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    for body, words in (("outbox_max_age_days = -1", "retention.outbox_max_age_days: must be greater than 0"),
                        ("quarantine_days = true", "retention.quarantine_days: must be a number"),
                        ("keep_forever = 1", "retention.keep_forever: unknown key")):
        cfg.write_text(f'state_dir = "{tmp_path}/s"\n[retention]\n{body}\n')
        out = agent(cfg, "prune", check=False)
        assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
    cfg.write_text(f'state_dir = "{tmp_path}/s"\n[retention]\nmin_free_mb = 0\n')  # the disk guard's key
    assert prune(cfg)["removed"] == []


def test_the_daemon_applies_retention(corpus: Path, tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    site = make_site(tmp_path / "site")
    key = add_receipt_keys(site)
    seal_segments(site, corpus_run_dirs(corpus)["itokze55"], [0, 1])
    usb = tmp_path / "usb"
    usb.mkdir()
    agent(site.node_cfg, "export", "--to", str(usb))
    b = bundles(site)
    signed_receipt(site, key, tmp_path / "back", 7, [
        {"bundle_id": b[1]["bundle_id"], "content_id": b[1]["content_id"], "status": "delivered"}])
    agent(site.node_cfg, "receipts", "import", str(tmp_path / "back"))
    daemon = popen([sys.executable, "-m", "tfwb_agent", "daemon"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, TFWB_AGENT_CONFIG=str(site.node_cfg)))
    try:
        deadline = time.monotonic() + 60
        while (site.outbox / b[1]["name"]).exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # polling for the effect, with a deadline
        assert not (site.outbox / b[1]["name"]).exists(), "the daemon did not prune a delivered bundle"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert (site.outbox / b[0]["name"]).exists()  # unconfirmed: stays
    assert "retention removed 1 item(s)" in err, err[-2000:]
