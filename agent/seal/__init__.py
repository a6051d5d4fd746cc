"""Sealing: runs become encrypted, signed bundles; bundles are carried, checked and opened.

The API the daemon and delivery use:

- ``seal_run(cfg, keys, ledger, run_dir, run, segment, redaction_report, ...) -> SealedBundle``
- ``recover_outbox(outbox_dir(cfg))`` once at start
- ``seal_keys(keys_config(cfg))`` / ``open_keys(keys_config(cfg))``
- ``import_dir(cfg, keys, ledger, directory) -> ImportReport``; ``export_to(...)``
- ``open_bundle(path, keys, staging_root=...)`` for anything that needs a bundle's content

Importing this package registers the ``[keys]`` config section (``keyconfig``, imported below).
"""
from .bundle_open import REASONS, Refused, open_bundle
from .bundle_write import SealError
from .keyconfig import KeysConfig, keys_config
from .keystore import KeyFileError, OpenKeys, SealKeys, open_keys, seal_keys
from .manifest import RunIdentity, Segment
from .outbox import SealedBundle, outbox_dir, seal_run
from .outbox import recover as recover_outbox

__all__ = [
    "REASONS", "Refused", "SealError", "open_bundle", "KeysConfig", "keys_config", "KeyFileError",
    "OpenKeys", "SealKeys", "open_keys", "seal_keys", "RunIdentity", "Segment", "SealedBundle",
    "outbox_dir", "seal_run", "recover_outbox",
]
