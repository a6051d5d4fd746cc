"""The `wandb sync` delivery starts ahead (``upload.warm``): it starts wandb's service while it
waits, and once the CLI is done it ends without the interpreter's finalization. What must hold:
its exit status is the CLI's, everything wandb printed is in its log, and one that is discarded
unused leaves neither itself nor the service it started running.

Real wandb, no server needed: the CLI's own refusal of an unknown option is a failure whose
status and message are known.
"""
from __future__ import annotations

import json
from pathlib import Path

from proc_helpers import children_of, running, wait_for
from tfwb_agent.deliver import upload


def _service_of(w: upload.Warm) -> list[int]:
    return [c for c in children_of(w.proc.pid) if b"wandb-core" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_warm_sync_ends_with_the_clis_status_and_its_output_in_its_log(tmp_path: Path) -> None:
    w = upload.warm("http://127.0.0.1:9", "k" * 40, tmp_path / "warm")
    assert w is not None
    assert wait_for(lambda: _service_of(w)), "the service was not started while waiting"
    assert w.proc.stdin is not None
    w.proc.stdin.write((json.dumps(["sync", "--no-such-option"]) + "\n").encode())
    w.proc.stdin.close()
    assert w.proc.wait(timeout=120) == 2  # click's usage error, not 0 from a cut-short exit
    upload.finished(upload.Upload(w.proc, w.log_path))
    log = w.log_path.read_text(errors="replace")
    assert "No such option" in log and "--no-such-option" in log, log


def test_a_discarded_warm_sync_leaves_nothing_running(tmp_path: Path) -> None:
    w = upload.warm("http://127.0.0.1:9", "k" * 40, tmp_path / "warm")
    assert w is not None
    service = wait_for(lambda: _service_of(w))
    assert service, "the service was not started while waiting"
    w.discard()
    assert not running(w.proc.pid)
    # The service is in a session of its own (wandb starts it so): it ends when it sees its
    # parent gone.
    assert wait_for(lambda: not any(running(p) for p in service)), f"wandb-core {service} still running"


def test_a_stop_between_a_spare_being_claimed_and_its_upload_starting_ends_the_spare(tmp_path, corpus):
    """A batch handed its spare ``wandb sync`` (``claim_spare``) when the process is told to stop
    before the upload starts: the spare is ended (it and its service), its directory and the
    batch's work directory removed, the segment left pending for the next round, nothing sent."""
    from deliver_helpers import corpus_dirs, make_deliver_site, seal_dirs
    from tfwb_agent.deliver.outcomes import STOPPED
    from tfwb_agent.deliver.settings import sync_settings, targets
    from tfwb_agent.deliver.settle import Settler
    from tfwb_agent.deliver.work import pending_units

    site = make_deliver_site(tmp_path / "site", "http://127.0.0.1:9", "k" * 40)
    seal_dirs(site, corpus_dirs(corpus)[:1])
    cfg, ledger = site.config(), site.ledger()
    (unit,) = pending_units(ledger)
    settler = Settler(ledger, cfg, targets(cfg)["local"], "k" * 40, sync_settings(cfg), lambda *a, **k: None)
    prepared = settler.open(unit)
    assert prepared.work.is_dir(), prepared
    settler.prewarm()
    spare = settler.claim_spare()
    assert spare is not None and not settler.spare
    service = wait_for(lambda: _service_of(spare))
    upload.stopping.set()
    try:
        (outcome,) = settler.send([prepared], spare)
    finally:
        upload.stopping.clear()
    assert (outcome.state, outcome.detail) == ("pending", STOPPED), outcome
    assert not running(spare.proc.pid) and not spare.home.parent.exists() and not prepared.work.exists()
    assert wait_for(lambda: not any(running(p) for p in service)), f"wandb-core {service} still running"
    assert ledger.delivery(unit.run_id, unit.segment, "local")["state"] == "pending"
