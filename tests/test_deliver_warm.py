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
