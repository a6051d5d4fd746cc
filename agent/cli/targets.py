"""`tfwb-agent targets check`: is each target reachable, and is its key accepted?"""
from __future__ import annotations

import sys

import click

from ..deliver import clients, engine
from ..deliver.probe import NEEDS_A_PERSON, OFFLINE
from ..deliver.settings import check_references, sync_settings, targets
from .common import Context, echo_json, pass_ctx


@click.group("targets")
def command() -> None:
    """Delivery targets from [targets.NAME]."""


@command.command("check")
@click.option("--json", "as_json", is_flag=True)
@click.argument("names", nargs=-1)
@pass_ctx
def check(ctx: Context, as_json: bool, names: tuple[str, ...]) -> None:
    """Probe each target (or NAMES): reachable? key accepted? the server's version, and whether the
    target's wandb client ([targets.NAME] wandb, installed here the first time) is too new for it.
    Records the answer for `status`. Exit status: 0 all online, 1 some offline, 3 some key rejected
    or missing, a certificate not trusted, a client too new for the server or not installable."""
    cfg = ctx.config
    all_t = targets(cfg)
    if not all_t:
        raise click.ClickException(f"no [targets.NAME] in {cfg.source}")
    unknown = [n for n in names if n not in all_t]
    if unknown:
        raise click.ClickException(f"no such target: {', '.join(unknown)} (known: {', '.join(sorted(all_t))})")
    clients.announce = lambda message: click.echo(message, err=True)
    ledger = ctx.ledger()
    out = []
    for name in names or sorted(all_t):
        t = all_t[name]
        res, _row, _key = engine.probe_target(ledger, name, t, sync_settings(cfg))
        out.append({"name": name, "base_url": t.base_url, "status": res.status, "detail": res.detail})
    warnings = check_references(cfg)
    if as_json:
        echo_json({"targets": out, "warnings": warnings})
    else:
        for o in out:
            click.echo(f"{o['name']}: {o['status'].replace('_', ' ')} - {o['detail']}")
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
    statuses = {o["status"] for o in out}
    sys.exit(3 if statuses & NEEDS_A_PERSON else 1 if OFFLINE in statuses else 0)
