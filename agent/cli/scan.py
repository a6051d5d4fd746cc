"""`tfwb-agent scan`: one reconcile pass, for scripts and cron."""
from __future__ import annotations

import click

from ..reconcile import reconcile
from ..pipeline import seal_stage
from ..seal import KeyFileError, keys_config, seal_keys
from .daemon import setup_logging
from .common import Context, echo_json, pass_ctx


@click.command("scan")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--seal", is_flag=True, help="Then redact and seal every run that ended, as the daemon would.")
@pass_ctx
def command(ctx: Context, as_json: bool, seal: bool) -> None:
    """Look at every run under the configured roots once, update the ledger, and exit.

    For cron and scripts where no daemon runs: `tfwb-agent scan --seal && tfwb-agent sync --to NAME --once`.
    """
    cfg = ctx.config
    if seal:
        try:
            seal_keys(keys_config(cfg))
        except (KeyFileError, ValueError) as exc:
            raise click.ClickException(f"--seal needs this node's keys: {exc}") from None  # exc says what to do
    missing = [str(r) for r in cfg.watch.roots if not r.is_dir()]
    with ctx.writing("scan --seal" if seal else "scan"):
        ledger = ctx.ledger()
        result = reconcile(ledger, cfg)
        if seal:
            setup_logging(False)
            while seal_stage(ledger, cfg):
                pass
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
