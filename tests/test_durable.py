"""agent/durable.py keeps its promises against real processes killed at random points.

A child rewrites one file in a loop with ``write_bytes`` (contents of random sizes, each one
self-checking: a header with its number and length, a body repeating the number), half at
once, half streamed in pieces, and reports each finished
write on a pipe; the test reads up to a random report and SIGKILLs it. Whatever instant the kill
lands on, the file must hold one whole content, no older than the last write reported finished;
the temporary files a kill leaves behind are removed by the next successful write.
"""
from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tfwb_agent import durable

DURABLE = Path(durable.__file__)

# The child loads durable.py on its own (not the package: its import costs half a second).
CHILD = r"""
import importlib.util, os, random, sys
spec = importlib.util.spec_from_file_location("durable", sys.argv[1])
durable = importlib.util.module_from_spec(spec); spec.loader.exec_module(durable)
target, rng = sys.argv[2], random.Random(int(sys.argv[3]))
i = 0
while True:
    i += 1
    n = rng.randrange(1, 40_000)
    header, unit = b"%d %d\n" % (i, n), b"%08d" % i
    if i % 2:  # a whole small file at once
        durable.write_bytes(target, header + unit * n)
    else:  # streamed in pieces, as a large file is
        with durable.replacing(target) as f:
            f.write(header)
            for _ in range(0, n, 64):
                f.write(unit * 64)
                f.flush()
            f.seek(len(header) + 8 * n)
            f.truncate()
    sys.stdout.write(f"{i}\n"); sys.stdout.flush()
"""

def whole(data: bytes) -> int:
    """The write number of a whole content; fails the test on anything partial or mixed."""
    header, sep, body = data.partition(b"\n")
    assert sep, f"no header line: {data[:60]!r}"
    number, count = (int(x) for x in header.split(b" "))
    assert body == b"%08d" % number * count, f"write {number} is partial or mixed ({len(body)} bytes)"
    return number


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_writer_leaves_old_or_new_whole_and_the_next_write_sweeps(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    durable.write_bytes(target, b"0 0\n")
    rng = random.Random(1303)
    left_behind = 0
    for round_ in range(25):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(DURABLE), str(target), str(round_)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        wait_for = rng.randrange(1, 12)
        reported = 0
        while reported < wait_for:
            line = child.stdout.readline()
            assert line, f"the writer died by itself (exit {child.wait()})"
            reported = int(line)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert whole(target.read_bytes()) >= reported  # never older than a write said finished
        left_behind += len(temps(tmp_path))
        assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")] == ["state.bin"]
    # The kill must have landed mid-write at least sometimes, or this test proves nothing about sweeping.
    assert left_behind > 0, "no kill landed inside a write: the test did not exercise the sweep"
    durable.write_bytes(target, b"after")
    assert target.read_bytes() == b"after"
    assert temps(tmp_path) == []


def test_an_exception_midway_keeps_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    durable.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with durable.replacing(target) as f:
            f.write(b'{"v": 2, "trunc')
            raise RuntimeError("the writer failed halfway")
    assert target.read_text() == '{"v": 1}'
    assert temps(tmp_path) == []


def test_a_live_writers_temporary_is_left_alone_a_dead_ones_is_swept(tmp_path: Path) -> None:
    target = tmp_path / "f"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = tmp_path / f".f.{dead_pid}-0123abcd.tmp"
        alive = tmp_path / f".f.{live.pid}-89abcdef.tmp"
        other = tmp_path / f".g.{dead_pid}-0123abcd.tmp"  # another target's: not this write's business
        for p in (dead, alive, other):
            p.write_bytes(b"partial")
        durable.write_text(target, "x")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["f", alive.name, other.name])
    finally:
        live.communicate(b"")


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        durable.write_text(tmp_path / "pub", "public", mode=0o644)
    finally:
        os.umask(0o022)
    try:
        durable.write_bytes(tmp_path / "secret", b"k", mode=0o600)
        durable.write_bytes(tmp_path / "pub2", b"k", mode=0o640)
        # A replace takes the asked mode, not the old file's: a secret rewritten is never left open.
        (tmp_path / "was_open").write_bytes(b"old")
        os.chmod(tmp_path / "was_open", 0o666)
        durable.write_bytes(tmp_path / "was_open", b"key", mode=0o600)
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("pub", "secret", "pub2", "was_open")}
    assert modes == {"pub": 0o644, "secret": 0o600, "pub2": 0o640, "was_open": 0o600}


def test_create_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "claim"
    assert durable.create_exclusive(target, b"first", mode=0o600) is True
    assert durable.create_exclusive(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert temps(tmp_path) == []


def test_create_exclusive_races_have_one_winner(tmp_path: Path) -> None:
    """Eight processes create the same name at once: exactly one says True, and the file holds
    its whole content."""
    script = ("import importlib.util, sys\n"
              "spec = importlib.util.spec_from_file_location('durable', sys.argv[1])\n"
              "d = importlib.util.module_from_spec(spec); spec.loader.exec_module(d)\n"
              "sys.stdin.read()\n"  # all start, then all go at once
              "won = d.create_exclusive(sys.argv[2], sys.argv[3].encode() * 50_000)\n"
              "print('won' if won else 'lost')\n")
    target = tmp_path / "sealed.json"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(DURABLE), str(target), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(8)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    said = {n: p.stdout.read().strip() for n, p in enumerate(procs)}  # type: ignore[union-attr]
    for p in procs:
        p.wait()
    winners = [n for n, s in said.items() if s == "won"]
    assert len(winners) == 1 and sorted(said.values()).count("lost") == 7, said
    assert target.read_text() == str(winners[0]) * 50_000
    assert temps(tmp_path) == []
