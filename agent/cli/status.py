"""`tfwb-agent status`: every run, where it is in the pipeline and how it ended."""
from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from ..status_view import human_age, human_size, run_view
from .common import Context, echo_json, pass_ctx


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: runs, counts, targets.")
@pass_ctx
def command(ctx: Context, as_json: bool) -> None:
    """Show every run the agent knows, with counts per state.

    \b
    state:  live | ended | invalid | sealed | exported | delivered | quarantined
    ended:  finished | crashed | - (still live, or not a run)
    """
    ledger = ctx.ledger()
    now = time.time()
    views = [run_view(r, now) for r in ledger.runs()]
    counts = ledger.counts()
    targets = [dict(r) for r in ledger.db.execute("SELECT * FROM targets ORDER BY name")]
    if as_json:
        echo_json({"runs": views, "counts": counts, "targets": targets, "node": ctx.config.node_name})
        return
    console = Console()
    if not views:
        console.print(f"No runs yet under {', '.join(map(str, ctx.config.watch.roots)) or '(no roots configured)'}."
                      " Is the daemon running? `tfwb-agent scan` looks once.")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("RUN", "PROJECT", "STATE", "ENDED", "SIZE", "STEPS", "AGE", "IDLE", "NOTE"):
            table.add_column(col, no_wrap=col != "NOTE")
        for v in views:
            table.add_row(v["run_id"] or "?", v["project"] or "-", v["state"], v["ended"] or "-",
                          human_size(v["size"]), str(v["steps"]), human_age(v["age_seconds"]),
                          human_age(v["idle_seconds"]),
                          v["last_error"] or v["reason"] or "")
        console.print(table)
    console.print("  ".join(f"{state}: {n}" for state, n in sorted(counts.items())) or "")
    for t in targets:
        console.print(f"target {t['name']}: {t['status']}" + (f" ({t['detail']})" if t["detail"] else ""))
