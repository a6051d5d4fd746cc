"""`tfwb-agent runs show RUN`: everything the ledger knows about one run."""
from __future__ import annotations

import click

from ..status_view import run_view
from .common import Context, echo_json, pass_ctx


@click.group("runs")
def command() -> None:
    """Look at single runs."""


@command.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def show(ctx: Context, run: str, as_json: bool) -> None:
    """Show one run, by run id, run directory, or directory name."""
    rows = ctx.ledger().find_runs(run)
    if not rows:
        raise click.ClickException(f"no run {run!r} in the ledger; `tfwb-agent status` lists them, "
                                   "`tfwb-agent scan` looks for new ones")
    views = [dict(run_view(r), facts=r["facts"]) for r in rows]
    if as_json:
        echo_json(views if len(views) > 1 else views[0])
        return
    for v in views:
        for k, val in v.items():
            if val not in (None, [], {}):
                click.echo(f"{k:>16}: {val}")
        click.echo()
