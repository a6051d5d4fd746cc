"""`tfwb-agent status`: every run, where it is in the pipeline and how it ended."""
from __future__ import annotations

import shutil
import time

import click

from ..status_view import (delivery_note, delivery_views, human_age, human_size, imported_view, run_view,
                           target_line)
from .. import failures
from ..health import sealing_paused  # the daemon's low-disk guard ([retention] min_free_mb)
from ..ledger.receipts import unconfirmed as unconfirmed_bundles
from .common import Context, echo_json, pass_ctx

DISK_FLOOR = 1 << 20  # less free than this in the state directory: work is paused


def _disk_warning(ctx: Context) -> str | None:
    floor = sealing_paused(ctx.config)
    if floor:
        return floor
    free = failures.free_bytes(ctx.config.state_dir)
    if free is None or free >= DISK_FLOOR:
        return None
    return (f"the disk holding {ctx.config.state_dir} is full ({free} bytes free): the daemon pauses its work "
            "until there is room again; free space there")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: runs, counts, targets.")
@pass_ctx
def command(ctx: Context, as_json: bool) -> None:
    """Show every run the agent knows, with counts per state.

    \b
    state:  live | ended | invalid | sealed | exported | delivered | quarantined
            (a gateway: each imported bundle, imported | delivered)
    ended:  finished | crashed | - (still live, or not a run)
    """
    ledger = ctx.ledger()
    now = time.time()
    deliveries = delivery_views(ledger.deliveries())
    views = [dict(run_view(r, now), deliveries=deliveries.get(r["run_id"], [])) for r in ledger.runs()]
    counts = ledger.counts()
    targets = ledger.targets()
    imported = [imported_view(i) for i in ledger.imports()]
    import_counts = ledger.import_counts()  # a gateway's runs are its imports
    for i in imported:
        i["deliveries"] = [d for d in deliveries.get(i["run_id"], []) if d["segment"] == i["segment"]]
    disk = _disk_warning(ctx)
    unconfirmed = [dict(u, age_seconds=now - u["created"]) for u in unconfirmed_bundles(ledger.db)]
    if as_json:
        echo_json({"runs": views, "counts": counts, "targets": targets, "imported": imported,
                   "import_counts": import_counts,
                   "quarantined": [{k: b[k] for k in ("name", "bundle_id", "run_id", "segment", "reason", "path")}
                                   for b in ledger.bundles("quarantined")],
                   "deliveries": [dict(d, run_id=rid) for rid, ds in deliveries.items() for d in ds],
                   "unconfirmed": unconfirmed, "node": ctx.config.node_name, "problems": [disk] if disk else []})
        return
    if disk:
        click.echo(f"warning: {disk}", err=True)
    if not views and imported:
        click.echo(f"{len(imported)} imported bundle(s) (this is a gateway):")
        for i in imported:
            click.echo(f"  {i['name'] or i['bundle_id']}  {i['state']}  from {i['signer']}  "
                       f"{delivery_note(i['deliveries']) or 'not delivered yet'}")
    elif not views:
        click.echo(f"No runs yet under {', '.join(map(str, ctx.config.watch.roots)) or '(no roots configured)'}."
                      " Is the daemon running? `tfwb-agent scan` looks once.")
    else:
        rows = [(v["run_id"] or "?", v["project"] or "-", v["state"], v["ended"] or "-", human_size(v["size"]),
                 str(v["steps"]), human_age(v["age_seconds"]), human_age(v["idle_seconds"]),
                 v["last_error"] or delivery_note(v["deliveries"]) or v["reason"] or "") for v in views]
        headers = ("RUN", "PROJECT", "STATE", "ENDED", "SIZE", "STEPS", "AGE", "IDLE", "NOTE")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
        room = max(20, shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths))
        for r in [headers, *rows]:
            note = r[-1] if len(r[-1]) <= room else r[-1][: room - 1] + "…"
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + note)
        if any(len(r[-1]) > room for r in rows):
            click.echo("(the whole note: tfwb-agent runs show RUN)")
    click.echo("  ".join(f"{state}: {n}" for state, n in sorted(counts.items())) or "")
    if import_counts:
        click.echo("imported bundles: " + "  ".join(f"{state}: {n}" for state, n in sorted(import_counts.items())))
    if unconfirmed:  # sealed or exported, and nothing (a delivery here, a receipt) says it arrived
        said = {k: sum(1 for u in unconfirmed if u["gateway_says"] == k) for k in ("imported", "refused")}
        click.echo(f"unconfirmed: {len(unconfirmed)} bundle(s), the oldest for {human_age(unconfirmed[0]['age_seconds'])}"
                   f" (gateway receipts say imported: {said['imported']}, refused: {said['refused']})")
    for t in targets:
        click.echo(target_line(t, now))
