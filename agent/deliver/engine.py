"""The delivery package's entry points, named where the CLI, the daemon and tests look for them.

deliver/, by job:

    work.py           the segments this host could deliver (``pending_units``)
    round.py          a round for one target: choosing, locking, probing, waves (``deliver_round``)
    waves.py          the order segments are opened, asked about and sent in
    settle.py         one target's segments: open, ask the server, cut, send, ask again
    opening.py        a bundle verified and decrypted (or a staged run copied) into a work directory
    outcomes.py       what became of each segment, written to the ledger
    target_status.py  a target probed and its verdict recorded, with back-off
    upload.py / clients.py    ``wandb sync`` with the target's wandb client; sync_log.py what its log says
    ahead.py          `sync`'s ``wandb sync`` started before the engine loads, where it will likely send
    confirm.py / server.py / probe.py    what the server holds; the HTTP layer; reachability
    policy.py / settings.py / backoff.py / sweeps.py
"""
from __future__ import annotations

from .outcomes import Outcome, RoundReport
from .round import deliver_round, deliver_stage
from .settings import sync_settings
from .target_status import probe_target, target_row
from .waves import wave_parts
from .work import Unit, pending_units

__all__ = ["Outcome", "RoundReport", "Unit", "deliver_round", "deliver_stage", "pending_units", "probe_target",
           "sync_settings", "target_row", "wave_parts"]
