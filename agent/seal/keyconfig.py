"""The ``[keys]`` config section, validated here and registered with ``config``.

    [keys]
    node_key = "/etc/tfwb-agent/node.key"           # signs this node's bundles
    recipients = ["age1..."]                        # who can open them (one or more)
    identity = "/etc/tfwb-agent/gateway.agekey"     # only where bundles are opened
    trusted_nodes = ["/etc/tfwb-agent/nodes/*.pub"] # whose bundles are accepted
    receipt_key = "/etc/tfwb-agent/receipt.key"     # a gateway: signs its receipts
    trusted_gateways = ["/etc/tfwb-agent/gateways/*.pub"]  # a node: whose receipts are accepted

Private keys are named by path only; nothing secret is ever inline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as config_mod
from .. import config_checks as checks
from .agekeys import AgeKeyError, parse_recipient

_ALLOWED = ("node_key", "recipients", "identity", "trusted_nodes", "receipt_key", "trusted_gateways")


@dataclass(frozen=True)
class KeysConfig:
    node_key: Path | None = None
    recipients: tuple[str, ...] = ()
    identity: Path | None = None
    trusted_nodes: tuple[str, ...] = ()
    receipt_key: Path | None = None          # receipts (agent/receipts.py)
    trusted_gateways: tuple[str, ...] = ()   # receipts (agent/receipts.py)

    @property
    def node_pub(self) -> Path | None:
        return Path(f"{self.node_key}.pub") if self.node_key else None

    def describe(self) -> dict[str, Any]:
        return {
            "node_key": str(self.node_key) if self.node_key else None,
            "recipients": list(self.recipients),
            "identity": str(self.identity) if self.identity else None,
            "trusted_nodes": list(self.trusted_nodes),
            "receipt_key": str(self.receipt_key) if self.receipt_key else None,
            "trusted_gateways": list(self.trusted_gateways),
        }


def _path(source: str, key: str, value: Any) -> Path:
    return checks.absolute_path(source, f"keys.{key}", value)


def validate(source: str, raw: Any) -> KeysConfig:
    checks.table(source, "keys", raw)
    inline = " (private keys are named by path, never inline)"
    checks.known_keys(source, "keys", raw, _ALLOWED, {k: inline for k in raw if "secret" in k or k == "key"})
    recipients = raw.get("recipients", [])
    if isinstance(recipients, str) or not isinstance(recipients, list):
        raise config_mod.ConfigError(source, "keys.recipients", "must be a list of age1... recipients")
    for i, r in enumerate(recipients):
        if isinstance(r, str) and r.startswith("AGE-SECRET-KEY-"):
            raise config_mod.ConfigError(source, f"keys.recipients[{i}]",
                                         "is a secret identity, not a recipient; put the identity in a "
                                         "file named by keys.identity and list its age1... recipient here")
        try:
            parse_recipient(r if isinstance(r, str) else repr(r))
        except AgeKeyError as exc:
            raise config_mod.ConfigError(source, f"keys.recipients[{i}]", str(exc)) from None
    trusted = raw.get("trusted_nodes", [])
    if isinstance(trusted, str) or not isinstance(trusted, list):
        raise config_mod.ConfigError(source, "keys.trusted_nodes", "must be a list of paths or globs to .pub files")
    for i, t in enumerate(trusted):
        _path(source, f"trusted_nodes[{i}]", t)
    gateways = raw.get("trusted_gateways", [])
    if isinstance(gateways, str) or not isinstance(gateways, list):
        raise config_mod.ConfigError(source, "keys.trusted_gateways", "must be a list of paths or globs to .pub files")
    for i, g in enumerate(gateways):
        _path(source, f"trusted_gateways[{i}]", g)
    return KeysConfig(
        node_key=_path(source, "node_key", raw["node_key"]) if "node_key" in raw else None,
        recipients=tuple(recipients),
        identity=_path(source, "identity", raw["identity"]) if "identity" in raw else None,
        trusted_nodes=tuple(trusted),
        receipt_key=_path(source, "receipt_key", raw["receipt_key"]) if "receipt_key" in raw else None,
        trusted_gateways=tuple(gateways),
    )


def keys_config(cfg: config_mod.Config) -> KeysConfig:
    return cfg.sections.get("keys") or KeysConfig()


config_mod.SECTION_VALIDATORS["keys"] = validate
