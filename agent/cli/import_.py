"""`tfwb-agent import DIR`: on the gateway, verify, decrypt, check and stage carried bundles."""
from __future__ import annotations

from pathlib import Path

import click

from ..seal import REASONS, keys_config, keystore
from ..seal.carry import ImportOutcome, ImportStopped, import_dir
from .common import Context, echo_json, pass_ctx


@click.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@pass_ctx
def command(ctx: Context, directory: Path, as_json: bool) -> None:
    """Import every bundle in DIRECTORY: signature against keys.trusted_nodes, decryption with
    keys.identity, every hash against the manifest; extract into <state_dir>/staging/<bundle_id>/
    and queue for delivery. A refused bundle is copied into <state_dir>/quarantine/ with its
    reason; a bundle id that is not a plain name is refused as bad_id, one already imported
    with other content as conflict (the imported one stays).

    \b
    Exit status: 0 every bundle imported (or none there); 1 any refused or skipped, or an error.
    """
    try:
        keys = keystore.open_keys(keys_config(ctx.config))
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    if not keys.trusted:
        raise click.ClickException("keys.trusted_nodes matches no public key file: every bundle would be refused")
    stopped = None
    with ctx.writing("import"):
        try:
            outcomes = import_dir(ctx.config, keys, ctx.ledger(), directory)
        except ImportStopped as exc:
            outcomes, stopped = exc.outcomes, exc
    _show(outcomes, directory, as_json)
    if stopped is not None:
        raise click.ClickException(str(stopped))
    if any(o.status != "imported" for o in outcomes):
        raise SystemExit(1)


def _show(outcomes: list[ImportOutcome], directory: Path, as_json: bool) -> None:
    if as_json:
        echo_json([o.as_dict() for o in outcomes])
        return
    for o in outcomes:
        if o.status == "imported":
            click.echo(f"imported {o.name}: run {o.run_id} segment {o.segment}, signed by {o.signer}, "
                       f"staged in {o.staged}")
        elif o.status == "skipped":
            click.echo(f"skipped  {o.name}: {o.detail}")
        else:
            click.echo(f"refused  {o.name}: {o.reason} ({REASONS[o.reason or 'bad_signature']}): {o.detail}; "
                       f"quarantined in {o.quarantined}")
    if not outcomes:
        click.echo(f"no bundles (*.tar.zst.age) in {directory}", err=True)
