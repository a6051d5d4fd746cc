"""Append-only, hash-chained audit log: what left, when, to where, under which redactions.

One JSON object per line. Each line carries ``prev``, the SHA-256 of the previous line's
bytes (64 zeros for the first), its sequence number, and ``sha256`` over its own other fields,
so ``verify`` finds a line that was edited (its own hash, and the next line's ``prev``), removed
or reordered (``seq`` and ``prev``). What a chain alone cannot show is the loss of the newest
lines; ``head()`` gives (seq, hash) of the last line for the ledger or a signed manifest to
keep, and ``verify(expect_head=...)`` checks against it.

Appends take an exclusive ``flock`` so the daemon and a CLI command never interleave, and are
fsynced before ``append`` returns.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
NL = b"\n"


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _last_line(f: Any) -> bytes | None:
    """The last complete line of an open binary file, read backwards from the end."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end == 0:
        return None
    pos, buf = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        body = buf[:-1] if buf.endswith(b"\n") else buf
        i = body.rfind(b"\n")
        if i >= 0:
            return body[i + 1:]
    return buf.rstrip(b"\n")


def append(path: str | os.PathLike, event: dict[str, Any]) -> dict[str, Any]:
    """Append ``event`` (JSON-able) as the next line; return the line as written."""
    return append_many(path, [event])[0]


def append_many(path: str | os.PathLike, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``events`` as the next lines under one lock and one fsync (the ledger's
    transitions of one transaction: a first pass over a large volume is one write, not
    thousands); return the lines as written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    written: list[dict[str, Any]] = []
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        last = _last_line(f)
        if last is None:
            seq, prev = 1, GENESIS
        else:
            try:
                seq = int(json.loads(last)["seq"]) + 1
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{p}: the last line is not an audit entry; run `tfwb-agent audit verify`") from None
            prev = hashlib.sha256(last).hexdigest()
        out = b""
        for event in events:
            fields = {"seq": seq, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "prev": prev, "event": event}
            fields["sha256"] = hashlib.sha256(_canonical(fields)).hexdigest()
            line = _canonical(fields)
            if b"\n" in line:
                raise ValueError("an audit line cannot hold a raw newline")  # json escapes them; belt and braces
            out += line + b"\n"
            written.append(fields)
            seq, prev = seq + 1, hashlib.sha256(line).hexdigest()
        f.write(out)
        f.flush()
        os.fsync(f.fileno())
    return written


def head(path: str | os.PathLike) -> tuple[int, str]:
    """(seq, SHA-256 of the last line); (0, GENESIS) for an empty or missing log."""
    try:
        with open(path, "rb") as f:
            last = _last_line(f)
    except FileNotFoundError:
        return 0, GENESIS
    if last is None:
        return 0, GENESIS
    return int(json.loads(last)["seq"]), hashlib.sha256(last).hexdigest()


def verify(path: str | os.PathLike, expect_head: tuple[int, str] | None = None) -> list[str]:
    """Every problem found, each naming its line number (1-based); [] when the chain holds."""
    problems: list[str] = []
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        problems.append(f"line {data.count(NL) + 1}: incomplete last line (no newline)")
    prev_hash, expected_seq = GENESIS, 1
    lines = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
    if not data:
        lines = []
    for n, raw in enumerate(lines, start=1):
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict):
                raise ValueError
        except ValueError:
            problems.append(f"line {n}: not a JSON object")
            prev_hash, expected_seq = hashlib.sha256(raw).hexdigest(), expected_seq + 1
            continue
        own = fields.pop("sha256", None)
        if own != hashlib.sha256(_canonical(fields)).hexdigest():
            problems.append(f"line {n}: its content does not match its own hash (edited)")
        if fields.get("prev") != prev_hash:
            problems.append(f"line {n}: 'prev' does not match the SHA-256 of line {n - 1}"
                            if n > 1 else "line 1: 'prev' is not the genesis hash")
        if fields.get("seq") != expected_seq:
            problems.append(f"line {n}: sequence number {fields.get('seq')!r}, expected {expected_seq}"
                            " (a line was removed, inserted or moved)")
        prev_hash = hashlib.sha256(raw).hexdigest()
        expected_seq = (fields["seq"] + 1) if isinstance(fields.get("seq"), int) else expected_seq + 1
    if expect_head is not None:
        seq, h = expect_head
        if (len(lines), prev_hash if lines else GENESIS) != (seq, h):
            problems.append(f"line {len(lines)}: the log ends before the recorded head (seq {seq}): lines were removed at the end")
    return problems
