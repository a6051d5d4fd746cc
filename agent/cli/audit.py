"""`tfwb-agent audit verify`: check the hash chain of the audit log."""
from __future__ import annotations

from pathlib import Path

import click

from .. import audit as audit_mod
from .. import statedir
from .common import Context, pass_ctx


@click.group("audit")
def command() -> None:
    """The append-only audit log of sealed, exported, imported and delivered bundles."""


@command.command("verify")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Audit log to check. Default: <state_dir>/audit.log from the config.")
@pass_ctx
def verify(ctx: Context, log_path: Path | None) -> None:
    """Find any edited, removed or reordered line. Exit status 1 when the chain is broken."""
    path = log_path or statedir.audit_log(ctx.config)
    if not path.exists():
        raise click.ClickException(f"{path}: no audit log there (nothing has been sealed yet, or a wrong --log)")
    problems = audit_mod.verify(path)
    if problems:
        for p in problems:
            click.echo(f"{path}: {p}", err=True)
        raise SystemExit(1)
    seq, _ = audit_mod.head(path)
    click.echo(f"{path}: {seq} lines, chain intact")
