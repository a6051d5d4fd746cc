"""`tfwb-agent approve RUN_ID`: let a run that a `hold = true` policy keeps go out."""
from __future__ import annotations

import getpass

import click

from .common import Context, echo_json, pass_ctx


@click.command("approve")
@click.argument("run_id")
@click.option("--by", "who", default=None, help="Who approves (default: the current user).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def command(ctx: Context, run_id: str, who: str | None, as_json: bool) -> None:
    """Approve RUN_ID for delivery under policies with hold = true."""
    with ctx.writing("approve"):
        ledger = ctx.ledger()
        if not ledger.knows_run_id(run_id):
            raise click.ClickException(f"no run {run_id!r} is known here (see `tfwb-agent status`)")
        who = who or getpass.getuser()
        now = ledger.approve(run_id, who)
    if as_json:
        echo_json({"run_id": run_id, "approved_by": who, "approved_at": now})
    else:
        click.echo(f"approved {run_id} (by {who}); it goes out on the next sync round that policy allows")
