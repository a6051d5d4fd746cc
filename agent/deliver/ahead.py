"""A ``wandb sync`` started ahead by `tfwb-agent sync`, before the delivery engine is imported.

A small delivery's time is mostly ``wandb sync`` starting (importing wandb's CLI, starting its
service: about a second); the agent's own work before it can send (importing the engine, the
probe, opening the bundle, the server's answer) is shorter and runs beside it. So the CLI starts
the waiting process (``upload.warm``) first, from this module, which imports only what that
needs, and hands it to the first round (``deliver_round(ahead=...)``): measured on the 10 % grown
run (strace), the round's own early start came 0.4-0.6 s after the command began, this one
0.25-0.3 s (the CLI's modules and the config's sections load before it).

Only where a round would most likely use it: not for a dry run, a target with a wandb client of
its own, a target not online at its last probe (the round would not send, or would wait out a
back-off; a target never probed gets one: a first sync to a target just set up), or when
nothing this host holds may go to the target now (an idle `sync --once` timer pays nothing).
The round discards it where it turns out unneeded after all; ``finish`` is the command's last
word on it, whatever happened.
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import config as config_mod
from .. import statedir
from ..ledger import Ledger
from . import policy, probe, upload
from .settings import Target, policies, targets
from .target_status import read_key
from .work import pending_units, settled

_DIR = "sync-ahead"  # in this process's own work directory (statedir.work_for): swept once it is gone


def would_send(ledger: Ledger, cfg: config_mod.Config, target_name: str, *, only_run: str | None,
               retry_failed: bool, now: float) -> bool:
    """Whether the round would most likely send something to ``target_name`` now: a segment
    not settled there whose policy lets it go (the round asks all this again, and decides)."""
    rules = policies(cfg)
    local_now = datetime.fromtimestamp(now)
    for u in pending_units(ledger):
        if (only_run and u.run_id != only_run) or not u.identity_known:
            continue
        if settled(ledger.delivery(u.run_id, u.segment, target_name), u, retry_failed):
            continue
        if policy.decide(rules, u.project, target_name, now=local_now, age_days=(now - u.created) / 86400,
                         approved=ledger.is_approved(u.run_id)).may_send:
            return True
    return False


def start(ledger: Ledger, cfg: config_mod.Config, target_name: str, *, only_run: str | None, dry_run: bool,
          retry_failed: bool) -> upload.Warm | None:
    """A ``wandb sync`` waiting for its runs, where the first round will most likely send; else None."""
    if dry_run or upload.stopping.is_set():
        return None
    try:
        t = targets(cfg).get(target_name)
    except config_mod.ConfigError:
        return None  # the round says what is wrong
    if t is None or not worth_warming(t, ledger.target(target_name)):
        return None
    if not would_send(ledger, cfg, target_name, only_run=only_run, retry_failed=retry_failed, now=time.time()):
        return None
    # A SIGKILLed sync leaves its directory behind (its warm process ends by itself, stdin
    # closed); a gateway may run no daemon to sweep work/, so the next one started ahead does.
    try:
        statedir.sweep_work(cfg)
        return warm_for(target_name, t, statedir.work_for(cfg, _DIR))
    except OSError:
        return None  # only a head start: the round starts its own, or says what is wrong


def worth_warming(t: Target, row: dict[str, Any] | None) -> bool:
    """Whether a ``wandb sync`` started before the probe would most likely be used: the agent's
    own wandb sends to this target, and it was online at its last probe, or was never probed
    (a target just set up, and a first sync to it)."""
    return t.wandb is None and (row is None or row["status"] == probe.ONLINE)


def warm_for(target_name: str, t: Target, root: Path) -> upload.Warm | None:
    """A ``wandb sync`` for ``t`` waiting for its runs in ``root``; None without the key (the
    probe says where it goes)."""
    key, missing = read_key(target_name, t)
    if missing is not None:
        return None
    return upload.warm(t.base_url, key, root, t.ca_file)


def finish(w: upload.Warm | None) -> None:
    """End ``w`` if no upload took it, and remove its directory (and this process's work
    directory once empty). An upload that took it was waited for, or stopped, already."""
    if w is None:
        return
    w.discard()
    statedir.release_work(Path(w.home.parent))
