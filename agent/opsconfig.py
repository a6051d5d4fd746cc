"""The operator's sections: ``[health]`` (when `tfwb-agent health` fails) and ``[metrics]``
(where the daemon publishes Prometheus metrics), validated here and registered with ``config``.

    [health]
    heartbeat_seconds = 900   # the daemon's loop has not turned for this long: unhealthy
    failing_seconds = 3600    # a run unsealed / a delivery undone, with an error, for this long

    [metrics]
    listen = "127.0.0.1:9464"                                  # served by the daemon (loopback)
    textfile = "/var/lib/node_exporter/textfile/tfwb.prom"     # or written for node-exporter

The disk floor is ``[retention] min_free_mb`` (the retention section's owner parses it; this
module only reads it: ``min_free_bytes``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_seconds: float = 900.0
    failing_seconds: float = 3600.0

    def describe(self) -> dict[str, Any]:
        return {"heartbeat_seconds": self.heartbeat_seconds, "failing_seconds": self.failing_seconds}


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None
    textfile: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {"listen": f"{self.listen[0]}:{self.listen[1]}" if self.listen else None,
                "textfile": str(self.textfile) if self.textfile else None}


def _table(source: str, name: str, raw: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(source, name, "must be a table")
    for key in raw:
        if key not in allowed:
            raise config_mod.ConfigError(source, f"{name}.{key}", f"unknown key (known: {', '.join(allowed)})")
    return raw


def _seconds(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise config_mod.ConfigError(source, key, f"must be a number of seconds greater than 0, got {value!r}")
    return float(value)


def validate_health(source: str, raw: Any) -> HealthConfig:
    t = _table(source, "health", raw, ("heartbeat_seconds", "failing_seconds"))
    d = HealthConfig()
    return HealthConfig(
        heartbeat_seconds=_seconds(source, "health.heartbeat_seconds", t.get("heartbeat_seconds", d.heartbeat_seconds)),
        failing_seconds=_seconds(source, "health.failing_seconds", t.get("failing_seconds", d.failing_seconds)))


def parse_listen(source: str, value: Any) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> (host, port). Only a loopback address: the metrics name projects
    and targets, and this agent opens no port to the network."""
    key = "metrics.listen"
    if not isinstance(value, str) or ":" not in value:
        raise config_mod.ConfigError(source, key, f'must be "HOST:PORT", e.g. "127.0.0.1:9464", got {value!r}')
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise config_mod.ConfigError(source, key, f"{host!r} is not a loopback address; metrics are served on "
                                     "127.0.0.1 (or ::1) only: scrape them through a local exporter or sidecar")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise config_mod.ConfigError(source, key, f"port must be 1-65535, got {port!r}")
    return host, int(port)


def validate_metrics(source: str, raw: Any) -> MetricsConfig:
    t = _table(source, "metrics", raw, ("listen", "textfile"))
    textfile = t.get("textfile")
    if textfile is not None and (not isinstance(textfile, str) or not textfile.startswith("/")
                                 or not textfile.endswith(".prom")):
        raise config_mod.ConfigError(source, "metrics.textfile", "must be an absolute path ending in .prom "
                                     f"(node-exporter reads only those), got {textfile!r}")
    return MetricsConfig(listen=parse_listen(source, t["listen"]) if "listen" in t else None,
                         textfile=Path(textfile) if textfile else None)


def health_config(cfg: config_mod.Config) -> HealthConfig:
    return cfg.sections.get("health") or HealthConfig()


def metrics_config(cfg: config_mod.Config) -> MetricsConfig:
    return cfg.sections.get("metrics") or MetricsConfig()


def min_free_bytes(cfg: config_mod.Config) -> int | None:
    """The free-space floor of the state directory's disk (``[retention] min_free_mb``), or None."""
    r = cfg.sections.get("retention")
    mb = r.get("min_free_mb") if isinstance(r, dict) else getattr(r, "min_free_mb", None)
    return None if mb is None else int(float(mb) * 1024 * 1024)


config_mod.SECTION_VALIDATORS["health"] = validate_health
config_mod.SECTION_VALIDATORS["metrics"] = validate_metrics
