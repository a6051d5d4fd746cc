"""Opening a segment: a private, writable copy of its run directory to upload from.

From this node's outbox the bundle is verified and decrypted (``seal.open_bundle``); from a
gateway's staging the run directory is copied (it was verified when it was imported). Either
way ``wandb sync`` writes into the copy (its ``.synced`` marker, the cut log), never into the
outbox or staging. The log's facts come with it: from the bundle's manifest, or, for a staged
run, from the ledger, which kept the manifest's at import (the gateway neither folds the log
nor opens its manifest again to learn them).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..ledger import Ledger
from ..seal import Refused, keys_config, open_bundle, open_keys
from ..seal.keystore import KeyFileError
from .outcomes import DeliveryError
from .work import Unit


def _staged_run_dir(staged: Path) -> Path | None:
    dirs = [p for p in staged.iterdir() if p.is_dir() and not p.is_symlink()] if staged.is_dir() else []
    return dirs[0] if len(dirs) == 1 else None


def materialize(cfg: config_mod.Config, ledger: Ledger, u: Unit, work: Path) -> tuple[Path, dict[str, Any] | None]:
    """The segment's run directory, opened into ``work`` (made afresh, private), and the log
    facts its bundle's manifest kept at sealing (staged: as the import recorded them; None for
    an older agent's bundle)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    if u.source == "staged":
        src = _staged_run_dir(u.path)
        if src is None:
            raise DeliveryError(f"staged bundle {u.path} holds no single run directory")
        dst = work / src.name
        shutil.copytree(src, dst, symlinks=True)
        return dst, ledger.import_log_facts(u.bundle_id, u.content_id)
    try:
        keys = open_keys(keys_config(cfg))
    except (KeyFileError, ValueError, config_mod.ConfigError) as exc:
        raise DeliveryError(f"cannot open this node's bundles: {exc} (set keys.identity and keys.trusted_nodes)") from None
    try:
        opened = open_bundle(u.path, keys, staging_root=work, durable=False)  # work: removed after the upload
    except Refused as exc:
        raise DeliveryError(f"bundle {u.path.name} refused: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"cannot read bundle {u.path}: {exc}") from None
    assert opened.staged is not None
    rd = opened.staged / opened.manifest["run_dir"]
    if not rd.is_dir():
        raise DeliveryError(f"bundle {u.path.name} holds no run directory {opened.manifest['run_dir']!r}")
    return rd, opened.manifest.get("log_facts")


def relocate(run_dir: Path) -> bool:
    """Redacted runs carry run-table artifact files in ``_staging`` by absolute path: point
    those at where this copy lives, or wandb sync cannot find them. Returns whether it did
    (the log was rewritten: its offsets are no longer those sealed)."""
    if not (run_dir / "_staging").is_dir():
        return False
    # Lazy: redaction (its redactors, yaml: ~0.08 s of CPU to import) only for such a run, not
    # in every delivery, where it ran beside the wandb sync started ahead for the same cores.
    from ..redact.run import relocate_staging

    relocate_staging(run_dir)
    return True
