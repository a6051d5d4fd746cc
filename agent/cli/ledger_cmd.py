"""`tfwb-agent ledger check` and `tfwb-agent ledger rebuild`: is the ledger sound; build it again
from the outbox, the audit log and the volume (the damaged one kept aside, never deleted)."""
from __future__ import annotations

import click

from .. import ledger as ledger_mod
from .. import statedir, statelock
from ..ledger.rebuild import rebuild as rebuild_ledger
from .common import Context, echo_json, pass_ctx


@click.group("ledger")
def command() -> None:
    """Check the ledger, or rebuild a damaged one."""


@command.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def check(ctx: Context, as_json: bool) -> None:
    """SQLite's integrity check and the ledger's own consistency (known states, sealed bundles
    present in the outbox, sealed runs with their bundles). Reads only. Exit 0 sound, 1 not."""
    cfg = ctx.config
    problems = ledger_mod.check(cfg.ledger_path, statedir.outbox(cfg))
    if as_json:
        echo_json({"ledger": str(cfg.ledger_path), "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"the ledger {cfg.ledger_path} is not sound:", err=True)
        for p in problems:
            click.echo(f"  - {p}", err=True)
        click.echo("run `tfwb-agent ledger rebuild` (stop the daemon first): it keeps this file aside and builds "
                   "a new ledger from the outbox, the audit log and the volume", err=True)
    else:
        click.echo(f"the ledger {cfg.ledger_path} is sound")
    raise SystemExit(1 if problems else 0)


@command.command("rebuild")
@click.option("--json", "as_json", is_flag=True, help="Print what was recovered as JSON.")
@pass_ctx
def rebuild(ctx: Context, as_json: bool) -> None:
    """Move the ledger aside (as ledger.sqlite3.damaged-TIME, with its -wal and -shm; never
    deleted) and build a new one: bundles from the outbox and the audit log, imports from
    staging, deliveries and approvals from the audit log, runs read again from the volume. A run
    this node sealed (its marker on the volume, or its bundle in the outbox) is recorded sealed
    and never sealed again. Refused while a daemon uses this state directory."""
    cfg = ctx.config
    daemon = statelock.StateLock(cfg.state_dir, statedir.DAEMON_LOCK, "ledger rebuild")
    if not daemon.acquire(wait=False):
        raise click.ClickException(
            f"a tfwb-agent daemon ({daemon.holder().describe()}) uses {cfg.state_dir}; stop it first "
            "(`systemctl stop tfwb-agent`), then run `tfwb-agent ledger rebuild` again")
    try:
        with ctx.writing("ledger rebuild"):
            report = rebuild_ledger(cfg)
    finally:
        daemon.release()
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"rebuilt the ledger {report.ledger}")
    if report.moved_aside:
        click.echo("  the old one kept as: " + ", ".join(report.moved_aside))
    click.echo("  runs: " + (", ".join(f"{n} {s}" for s, n in sorted(report.runs.items())) or "none"))
    click.echo("  bundles: " + (", ".join(f"{n} {s}" for s, n in sorted(report.bundles.items())) or "none"))
    click.echo(f"  runs recorded sealed: {report.runs_sealed_from_markers} from the volume's markers, "
               f"{report.runs_sealed_from_outbox} from the outbox; live runs going on after their sealed segments: "
               f"{report.live_resumed}")
    click.echo(f"  imports: {report.imports}, deliveries: {report.deliveries}, approvals: {report.approvals}")
    for note in report.notes:
        click.echo(f"  note: {note}")
