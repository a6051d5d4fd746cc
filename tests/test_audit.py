"""The audit log's hash chain: edits, removals and reorderings are found and named."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


from tfwb_agent import audit


def _log(tmp_path: Path, n: int = 5) -> Path:
    p = tmp_path / "state" / "audit.log"
    for i in range(n):
        audit.append(p, {"action": "sealed", "run": f"run{i}", "bundle": f"b{i}.age", "redaction": {"hashed": i}})
    return p


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfwb_agent", "audit", "verify", *args],
                          capture_output=True, text=True, timeout=60)


def test_intact_chain_verifies(tmp_path: Path) -> None:
    p = _log(tmp_path)
    assert audit.verify(p) == []
    entries = [json.loads(x) for x in _lines(p)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == audit.GENESIS
    assert audit.head(p)[0] == 5
    proc = _cli("--log", str(p))
    assert proc.returncode == 0, proc.stderr
    assert "5 lines" in proc.stdout


def test_edited_line_is_found(tmp_path: Path) -> None:
    p = _log(tmp_path)
    lines = _lines(p)
    lines[2] = lines[2].replace(b'"run2"', b'"runX"')
    p.write_bytes(b"".join(lines))
    problems = audit.verify(p)
    assert any(x.startswith("line 3:") and "edited" in x for x in problems), problems
    assert any(x.startswith("line 4:") for x in problems), problems
    proc = _cli("--log", str(p))
    assert proc.returncode == 1 and "line 3" in proc.stderr


def test_edited_last_line_is_found(tmp_path: Path) -> None:
    p = _log(tmp_path)
    lines = _lines(p)
    lines[-1] = lines[-1].replace(b'"hashed":4', b'"hashed":0')
    p.write_bytes(b"".join(lines))
    assert any(x.startswith("line 5:") for x in audit.verify(p))


def test_deleted_line_is_found(tmp_path: Path) -> None:
    p = _log(tmp_path)
    lines = _lines(p)
    del lines[1]
    p.write_bytes(b"".join(lines))
    problems = audit.verify(p)
    assert any(x.startswith("line 2:") and "removed" in x for x in problems), problems
    proc = _cli("--log", str(p))
    assert proc.returncode == 1 and "line 2" in proc.stderr


def test_swapped_lines_are_found(tmp_path: Path) -> None:
    p = _log(tmp_path)
    lines = _lines(p)
    lines[1], lines[2] = lines[2], lines[1]
    p.write_bytes(b"".join(lines))
    problems = audit.verify(p)
    assert any(x.startswith("line 2:") for x in problems) and any(x.startswith("line 3:") for x in problems), problems
    assert _cli("--log", str(p)).returncode == 1


def test_removed_tail_is_found_against_a_recorded_head(tmp_path: Path) -> None:
    p = _log(tmp_path)
    recorded = audit.head(p)
    p.write_bytes(b"".join(_lines(p)[:-1]))
    assert audit.verify(p) == []                       # a chain alone cannot tell ...
    assert audit.verify(p, expect_head=recorded)       # ... the recorded head can


def test_append_continues_the_chain(tmp_path: Path) -> None:
    p = _log(tmp_path, 2)
    audit.append(p, {"action": "delivered", "to": "wandb-server"})
    assert audit.verify(p) == [] and audit.head(p)[0] == 3


def test_default_log_is_in_state_dir(tmp_path: Path) -> None:
    p = _log(tmp_path, 3)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    proc = subprocess.run([sys.executable, "-m", "tfwb_agent", "--config", str(cfg), "audit", "verify"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and str(p) in proc.stdout, proc.stderr
