"""The ``[retention]`` config section: how long what the agent keeps on disk stays there.

    [retention]
    # outbox_max_age_days = 90   # remove outbox bundles older than this, confirmed or not
    # outbox_max_mb = 20000      # keep the outbox under this size, oldest bundles first
    quarantine_days = 30         # refused bundles are kept this long, then removed
    interval_seconds = 600       # how often the daemon applies retention
    # min_free_mb = 1024         # the daemon's low-disk guard (read by the daemon, not here)

A bundle leaves the outbox on its own only once it is known to have arrived (delivered by
this host, or confirmed by a gateway's receipt). The two outbox limits are the site's explicit
choice to drop bundles that may never have arrived; neither is set by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import config as config_mod

_ALLOWED = ("outbox_max_age_days", "outbox_max_mb", "quarantine_days", "interval_seconds", "min_free_mb")


@dataclass(frozen=True)
class RetentionConfig:
    outbox_max_age_days: float | None = None
    outbox_max_mb: float | None = None
    quarantine_days: float = 30.0
    interval_seconds: float = 600.0
    min_free_mb: float | None = None  # the low-disk guard's floor; its owner is the daemon

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ALLOWED}


def _number(source: str, key: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise config_mod.ConfigError(source, f"retention.{key}", f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise config_mod.ConfigError(source, f"retention.{key}",
                                     f"must be greater than {'or equal to ' if allow_zero else ''}0, got {value}")
    return float(value)


def validate(source: str, raw: Any) -> RetentionConfig:
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(source, "retention", "must be a table")
    for key in raw:
        if key not in _ALLOWED:
            raise config_mod.ConfigError(source, f"retention.{key}", f"unknown key (known: {', '.join(_ALLOWED)})")
    optional = {k: _number(source, k, raw[k]) for k in ("outbox_max_age_days", "outbox_max_mb") if k in raw}
    return RetentionConfig(
        **optional,
        quarantine_days=_number(source, "quarantine_days", raw.get("quarantine_days", 30)),
        interval_seconds=_number(source, "interval_seconds", raw.get("interval_seconds", 600)),
        min_free_mb=_number(source, "min_free_mb", raw["min_free_mb"], allow_zero=True) if "min_free_mb" in raw
        else None,
    )


def retention_config(cfg: config_mod.Config) -> RetentionConfig:
    return cfg.sections.get("retention") or RetentionConfig()


config_mod.SECTION_VALIDATORS["retention"] = validate
