"""The `wandb sync` delivery starts ahead (``upload.warm``): it starts wandb's service while it
waits, and once the CLI is done it ends without the interpreter's finalization. What must hold:
its exit status is the CLI's, everything wandb printed is in its log, and one that is discarded
unused leaves neither itself nor the service it started running.

Real wandb, no server needed: the CLI's own refusal of an unknown option is a failure whose
status and message are known.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tfwb_agent.deliver import upload


def _children_of(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(p))
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"  # a zombie has ended


def _wait_for(what, timeout: float = 30.0):
    """Poll an observed condition until it holds (or the time runs out): the service starts and
    ends on its own schedule, and only what /proc shows tells."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    return what()


def _service_of(w: upload.Warm) -> list[int]:
    return [c for c in _children_of(w.proc.pid) if b"wandb-core" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_warm_sync_ends_with_the_clis_status_and_its_output_in_its_log(tmp_path: Path) -> None:
    w = upload.warm("http://127.0.0.1:9", "k" * 40, tmp_path / "warm")
    assert w is not None
    assert _wait_for(lambda: _service_of(w)), "the service was not started while waiting"
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
    service = _wait_for(lambda: _service_of(w))
    assert service, "the service was not started while waiting"
    w.discard()
    assert not _running(w.proc.pid)
    # The service is in a session of its own (wandb starts it so): it ends when it sees its
    # parent gone.
    assert _wait_for(lambda: not any(_running(p) for p in service)), f"wandb-core {service} still running"
