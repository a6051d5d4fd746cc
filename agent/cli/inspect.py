"""`tfwb-agent inspect BUNDLE`: who signed it, is it valid, and (with an identity) what it holds."""
from __future__ import annotations

from pathlib import Path

import click

from ..seal import REASONS, Refused, keys_config, open_bundle
from ..seal import keystore
from .common import Context, echo_json, json_always, pass_ctx


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_always
@pass_ctx
def command(ctx: Context, bundle: Path) -> None:
    """Check BUNDLE's signature against the trusted node keys (and this node's own key); where
    keys.identity is at hand, decrypt it and check every member against the manifest. Nothing
    is extracted. Exits 1 if the bundle is refused."""
    kc = keys_config(ctx.config)
    try:
        keys = keystore.open_keys(kc, need_identity=False)
        trusted = list(keys.trusted)
        if kc.node_pub is not None and kc.node_pub.is_file():
            own = keystore.TrustedKey("this node", kc.node_pub, keystore.load_public_key(kc.node_pub))
            if all(t.key.key_id != own.key.key_id for t in trusted):
                trusted.append(own)
        keys = keystore.OpenKeys(tuple(trusted), keys.identities)
    except keystore.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    out: dict[str, object] = {"bundle": str(bundle)}
    try:
        opened = open_bundle(bundle, keys)
    except Refused as exc:
        v = exc.verified
        out["signature"] = ({"valid": True, "signer": v.signer.label, "trusted_comment": v.signature.trusted_comment}
                            if v else {"valid": False})
        if exc.reason == "not_for_this_identity" and not keys.identities:
            out["content"] = "not shown: no keys.identity at hand to decrypt with"
            echo_json(out)
            return
        out.update(refused=exc.reason, meaning=REASONS[exc.reason], detail=exc.detail)
        echo_json(out)
        raise SystemExit(1)
    v = opened.verified
    out["signature"] = {"valid": True, "signer": v.signer.label, "trusted_comment": v.signature.trusted_comment}
    out["manifest"] = opened.manifest
    out["members"] = [{"name": "MANIFEST.json"}, *opened.members]
    echo_json(out)
