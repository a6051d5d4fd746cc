"""A target's recorded status: probe it with its key, record the verdict and when to probe next.

The probe itself (``probe.py``) only asks; this is where its answer becomes the ledger's
``targets`` row, with a back-off while the target is offline or has no key, and a long wait
once the server rejected the key (a person fixes it, then runs ``targets check`` or ``sync``).
"""
from __future__ import annotations

import time
from typing import Any

from .. import config as config_mod
from ..ledger import Ledger
from . import backoff, probe
from .settings import SyncSettings, Target


def target_row(ledger: Ledger, name: str) -> dict[str, Any] | None:
    return ledger.target(name)


def record_probe(ledger: Ledger, name: str, result: probe.ProbeResult, settings: SyncSettings,
                 now: float | None = None) -> dict[str, Any]:
    """Store a probe's verdict and when to probe next (back-off while offline)."""
    now = time.time() if now is None else now
    prev = target_row(ledger, name) or {"failures": 0}
    if result.status == probe.ONLINE:
        failures, nxt = 0, None
    elif result.status in (probe.OFFLINE, probe.NO_KEY):
        # No key to send yet: reading it again costs nothing on the network, so it is looked for
        # on the offline schedule and delivery starts by itself once the key is in place.
        failures = prev["failures"] + 1
        nxt = now + backoff.delay(failures, settings.backoff_base, settings.backoff_cap)
    else:  # key rejected: wait long; an operator fixes the key and runs `targets check` or `sync`
        failures = prev["failures"] + 1
        nxt = now + settings.key_rejected_retry
    ledger.record_target(name, result.status, result.detail, failures, nxt, now)
    return {"name": name, "status": result.status, "detail": result.detail, "failures": failures, "next_attempt": nxt}


def read_key(name: str, t: Target) -> tuple[str, probe.ProbeResult | None]:
    """The target's API key, or ("", the no-key verdict saying where to put it)."""
    try:
        return t.api_key(), None
    except config_mod.ConfigError as exc:
        return "", probe.ProbeResult(probe.NO_KEY, f"no API key: {exc}; put the key where [targets.{name}] "
                                     "says (api_key_file, api_key_env or a systemd credential)")


def probe_target(ledger: Ledger, name: str, t: Target, settings: SyncSettings,
                 now: float | None = None) -> tuple[probe.ProbeResult, dict[str, Any], str]:
    """Probe target ``name`` with its key and record the verdict; returns the probe's result,
    the recorded row and the key ("" when it could not be read: then the verdict says so)."""
    key, res = read_key(name, t)
    if res is None:
        res = probe.probe(t.base_url, key, t.timeout, ca_file=t.ca_file, target=name)
    return res, record_probe(ledger, name, res, settings, now), key
