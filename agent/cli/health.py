"""`tfwb-agent health`: exit 0 when this agent is healthy, 1 (with the reasons) when not.

For probes: the systemd watchdog's companion, the image's HEALTHCHECK, Kubernetes liveness and
readiness. It reads only (the ledger, the heartbeat file, the keys' readability, free space).
"""
from __future__ import annotations

import sys

import click

from .. import health
from .common import Context, echo_json, pass_ctx


@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: healthy, checks, problems.")
@click.option("--no-daemon", is_flag=True, help="Do not require a running daemon (a gateway run by a timer).")
@click.option("--only", multiple=True, type=click.Choice(["daemon", "sealing", "delivery", "disk"]),
              help="Only these checks (repeatable). A liveness probe: --only daemon (a restart cures a hung "
                   "loop, not a missing key); readiness: all.")
@pass_ctx
def command(ctx: Context, as_json: bool, no_daemon: bool, only: tuple[str, ...]) -> None:
    """Check the daemon's heartbeat, sealing (keys, config, errors), delivery and the disk floor.

    \b
    Exit 0: healthy. Exit 1: unhealthy; each failing check says why, one line each.
    Limits: [health] heartbeat_seconds, failing_seconds; [retention] min_free_mb.
    """
    result = health.check(ctx.config, ctx.ledger(), want_daemon=not no_daemon, only=only)
    if as_json:
        echo_json(result)
    else:
        for c in result["checks"]:
            click.echo(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
        click.echo("healthy" if result["healthy"] else "unhealthy")
    sys.exit(0 if result["healthy"] else 1)
