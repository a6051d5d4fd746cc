"""`tfwb-agent approve RUN_ID`: let a run that a `hold = true` policy keeps go out."""
from __future__ import annotations

import getpass
import time

import click

from .. import audit, statedir
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
        known = ledger.db.execute("SELECT 1 FROM bundles WHERE run_id = ? UNION SELECT 1 FROM runs WHERE run_id = ?",
                                  (run_id, run_id)).fetchone()
        if known is None:
            raise click.ClickException(f"no run {run_id!r} is known here (see `tfwb-agent status`)")
        who = who or getpass.getuser()
        now = time.time()
        with ledger.tx() as db:
            db.execute("INSERT OR REPLACE INTO approvals (run_id, approved_at, approved_by) VALUES (?, ?, ?)",
                       (run_id, now, who))
            # Held deliveries become pending: the next round asks the policy again.
            db.execute("UPDATE deliveries SET state = 'pending', updated = ? WHERE run_id = ? AND state = 'held'",
                       (now, run_id))
        audit.append(statedir.audit_log(ctx.config), {"kind": "approved", "run_id": run_id, "by": who})
    if as_json:
        echo_json({"run_id": run_id, "approved_by": who, "approved_at": now})
    else:
        click.echo(f"approved {run_id} (by {who}); it goes out on the next sync round that policy allows")
