"""`tfwb-agent receipts`: the gateway's signed word on what arrived, and a node taking it in."""
from __future__ import annotations

from pathlib import Path

import click

from .. import receipts as rc
from ..seal import keys_config, keystore, minisign
from .common import Context, echo_json, pass_ctx


@click.group("receipts")
def command() -> None:
    """Receipts carry back across the gap which bundles a gateway imported, delivered or
    refused (format: the README's "Receipts"). A node that takes one may then prune what arrived."""


@command.command("init-key")
@click.option("--force", is_flag=True, help="Replace an existing key (nodes must trust the new public key).")
@pass_ctx
def init_key(ctx: Context, force: bool) -> None:
    """On a gateway: write keys.receipt_key (0600, never printed) and <receipt_key>.pub, and print
    the public key: copy it to each node, into a path keys.trusted_gateways names."""
    kc = keys_config(ctx.config)
    if kc.receipt_key is None:
        raise click.ClickException("no keys.receipt_key in the config: name the file the receipt key goes to")
    pub_path = Path(f"{kc.receipt_key}.pub")
    sk = minisign.generate()
    try:
        keystore.write_file(kc.receipt_key, sk.to_file(), 0o600, overwrite=force)
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    keystore.write_file(pub_path, sk.public().to_file(), 0o644, overwrite=True)
    click.echo(f"wrote {kc.receipt_key} and {pub_path} (key id {sk.public().key_id_hex})", err=True)
    click.echo(sk.public().to_file(), nl=False)


@command.command("export")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the medium going back to the nodes is mounted.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: file, sequence, counts.")
@pass_ctx
def export(ctx: Context, dest: Path, as_json: bool) -> None:
    """On a gateway: write a signed receipt of every bundle it imported, delivered or refused
    into DIR (tfwb-receipt-<gateway>-<sequence>.json and its .minisig)."""
    kc = keys_config(ctx.config)
    if kc.receipt_key is None:
        raise click.ClickException("no keys.receipt_key in the config: this host cannot sign receipts "
                                   "(set it, then run `tfwb-agent receipts init-key`)")
    try:
        key = keystore.load_node_key(kc.receipt_key)
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc).replace("node key", "receipt key").replace(
            "keys init creates it", "receipts init-key creates it")) from None
    with ctx.writing("receipts export"):
        try:
            path, doc = rc.issue(ctx.config, ctx.ledger(), dest, key)
        except rc.ReceiptError as exc:
            raise click.ClickException(f"receipt not written: {exc.detail}") from None
    counts: dict[str, int] = {}
    for e in doc["bundles"]:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    if as_json:
        echo_json({"file": str(path), "sequence": doc["sequence"], "gateway": doc["gateway"], "counts": counts})
        return
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no bundles yet"
    click.echo(f"wrote {path} (sequence {doc['sequence']}; {shown})")


@command.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per receipt file.")
@pass_ctx
def import_(ctx: Context, directory: Path, as_json: bool) -> None:
    """On a node: verify the receipts in DIRECTORY against keys.trusted_gateways and mark this
    node's bundles delivered, imported or refused as the newest receipt of each gateway says.

    \b
    Exit status: 0 every receipt applied or superseded (or none there); 1 any refused.
    """
    kc = keys_config(ctx.config)
    try:
        trusted = {t.key.key_id_hex: t.key for t in keystore.load_trusted(kc.trusted_gateways)}
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    if not trusted:
        raise click.ClickException("keys.trusted_gateways matches no public key file: every receipt would be "
                                   "refused (copy the gateway's receipt key .pub there)")
    with ctx.writing("receipts import"):
        outcomes = rc.take(ctx.ledger(), directory, trusted)
    if as_json:
        echo_json([o.as_dict() for o in outcomes])
    else:
        for o in outcomes:
            if o.status == "applied":
                marked = ", ".join(f"{k}: {v}" for k, v in sorted(o.marked.items())) or "none of this node's"
                ignored = sum(o.ignored.values())
                click.echo(f"applied  {o.file}: gateway {o.gateway} sequence {o.sequence}; bundles {marked}; "
                           f"{o.runs_delivered} run(s) now delivered" + (f"; {ignored} entries not this node's"
                                                                         if ignored else ""))
            elif o.status == "superseded":
                click.echo(f"skipped  {o.file}: {o.detail}")
            else:
                click.echo(f"refused  {o.file}: {o.reason} ({rc.REASONS[o.reason or 'malformed']}): {o.detail}")
        if not outcomes:
            click.echo(f"no receipts ({rc.PREFIX}*.json) in {directory}", err=True)
    if any(o.status == "refused" for o in outcomes):
        raise SystemExit(1)
