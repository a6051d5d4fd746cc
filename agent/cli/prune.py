"""`tfwb-agent prune`: apply retention now (what the daemon does every retention.interval_seconds)."""
from __future__ import annotations

import click

from .. import retention
from ..status_view import human_size
from .common import Context, echo_json, pass_ctx


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: removed, freed_bytes, kept_unconfirmed.")
@pass_ctx
def command(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Remove outbox bundles known to have arrived (delivered by this host, or said delivered
    by a gateway's receipt), staged runs on a gateway once delivered, and quarantine entries
    older than retention.quarantine_days. Bundles not known to have arrived stay, unless
    retention.outbox_max_age_days or retention.outbox_max_mb say otherwise."""
    with ctx.writing("prune"):
        report = retention.prune(ctx.config, ctx.ledger(), dry_run=dry_run)
    if as_json:
        echo_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for r in report.removed:
        click.echo(f"{verb} {r.kind} {r.ident} ({human_size(r.bytes)}): {r.why}")
    click.echo(f"{verb} {len(report.removed)} item(s), {human_size(report.freed)}; "
               f"{report.kept_unconfirmed} outbox bundle(s) kept: not known to have arrived")
