"""`tfwb-agent export --to DIR`: copy sealed bundles to removable media, all or nothing."""
from __future__ import annotations

from pathlib import Path

import click

from ..seal import keys_config, keystore
from ..seal.carry import ExportError, export_to
from .common import Context, echo_json, json_always, pass_ctx


@click.command("export")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the medium is mounted.")
@json_always
@pass_ctx
def command(ctx: Context, dest: Path) -> None:
    """Copy every sealed, not yet exported bundle with its signature and an index file to DIR,
    read the copies back to check them, and only then mark them exported."""
    kc = keys_config(ctx.config)
    if kc.node_pub is None:
        raise click.ClickException("no keys.node_key in the config: cannot check the copies' signatures")
    try:
        pub = keystore.load_public_key(kc.node_pub)
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    with ctx.writing("export"):
        try:
            report = export_to(ctx.config, ctx.ledger(), dest, pub)
        except ExportError as exc:
            raise click.ClickException(f"export failed: {exc}") from None
    if not report.exported:
        click.echo("nothing to export: no sealed bundle is waiting", err=True)
    echo_json({"to": report.target, "index": report.index, "exported": report.exported})
