"""`tfwb-agent audit verify`: check the hash chain of the audit log."""
from __future__ import annotations

from pathlib import Path

import click

from .. import audit as audit_mod
from .. import statedir
from .common import Context, echo_json, pass_ctx


@click.group("audit")
def command() -> None:
    """The append-only audit log of sealed, exported, imported and delivered bundles."""


@command.command("verify")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Audit log to check. Default: <state_dir>/audit.log from the config.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: log, ok, lines, problems.")
@pass_ctx
def verify(ctx: Context, log_path: Path | None, as_json: bool) -> None:
    """Find any edited, removed or reordered line. Exit status 1 when the chain is broken."""
    path = log_path or statedir.audit_log(ctx.config)
    if not path.exists():
        raise click.ClickException(f"{path}: no audit log there (nothing has been sealed yet, or a wrong --log)")
    problems = audit_mod.verify(path)
    seq = None if problems else audit_mod.head(path)[0]
    if as_json:
        echo_json({"log": str(path), "ok": not problems, "lines": seq, "problems": [str(p) for p in problems]})
    elif problems:
        for p in problems:
            click.echo(f"{path}: {p}", err=True)
    else:
        click.echo(f"{path}: {seq} lines, chain intact")
    if problems:
        raise SystemExit(1)
