"""Carrying bundles across the gap: ``export_to`` removable media, ``import_dir`` on the gateway.

Export is all or nothing: every bundle and signature is copied under a temporary name,
fsynced, dropped from the page cache and read back from the medium, its signature checked
against this node's key; only when every copy is good are they renamed into place, the index
written, and the bundles marked ``exported`` in one transaction. Any failure (a full medium
included) removes everything this export wrote and marks nothing.

Import takes every ``*.tar.zst.age`` in a directory: verify, decrypt, check, extract into
``<state_dir>/staging/<bundle_id>/``, record it in ``imports`` and ``bundles`` (state
``imported``: the queue delivery takes from). A refused bundle is copied, with its signature
and a ``.reason.json``, into ``<state_dir>/quarantine/`` and nothing of it stays in staging.
The medium itself is never modified.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import durable, failures, statedir
from ..config import Config
from ..ledger import Ledger
from ..retention import quarantined_copy
from . import minisign
from .bundle import CHUNK
from .bundle_open import REASONS, Refused, iter_bundles, open_bundle
from .keystore import OpenKeys
from .outbox import SIG_SUFFIX
from .staging import clean_staging_leftovers

INDEX_NAME = "tfwb-index.json"
TMP_PREFIX = ".tfwb-tmp-"


class ExportError(Exception):
    pass


@dataclass
class ExportReport:
    target: str
    exported: list[dict[str, Any]] = field(default_factory=list)
    index: str | None = None


def _copy_file(src: Path, dst: Path) -> None:
    """Copy with fsync; the destination is created exclusively (never clobbers). Not a durable
    replace: the copy is read back and verified under its temporary name before its rename."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def _reread_digest(path: Path) -> bytes:
    """BLAKE2b-512 of what the medium holds, not of what the page cache remembers."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return minisign.hash_file(f)
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _read_index(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads((dest / INDEX_NAME).read_text())
        if isinstance(data, dict) and isinstance(data.get("bundles"), list):
            return data
    except (OSError, ValueError):
        pass
    return {"format": "tfwb-export-index", "format_version": 1, "bundles": []}


def export_to(cfg: Config, ledger: Ledger, dest: Path, node_pub: minisign.PublicKey) -> ExportReport:
    """Copy every sealed, not yet exported bundle (and its signature) to ``dest``."""
    dest = Path(dest)
    if not dest.is_dir():
        raise ExportError(f"{dest} is not a directory (is the medium mounted?)")
    rows = ledger.bundles("sealed")
    report = ExportReport(str(dest))
    if not rows:
        return report
    for r in rows:
        if not Path(r["path"]).is_file() or not Path(r["path"] + SIG_SUFFIX).is_file():
            raise ExportError(f"bundle {r['name']} is recorded as sealed but its file or signature is missing "
                              f"from {Path(r['path']).parent}; nothing was exported")
    need = sum(Path(r["path"]).stat().st_size + Path(r["path"] + SIG_SUFFIX).stat().st_size for r in rows)
    need_total = need + 4096 * (2 * len(rows) + 2)  # room for the index and directory entries
    free = _free_bytes(dest)
    if need_total > free:
        raise ExportError(f"not enough space on {dest}: {len(rows)} bundle(s) need {need_total} bytes, "
                          f"{free} are free; nothing was exported")

    written: list[Path] = []  # everything this export created, removed again on failure
    try:
        staged = []
        for r in rows:
            src = Path(r["path"])
            tmp_b = dest / f"{TMP_PREFIX}{r['name']}"
            tmp_s = dest / f"{TMP_PREFIX}{r['name']}{SIG_SUFFIX}"
            for p in (tmp_b, tmp_s):
                p.unlink(missing_ok=True)  # our own leftover from an interrupted export
            written += [tmp_b, tmp_s]
            _copy_file(src, tmp_b)
            _copy_file(Path(f"{src}{SIG_SUFFIX}"), tmp_s)
            digest = _reread_digest(tmp_b)
            try:
                sig = minisign.parse_signature(tmp_s.read_text())
                minisign.verify_digest(node_pub, sig, digest)
            except (minisign.MinisignError, UnicodeDecodeError) as exc:
                raise ExportError(f"the copy of {r['name']} on {dest} does not verify ({exc}); "
                                  "the medium may be failing; nothing was exported") from None
            staged.append((r, tmp_b, tmp_s, digest))
        durable.fsync_dir(dest)
        index = _read_index(dest)
        entries = {e.get("name"): e for e in index["bundles"] if isinstance(e, dict)}
        for r, tmp_b, tmp_s, digest in staged:
            final_b, final_s = dest / r["name"], dest / f"{r['name']}{SIG_SUFFIX}"
            os.rename(tmp_s, final_s)  # signature first: a bundle name never stands alone
            written.append(final_s)
            os.rename(tmp_b, final_b)
            written.append(final_b)
            entry = {"name": r["name"], "bundle_id": r["bundle_id"], "content_id": r["content_id"],
                     "run_id": r["run_id"], "segment": r["segment"], "byte_start": r["byte_start"],
                     "byte_end": r["byte_end"], "size": final_b.stat().st_size,
                     "blake2b512": digest.hex(), "node": cfg.node_name, "node_key_id": node_pub.key_id_hex}
            entries[r["name"]] = entry
            report.exported.append(entry)
        index["bundles"] = sorted(entries.values(), key=lambda e: str(e.get("name")))
        index["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        durable.write_json(dest / INDEX_NAME, index, indent=1, sort_keys=True)
        report.index = str(dest / INDEX_NAME)
    except (OSError, ExportError) as exc:
        for p in written:
            try:
                p.unlink()
            except OSError:
                pass
        if isinstance(exc, ExportError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise ExportError(f"{dest} ran out of space while copying ({exc.strerror}); the partial copies "
                              "were removed and nothing was marked exported") from None
        raise ExportError(f"cannot write to {dest}: {exc.strerror or exc}; the partial copies were removed "
                          "and nothing was marked exported") from None
    ledger.mark_exported([r["bundle_id"] for r in rows], [{"kind": "exported", "to": str(dest), **{k: e[k] for k in (
        "name", "bundle_id", "content_id", "run_id", "segment", "size", "blake2b512")}} for e in report.exported])
    return report


@dataclass
class ImportOutcome:
    name: str
    status: str  # imported | refused | skipped (not a bundle, or no room: nothing written, not quarantined)
    reason: str | None = None
    detail: str | None = None
    signer: str | None = None
    bundle_id: str | None = None
    run_id: str | None = None
    segment: int | None = None
    content_id: str | None = None
    staged: str | None = None
    quarantined: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def staging_root(cfg: Config) -> Path:
    return statedir.staging(cfg)


def quarantine_root(cfg: Config) -> Path:
    return statedir.quarantine(cfg)


class NoRoom(Exception):
    """A bundle that does not fit in staging: skipped before anything of it is written."""


class ImportStopped(Exception):
    """The import cannot go on (the gateway's disk is full): ``outcomes`` is what it did before."""

    def __init__(self, message: str, outcomes: list[ImportOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


STAGING_RESERVE = 8 << 20  # what an import leaves free beside a bundle: the ledger and audit log still grow


def import_dir(cfg: Config, keys: OpenKeys, ledger: Ledger, directory: Path) -> list[ImportOutcome]:
    """Import every bundle in ``directory``: one bad entry is skipped or refused and the rest go
    on; a full disk stops the import (``ImportStopped``) with nothing half-imported."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    root = staging_root(cfg)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    clean_staging_leftovers(root)
    outcomes: list[ImportOutcome] = []
    for path, not_a_bundle in iter_bundles(directory):
        if not_a_bundle:
            outcomes.append(ImportOutcome(path.name, "skipped", detail=not_a_bundle))
            continue
        try:
            outcomes.append(import_one(cfg, keys, ledger, path))
        except NoRoom as exc:
            outcomes.append(ImportOutcome(path.name, "skipped", detail=str(exc)))
        except (OSError, sqlite3.Error) as exc:
            if failures.disk_full(exc):
                raise ImportStopped(f"the disk holding {cfg.state_dir} is full ({exc}) while importing {path.name}: "
                                    "nothing of it was kept; free space there and run import again (bundles "
                                    "imported already are refused as replays, harmlessly)", outcomes) from None
            if isinstance(exc, OSError) and exc.filename and str(exc.filename).startswith(str(directory)):
                outcomes.append(ImportOutcome(path.name, "skipped", detail=f"cannot read it ({exc.strerror})"))
                continue
            raise
    return outcomes


def _check_room(cfg: Config, m: dict[str, Any]) -> None:
    """The manifest says how much a bundle unpacks to: refuse what cannot fit before writing any
    of it (the stream is held to that declaration, see ``bundle_open.Bounded``)."""
    declared = sum(e["size"] for e in m["members"])
    free = failures.free_bytes(staging_root(cfg))
    if free is not None and declared + STAGING_RESERVE > free:
        raise NoRoom(f"it unpacks to {declared} bytes (its manifest says), and {free} bytes are free in "
                     f"{staging_root(cfg)} ({STAGING_RESERVE} kept for the ledger); nothing of it was written; "
                     "free space there, then import again")


def import_one(cfg: Config, keys: OpenKeys, ledger: Ledger, path: Path) -> ImportOutcome:
    root = staging_root(cfg)

    def on_manifest(m: dict[str, Any]) -> None:
        # The manifest's ids passed ``ids.check`` (manifest.parse) before this is called.
        row = ledger.import_of_content(m["content_id"])
        if row is not None:
            raise Refused("replay", f"content {m['content_id']} was imported on {_when(row['imported_at'])} "
                                    f"as bundle {row['bundle_id']}")
        _refuse_conflict(ledger, m)
        _remove_unrecorded(cfg, ledger, m["bundle_id"])
        _check_room(cfg, m)

    try:
        opened = open_bundle(path, keys, staging_root=root, on_manifest=on_manifest)
    except Refused as exc:
        return _quarantine(cfg, ledger, path, exc)
    m, signer = opened.manifest, opened.verified.signer
    seg = m["segment"]
    assert opened.staged is not None
    try:
        ledger.record_import(manifest=m, signer=signer.label, name=path.name, staging=str(opened.staged), audit={
            "kind": "imported", "bundle": path.name, "from": str(path.parent), "bundle_id": m["bundle_id"],
            "content_id": m["content_id"], "run_id": m["run"]["run_id"], "segment": seg["number"],
            "signer": signer.label, "source_node": m.get("source_node"), "redaction": m.get("redaction")})
    except BaseException:  # not recorded (a full disk...): nothing of it stays staged
        shutil.rmtree(opened.staged, ignore_errors=True)
        raise
    return ImportOutcome(path.name, "imported", signer=signer.label, bundle_id=m["bundle_id"],
                         run_id=m["run"]["run_id"], segment=seg["number"], content_id=m["content_id"],
                         staged=str(opened.staged))


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def _refuse_conflict(ledger: Ledger, m: dict[str, Any]) -> None:
    """A bundle id this host already holds with other content is refused: an id names one
    bundle, and an imported run is never replaced by whatever next claims its id."""
    row = ledger.holds_bundle(m["bundle_id"])
    if row is not None and row["content_id"] != m["content_id"]:
        raise Refused("conflict", f"bundle id {m['bundle_id']} is already {row['state']} here (since "
                                  f"{_when(row['at'])}) with content {row['content_id']}; this bundle carries "
                                  f"{m['content_id']}; the bundle already here stays as it is")


def _remove_unrecorded(cfg: Config, ledger: Ledger, bundle_id: str) -> None:
    """``staging/<bundle_id>`` with no import recorded was extracted before a crash: start again."""
    leftover = statedir.staged(cfg, bundle_id)
    if leftover.exists() and not ledger.is_imported(bundle_id):
        shutil.rmtree(leftover)


def _quarantine(cfg: Config, ledger: Ledger, path: Path, exc: Refused) -> ImportOutcome:
    qroot = quarantine_root(cfg)
    qroot.mkdir(parents=True, exist_ok=True, mode=0o700)
    kept = quarantined_copy(qroot, path, exc.reason)  # the same medium imported again: no second copy
    if kept is not None:
        return ImportOutcome(path.name, "refused", reason=exc.reason, detail=exc.detail, quarantined=str(kept))
    qdir = statedir.quarantine_entry(cfg, path.name)
    stamp = qdir.name.split("-", 1)[0]
    qdir.mkdir(mode=0o700)
    v = exc.verified
    facts = v.facts if v else None
    info = {"bundle": path.name, "source": str(path), "reason": exc.reason, "meaning": REASONS[exc.reason],
            "detail": exc.detail, "signer": v.signer.label if v else None,
            "signed_facts": asdict(facts) if facts else None, "quarantined_at": stamp}
    try:
        for src in (path, Path(f"{path}{SIG_SUFFIX}")):
            if src.is_file() and not src.is_symlink():
                shutil.copyfile(src, qdir / src.name)
        (qdir / "reason.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    except BaseException:  # a full disk: no half-made quarantine entry
        shutil.rmtree(qdir, ignore_errors=True)
        raise
    bundle_id = facts.bundle_id if facts else f"unverified-{path.name}"
    ledger.quarantine_bundle(
        bundle_id=bundle_id, run_id=facts.run_id if facts else "", segment=facts.segment if facts else -1,
        name=path.name, path=str(qdir), content_id=facts.content_id if facts else "",
        reason=f"{exc.reason}: {exc.detail}", audit={
            "kind": "quarantined", "bundle": path.name, "from": str(path.parent), "reason": exc.reason,
            "detail": exc.detail, "signer": info["signer"], "signed_facts": info["signed_facts"]})
    return ImportOutcome(path.name, "refused", reason=exc.reason, detail=exc.detail,
                         signer=v.signer.label if v else None, bundle_id=facts.bundle_id if facts else None,
                         run_id=facts.run_id if facts else None, quarantined=str(qdir))
