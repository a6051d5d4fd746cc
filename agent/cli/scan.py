"""`tfwb-agent scan`: one reconcile pass, for scripts and cron."""
from __future__ import annotations

import click

from ..reconcile import reconcile
from .common import Context, echo_json, pass_ctx


@click.command("scan")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def command(ctx: Context, as_json: bool) -> None:
    """Look at every run under the configured roots once, update the ledger, and exit."""
    cfg = ctx.config
    missing = [str(r) for r in cfg.watch.roots if not r.is_dir()]
    ledger = ctx.ledger()
    result = reconcile(ledger, cfg)
    counts = ledger.counts()
    if as_json:
        echo_json({"seen": result.seen, "changed": result.changed, "claimed_elsewhere": result.claimed_elsewhere,
                   "missing_roots": missing, "counts": counts})
        return
    for r in missing:
        click.echo(f"warning: watch root {r} does not exist", err=True)
    click.echo(f"{result.seen} runs seen, {len(result.changed)} changed, "
               f"{result.claimed_elsewhere} held by other agents; "
               + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
