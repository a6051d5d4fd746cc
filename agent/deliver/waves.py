"""Waves: the order a round's segments are opened, asked about and sent in.

Segments of one run go in order, one wave after the other (a later segment builds on the rows
the earlier ones brought); different runs go side by side. Within a wave, segments are opened in
parallel, the server is asked about all of them in one request (while they are opened:
``questions.py``), and they are sent in batches of one ``wandb sync`` per project and entity.
"""
from __future__ import annotations

import shutil
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Iterator

from ..ledger import Ledger
from . import clients, upload
from .outcomes import NOT_CONFIRMED, Outcome, delivery
from .questions import Ahead
from .settle import Prepared, Settler
from .work import Unit

BATCH_MAX = 64  # runs per wandb sync process: bounds its argv and how long confirmations wait


def wave_parts(wave: list[Unit], size: int | None = None) -> list[list[Unit]]:
    """Pure: the order a wave is opened and sent in, in parts of at most one upload's runs. The
    first part is sent by the ``wandb sync`` started ahead, once it is open (opening a bundle
    costs a fraction of what that process's start-up does, beside it); each later part is opened
    while the earlier ones upload. A wave of one upload goes whole: split, its second part needed
    a second ``wandb sync`` started cold, whose start-up (about a second of CPU) ran beside the
    first part's uploads on the same cores, and delivered 50 runs more slowly than one part
    (``benchmarks/bench_sync.py``). ``size``: runs per part (default ``BATCH_MAX``)."""
    size = max(1, size or BATCH_MAX)
    return [wave[i:i + size] for i in range(0, len(wave), size)]


def deliver_waves(settler: Settler, to_send: list[Unit], report) -> Iterator[Outcome]:
    """Every segment's outcome, wave after wave, as each is settled."""
    queues: dict[str, list[Unit]] = {}
    for u in sorted(to_send, key=lambda x: x.segment):
        queues.setdefault(u.run_id, []).append(u)
    try:
        with ThreadPoolExecutor(max_workers=settler.settings.max_parallel, thread_name_prefix="deliver") as pool:
            while queues and not upload.stopping.is_set():
                for o in deliver_wave(settler, [q[0] for q in queues.values()], pool):
                    report("segment_done", outcome=o)
                    yield o
                    q = queues[o.run_id]
                    q.pop(0)
                    if o.state != "confirmed" or not q:
                        del queues[o.run_id]  # done, or a later segment waits for this one
    finally:
        settler.close()  # a wandb sync started ahead that no batch took


def deliver_wave(settler: Settler, wave: list[Unit], pool: ThreadPoolExecutor) -> Iterator[Outcome]:
    """The wave's outcomes as they are settled (an upload's as soon as the server confirmed it),
    so that progress follows the server, not the slowest upload of the wave."""
    with ThreadPoolExecutor(max_workers=settler.settings.max_parallel, thread_name_prefix="send") as senders:
        asking = senders.submit(settler.ask_ahead, wave)  # while the first part is opened
        sending = []
        for n, part in enumerate(wave_parts(wave)):
            if upload.stopping.is_set():
                break
            if n == 0:
                # The first part's wandb sync is started ahead: its start-up overlaps the opening
                # and the question below. A later part's starts once its runs are ready: started
                # ahead too, its import (about a second of CPU) ran beside the first part's start
                # on the same cores and measured no faster (the README's Measured).
                settler.prewarm()
            ready, settled = prepare(settler, part, pool, asking)
            yield from settled
            sending += [senders.submit(settler.send, b, settler.claim_spare())
                        for b in batches(ready, settler.ledger, settler.t.name)]
        for f in as_completed(sending):
            yield from f.result()


def prepare(settler: Settler, units: list[Unit], pool: ThreadPoolExecutor,
            asking: Future[Ahead]) -> tuple[list[Prepared], list[Outcome]]:
    """Open ``units``, take the server's answer about them (``asking``: asked ahead, while they
    were opened; what it lacks is asked now, in one request), cut each to what it lacks: the
    segments to send, and the outcomes of those settled already (or refused)."""
    opened = list(pool.map(settler.open, units))
    outcomes = [o for o in opened if isinstance(o, Outcome)]
    ready = [p for p in opened if isinstance(p, Prepared)]
    if not ready:
        return [], outcomes
    try:
        judged = settler.ask(ready, ahead=asking.result())
    except Exception as exc:
        for p in ready:
            shutil.rmtree(p.work, ignore_errors=True)
        return [], outcomes + [settler.book.settle_error(p.unit, exc) for p in ready]
    cut = list(pool.map(settler.cut, ready, judged))
    return [p for p in cut if isinstance(p, Prepared)], outcomes + [o for o in cut if isinstance(o, Outcome)]


def batches(ready: list[Prepared], ledger: Ledger, target: str) -> list[list[Prepared]]:
    """Group segments into uploads: one per project and entity, except a segment whose last
    upload was not confirmed, which goes alone (one run that wandb cannot take must not hold
    back the others again), and every segment alone where wandb sync cannot take several."""
    if not clients.syncs_in_parallel():
        return [[p] for p in ready]
    out: list[list[Prepared]] = []
    groups: dict[tuple[str, str | None], list[Prepared]] = {}
    for p in ready:
        d = delivery(ledger, p.unit, target) or {}
        if d.get("state") == "pending" and (d.get("last_error") or "").startswith(NOT_CONFIRMED):
            out.append([p])
        else:
            groups.setdefault(p.batch_key, []).append(p)
    for group in groups.values():
        out.extend(group[i:i + BATCH_MAX] for i in range(0, len(group), BATCH_MAX))
    return out
