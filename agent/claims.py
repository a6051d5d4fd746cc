"""Claims: when several agents watch one shared volume, each run is handled by one of them.

A claim is a small file in a claims directory on the shared volume (the agent needs write
access there only). Claims are generations: ``<run>/<gen>.claim`` created with O_EXCL, which is
atomic on local filesystems and on NFSv3+. The holder of the highest generation owns the run
while its lease (written inside the file) is fresh; the holder renews it by rewriting its own
file. Anyone may take over an expired claim by creating the next generation, and only one
creator can win that race. A holder that finds a newer generation has lost the run.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(?P<gen>\d+)\.claim$")


@dataclass(frozen=True)
class Claim:
    run: str
    generation: int
    node: str
    expires: float


def _read(path: Path, run: str, gen: int) -> Claim | None:
    try:
        data = json.loads(path.read_text())
        return Claim(run, gen, str(data["node"]), float(data["expires"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Half-written by a holder that died between create and write: treat as expired.
        return Claim(run, gen, "?", 0.0)


def current(claims_dir: Path, run: str) -> Claim | None:
    gens = []
    try:
        with os.scandir(claims_dir / run) as it:
            for e in it:
                m = _NAME.match(e.name)
                if m:
                    gens.append(int(m["gen"]))
    except FileNotFoundError:
        return None
    for gen in sorted(gens, reverse=True):
        c = _read(claims_dir / run / f"{gen}.claim", run, gen)
        if c is not None:
            return c
    return None


def _write(path: Path, node: str, expires: float, exclusive: bool) -> bool:
    body = json.dumps({"node": node, "expires": expires}).encode()
    if exclusive:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return True
    tmp = path.with_name(f".{path.name}.{node}.tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def acquire(claims_dir: Path, run: str, node: str, lease_seconds: float, now: float | None = None) -> bool:
    """Claim ``run`` for ``node``, or renew our claim. True if ``node`` holds it afterwards."""
    now = time.time() if now is None else now
    c = current(claims_dir, run)
    if c is not None and c.node == node:
        if c.expires - now > lease_seconds / 2:
            return True  # fresh enough: renewing on every look would cost a write per run
        _write(claims_dir / run / f"{c.generation}.claim", node, now + lease_seconds, exclusive=False)
        # Renewed too late? Someone may have taken over in between.
        newest = current(claims_dir, run)
        return newest is not None and newest.generation == c.generation
    if c is not None and c.expires > now:
        return False
    gen = 0 if c is None else c.generation + 1
    (claims_dir / run).mkdir(parents=True, exist_ok=True)
    if not _write(claims_dir / run / f"{gen}.claim", node, now + lease_seconds, exclusive=True):
        return False
    if gen > 0:
        _prune(claims_dir, run, gen)
    return True


def holder(claims_dir: Path, run: str) -> str | None:
    c = current(claims_dir, run)
    return c.node if c else None


def _prune(claims_dir: Path, run: str, keep_from: int) -> None:
    for gen in range(max(0, keep_from - 8), keep_from):
        try:
            (claims_dir / run / f"{gen}.claim").unlink()
        except FileNotFoundError:
            pass
