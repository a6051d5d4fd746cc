"""`tfwb-agent keys`: create this host's keys and show their public halves."""
from __future__ import annotations

import contextlib

import click

from ..seal import agekeys, keystore, minisign
from ..seal.keyconfig import KeysConfig, keys_config
from .common import Context, echo_json, json_always, pass_ctx


@click.group("keys")
def command() -> None:
    """Create and show the keys that sign (node) and open (gateway) bundles."""


@command.command("init")
@click.option("--node", "role", flag_value="node", help="Ed25519 signing key pair at keys.node_key (+ .pub).")
@click.option("--gateway", "role", flag_value="gateway", help="age X25519 identity at keys.identity.")
@click.option("--force", is_flag=True, help="Replace an existing key (bundles signed/encrypted with the old one "
                                             "can no longer be checked/opened with the new).")
@click.option("--if-missing", is_flag=True, help="Keep a key that is already there (print its public part); "
                                                  "for a first start that makes each node its own key.")
@pass_ctx
def init(ctx: Context, role: str | None, force: bool, if_missing: bool) -> None:
    """Write a new private key (mode 0600, never printed) and print its public part."""
    kc = keys_config(ctx.config)
    if role is None:
        raise click.UsageError("say which key: --node or --gateway")
    if force and if_missing:
        raise click.UsageError("--force replaces a key, --if-missing keeps it: give one of them")
    if if_missing and _print_existing(kc, role):
        return
    # Not while the daemon signs with the key being replaced. Keys live outside the state
    # directory: one that does not exist yet is not created for this.
    with ctx.writing("keys init") if ctx.config.state_dir.is_dir() else contextlib.nullcontext():
        _write_key(kc, role, force)


def _print_existing(kc: KeysConfig, role: str) -> bool:
    """Print the public part of the key already at the configured path; False if there is none."""
    path = kc.node_key if role == "node" else kc.identity
    if path is None or not (path.exists() or path.is_symlink()):
        return False
    try:
        if role == "node":
            pub = keystore.load_node_key(path).public()  # the private key is the truth, not the .pub
            if not kc.node_pub.exists():  # type: ignore[union-attr]
                keystore.write_file(kc.node_pub, pub.to_file(), 0o644)  # type: ignore[arg-type]
            click.echo(f"node signing key {path} already exists; kept", err=True)
            click.echo(f"key id {pub.key_id_hex}")
            click.echo(pub.base64())
        else:
            click.echo(f"age identity {path} already exists; kept", err=True)
            for r in agekeys.recipients_of(keystore.load_identities(path)):
                click.echo(r)
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    return True


def _write_key(kc: KeysConfig, role: str, force: bool) -> None:
    try:
        if role == "node":
            if kc.node_key is None:
                raise click.ClickException("set keys.node_key in the config first (where the signing key lives)")
            sk = minisign.generate()
            keystore.write_file(kc.node_key, sk.to_file(), 0o600, overwrite=force)
            pub = sk.public()
            keystore.write_file(kc.node_pub, pub.to_file(), 0o644, overwrite=True)  # type: ignore[arg-type]
            click.echo(f"node signing key written to {kc.node_key} (mode 0600)", err=True)
            click.echo(f"public key {kc.node_pub}: copy it into the gateway's trusted_nodes directory", err=True)
            click.echo(f"key id {pub.key_id_hex}")
            click.echo(pub.base64())
        else:
            if kc.identity is None:
                raise click.ClickException("set keys.identity in the config first (where the age identity lives)")
            ident = agekeys.generate()
            keystore.write_file(kc.identity, agekeys.identity_file_text(ident), 0o600, overwrite=force)
            click.echo(f"age identity written to {kc.identity} (mode 0600); put this recipient in every "
                       "node's keys.recipients:", err=True)
            click.echo(str(ident.to_public()))
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the key: {exc}") from None


@command.command("show")
@json_always
@pass_ctx
def show(ctx: Context) -> None:
    """Print the public parts: this node's key, the recipients, the gateway's, trusted nodes."""
    kc = keys_config(ctx.config)
    out: dict[str, object] = {"recipients": list(kc.recipients)}
    problems: list[str] = []
    if kc.node_key is not None:
        node: dict[str, object] = {"key_file": str(kc.node_key), "public_key_file": str(kc.node_pub)}
        try:
            pub = keystore.load_public_key(kc.node_pub)  # type: ignore[arg-type]
            node.update(key_id=pub.key_id_hex, public_key=pub.base64())
        except keystore.KeyFileError as exc:
            problems.append(str(exc))
        out["node"] = node
    if kc.identity is not None:
        gw: dict[str, object] = {"identity_file": str(kc.identity)}
        try:
            gw["recipients"] = agekeys.recipients_of(keystore.load_identities(kc.identity))
        except keystore.KeyFileError as exc:
            problems.append(str(exc))
        out["gateway"] = gw
    try:
        out["trusted_nodes"] = [{"name": t.name, "file": str(t.path), "key_id": t.key.key_id_hex}
                                for t in keystore.load_trusted(kc.trusted_nodes)]
    except keystore.KeyFileError as exc:
        problems.append(str(exc))
    if problems:
        out["problems"] = problems
    echo_json(out)
