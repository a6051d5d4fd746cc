"""`tfwb-agent config check|example`: validate the config and what it names, or print one to start from."""
from __future__ import annotations

import sys
import tomllib
from typing import Any

import click

from .. import config_examples, config_files
from .common import Context, echo_json, pass_ctx
from ..deliver.settings import check_references


@click.group("config")
def command() -> None:
    """Check the configuration, or print a complete one to start from."""


@command.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the effective config, ok, problems, "
              "warnings and which keys are defaults.")
@click.option("--no-files", is_flag=True, help="Check the config file alone, not the files it names (a config "
              "checked away from the host it is for, e.g. a ConfigMap in CI).")
@pass_ctx
def check(ctx: Context, as_json: bool, no_files: bool) -> None:
    """Validate the config, check the files it names, print what is in force.

    Every key file must exist, be readable by this user and (private keys) not be readable
    by others; every trusted_nodes / trusted_gateways glob must match a public key. Values
    not in the file are shown as defaults. Secrets appear only as where they come from.

    Exit status: 0 usable (warnings may be printed); 1 a problem (each named, with what to do).
    """
    cfg = ctx.config
    with open(cfg.source, "rb") as f:  # loaded just now: what the file itself says, to tell defaults apart
        raw = tomllib.load(f)
    desc, defaults = config_files.effective(cfg, raw)
    findings = [] if no_files else config_files.check_files(cfg)
    findings += _roles(cfg)
    problems = [str(f) for f in findings if f.level == config_files.PROBLEM]
    warnings = [str(f) for f in findings if f.level == config_files.WARNING]
    if as_json:
        echo_json({**desc, "ok": not problems, "problems": problems, "warnings": warnings, "defaults": defaults})
    else:
        click.echo(f"{cfg.source}: OK" if not problems else f"{cfg.source}: {len(problems)} problem(s)")
        _print(desc, set(defaults))
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        for p in problems:
            click.echo(f"error: {p}", err=True)
    if problems:
        sys.exit(1)


def _roles(cfg: Any) -> list[config_files.Finding]:
    """Keys that only make sense together: a node key with no recipient seals nothing."""
    out = []
    kc = cfg.sections.get("keys")
    if kc is not None and kc.node_key is not None and not kc.recipients:
        out.append(config_files.Finding(config_files.WARNING, "keys.recipients", "empty: this node seals nothing "
                                        "until the gateway's age1... recipient (`tfwb-agent keys init --gateway`) "
                                        "is listed"))
    if "policy" in cfg.sections:  # a typo in a policy's target would silently send nothing
        out += [config_files.Finding(config_files.PROBLEM, "policy", m) for m in check_references(cfg)]
    return out


def _print(d: dict, defaults: set[str], prefix: str = "", indent: int = 0) -> None:
    for k, v in d.items():
        name = prefix + k
        mark = "   (default)" if name in defaults else ""
        if isinstance(v, dict) and v:
            click.echo(" " * indent + f"{k}:{mark}")
            _print(v, defaults if not mark else set(), name + ".", indent + 2)
        else:
            click.echo(" " * indent + f"{k} = {v}{mark}")


@command.command("example")
@click.option("--node", "role", flag_value="node", default=True, help="A GPU node's config (the default).")
@click.option("--gateway", "role", flag_value="gateway", help="The gateway's config.")
def example(role: str) -> None:
    """Print a complete, commented config to start from (`config check` accepts it once the keys exist)."""
    click.echo(config_examples.GATEWAY if role == "gateway" else config_examples.NODE, nl=False)
