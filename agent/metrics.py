"""Prometheus metrics: what the ledger and the outbox hold, and how long the daemon's stages take.

``families`` is a plain function from a ``Snapshot`` (facts read from the ledger, the outbox and
the health checks) to metric families; ``gather`` reads a snapshot. At the edge, the daemon
serves them on a loopback port (``[metrics] listen``) or writes them as a node-exporter textfile
(``[metrics] textfile``) through ``Publisher``.

    tfwb_runs{state}                            runs by ledger state (as `status --json` counts)
    tfwb_outbox_bundles, tfwb_outbox_bytes      sealed bundles (+ signatures) waiting in the outbox
    tfwb_deliveries{target,state}               deliveries by target and state
    tfwb_last_success_timestamp_seconds{stage,target}   last seal / export / import / delivery
    tfwb_errors{stage,reason}                   what is failing now, by reason
    tfwb_healthy, tfwb_sealing_paused           `tfwb-agent health`; the low-disk guard
    tfwb_stage_duration_seconds{stage}          a stage call that changed the ledger (a seal batch,
                                                a delivery round), measured in the daemon
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric

from . import config as config_mod
from . import statedir
from . import health
from .ledger import views
from .ledger import Ledger

log = logging.getLogger("tfwb_agent.metrics")

REASONS = (  # a failing item's reason, from its error text: few values, so series stay few
    ("disk", ("disk is full", "no space", "free space", "below the floor")),
    ("keys", ("key", "recipient", "identity", "signature")),
    ("redaction", ("redact",)),
    ("auth", ("401", "403", "unauthorized", "api key", "key_rejected")),
    ("network", ("connect", "timed out", "timeout", "unreachable", "refused", "offline", "reset")),
    ("server", ("500", "502", "503", "504", "server")),
)


def reason_of(error: str | None) -> str:
    text = (error or "").lower()
    for reason, words in REASONS:
        if any(w in text for w in words):
            return reason
    return "other"


@dataclass
class Snapshot:
    runs: dict[str, int]
    outbox_bundles: int
    outbox_bytes: int
    deliveries: dict[tuple[str, str], int]
    last_success: dict[tuple[str, str], float]
    errors: dict[tuple[str, str], int]
    healthy: bool
    sealing_paused: bool
    node: str = ""
    extra: list[Metric] = field(default_factory=list)


def families(s: Snapshot) -> list[Metric]:
    def gauge(name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
        g = GaugeMetricFamily(name, doc, labels=labels)
        for lv, v in values:
            g.add_metric(list(lv), v)
        return g

    return [
        gauge("tfwb_runs", "Runs the agent knows, by ledger state.", ["state"],
              (((k,), v) for k, v in sorted(s.runs.items()))),
        gauge("tfwb_outbox_bundles", "Sealed bundles in the outbox.", [], [((), s.outbox_bundles)]),
        gauge("tfwb_outbox_bytes", "Bytes in the outbox (bundles and their signatures).", [], [((), s.outbox_bytes)]),
        gauge("tfwb_deliveries", "Deliveries by target and state.", ["target", "state"],
              sorted(s.deliveries.items())),
        gauge("tfwb_last_success_timestamp_seconds", "When a stage last succeeded (Unix time), per target.",
              ["stage", "target"], sorted(s.last_success.items())),
        gauge("tfwb_errors", "Items failing now, by stage and reason.", ["stage", "reason"], sorted(s.errors.items())),
        gauge("tfwb_healthy", "1 when `tfwb-agent health` would pass.", [], [((), float(s.healthy))]),
        gauge("tfwb_sealing_paused", "1 while the low-disk guard holds sealing back.", [],
              [((), float(s.sealing_paused))]),
    ] + s.extra


def _outbox(cfg: config_mod.Config) -> tuple[int, int]:
    n = size = 0
    try:
        entries = list(os.scandir(statedir.outbox(cfg)))
    except OSError:
        return 0, 0
    for e in entries:
        if e.name.startswith("."):
            continue  # a bundle being written
        try:
            size += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        n += e.name.endswith(statedir.BUNDLE_SUFFIX)
    return n, size


def gather(cfg: config_mod.Config, ledger: Any, want_daemon: bool = True) -> Snapshot:
    deliveries = views.delivery_counts(ledger)
    last = views.last_successes(ledger)
    errors: dict[tuple[str, str], int] = {}
    for err in views.seal_errors(ledger):
        errors[("seal", reason_of(err))] = errors.get(("seal", reason_of(err)), 0) + 1
    if n := views.quarantined_runs(ledger):
        errors[("seal", "quarantined")] = n
    for err, n in views.delivery_errors(ledger):
        key = ("deliver", reason_of(err))
        errors[key] = errors.get(key, 0) + n
    result = health.check(cfg, ledger, want_daemon=want_daemon)
    blocked = next((c for c in result["checks"] if c["name"] == "sealing" and not c["ok"]), None)
    if blocked:
        key = ("seal", reason_of(blocked["detail"]))
        errors[key] = max(errors.get(key, 0), 1)
    bundles, size = _outbox(cfg)
    return Snapshot(runs=ledger.counts(), outbox_bundles=bundles, outbox_bytes=size, deliveries=deliveries,
                    last_success=last, errors=errors, healthy=result["healthy"],
                    sealing_paused=health.sealing_paused(cfg) is not None, node=cfg.node_name)


class _LedgerCollector:
    """Reads a fresh snapshot on each scrape, with its own connection (the scrape runs in the
    HTTP server's thread; the daemon's connection belongs to the daemon's thread)."""

    def __init__(self, publisher: "Publisher") -> None:
        self.publisher = publisher

    def collect(self) -> Iterable[Metric]:
        cfg = self.publisher.cfg
        ledger = Ledger(cfg.ledger_path)
        try:
            return families(gather(cfg, ledger))
        finally:
            ledger.close()


class Publisher:
    """The daemon's metrics: its stage timings, and where the whole set goes (port, textfile)."""

    TEXTFILE_EVERY = 10.0  # seconds between rewrites of the textfile

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()  # no describe at register: that would read the ledger
        self.stage_seconds = Histogram("tfwb_stage_duration_seconds", "A daemon stage call that changed the ledger.",
                                       ["stage"], registry=self.registry,
                                       buckets=(0.05, 0.25, 1, 5, 15, 60, 300, 1800))
        self.registry.register(_LedgerCollector(self))
        self._written = 0.0
        self._lock = threading.Lock()
        self.server: Any = None

    def start(self, listen: tuple[str, int] | None) -> None:
        if listen is not None:
            self.server, _thread = start_http_server(listen[1], addr=listen[0], registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", *listen)

    def observe(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def write_textfile(self, path: Path | None, now: float | None = None, force: bool = False) -> None:
        now = time.time() if now is None else now
        if path is None or (not force and now - self._written < self.TEXTFILE_EVERY):
            return
        self._written = now
        try:
            write_to_textfile(str(path), self.registry)  # a temporary file renamed over it
        except OSError as exc:
            log.warning("cannot write the metrics textfile %s: %s", path, exc.strerror or exc)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def stage_name(stage: Any) -> str:
    """``seal_stage`` -> ``seal``; the label of a stage's timings."""
    return re.sub(r"_stage$", "", getattr(stage, "__name__", "stage"))
