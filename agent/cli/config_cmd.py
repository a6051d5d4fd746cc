"""`tfwb-agent config check|example`: validate the config, or print a starting point."""
from __future__ import annotations

import click

from .. import config as config_mod
from .common import Context, echo_json, pass_ctx

EXAMPLE = '''\
# /etc/tfwb-agent/agent.toml
state_dir = "/var/lib/tfwb-agent"       # ledger, staging, outbox
# node_name = "gpu-node-01"             # default: the host name

[watch]
roots = ["/srv/shared/runs"]            # where training containers write offline runs
mode = "inotify"                        # "poll" on NFS/Lustre
quiet_seconds = 120                     # no growth this long and no exit record: crashed
reconcile_seconds = 60                  # full re-scan, catches missed events
poll_seconds = 2                        # poll interval when mode = "poll"
lease_seconds = 60                      # claim lease when several agents share a volume

[path_map]
"/runs" = "/srv/shared/runs"            # container path = host path
'''


@click.group("config")
def command() -> None:
    """Check the configuration."""


@command.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
@pass_ctx
def check(ctx: Context, as_json: bool) -> None:
    """Validate the config and print what is in force (secrets only as where they come from)."""
    cfg = ctx.config
    desc = config_mod.describe(cfg)
    if as_json:
        echo_json(desc)
        return
    click.echo(f"{cfg.source}: OK")
    _print(desc)
    for r in cfg.watch.roots:
        if not r.is_dir():
            click.echo(f"warning: watch root {r} does not exist (yet)", err=True)


def _print(d: dict, indent: int = 0) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(" " * indent + f"{k}:")
            _print(v, indent + 2)
        else:
            click.echo(" " * indent + f"{k} = {v}")


@command.command("example")
def example() -> None:
    """Print an example config to start from."""
    click.echo(EXAMPLE, nl=False)
