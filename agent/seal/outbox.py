"""The outbox: sealed bundles on disk, installed atomically, recorded in the ledger after.

Files: ``<state_dir>/outbox/<run_id>-<segment>.tar.zst.age`` and ``<name>.minisig``.

Installing one bundle:
 1. write the bundle under ``.tmp-<pid>-<rand>-<name>``, fsync it; the same for its signature;
 2. if an unrecorded older bundle holds the name: unlink it, then its signature;
 3. rename the signature into place, then the bundle; fsync the directory;
 4. only then record ``sealed`` in the ledger (one transaction).
So at every instant a final bundle name exists only with its whole, matching signature beside
it: a crash leaves no bundle or a whole one, plus temporary files that ``recover`` removes.
A whole bundle that reached the outbox but not the ledger (a crash between 3 and 4) is adopted
by the next ``seal_run`` of the same content: its signed trusted comment says what it holds.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import __version__
from .. import failures, procs, statedir
from ..durable import fsync_dir
from ..config import Config
from ..ledger import Ledger
from ..runlog import find_log  # the reader's rule for which file is the run's log
from . import manifest as mf
from . import minisign
from .bundle import CHUNK, Progress, no_progress
from .bundle_write import SealError, Snapshot, check_complete, encrypt_chunks, iter_tar_zst, new_bundle_id, plan_run
from .keystore import SealKeys
from .streams import EarlyWritebackFile

SUFFIX = statedir.BUNDLE_SUFFIX
SIG_SUFFIX = ".minisig"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class SealedBundle:
    bundle_id: str
    content_id: str
    run_id: str
    segment: int
    byte_start: int
    byte_end: int | None
    path: Path
    size: int
    reused: bool  # True: this content was already sealed (or adopted after a crash)

    @property
    def sig_path(self) -> Path:
        return Path(f"{self.path}{SIG_SUFFIX}")


def outbox_dir(cfg: Config) -> Path:
    return statedir.outbox(cfg)


def bundle_name(run_id: str, segment: int) -> str:
    """``<run_id>-<segment>.tar.zst.age``; ``ids.BadId`` if the run id is not a plain name."""
    return statedir.bundle_name(run_id, segment)


def recover(outbox: Path) -> list[str]:
    """Remove what a crash left: temporary files of dead processes and signatures whose bundle
    never arrived. Safe while other sealers run (their temporary files are left alone)."""
    removed: list[str] = []
    if not outbox.is_dir():
        return removed
    for p in outbox.iterdir():
        name = p.name
        if name.startswith(TMP_PREFIX):
            try:
                pid = int(name[len(TMP_PREFIX):].split("-", 1)[0])
            except ValueError:
                pid = -1
            if pid == os.getpid() or not procs.alive(pid, None):
                p.unlink(missing_ok=True)
                removed.append(name)
        elif name.endswith(SUFFIX + SIG_SUFFIX) and not (outbox / name[:-len(SIG_SUFFIX)]).exists():
            p.unlink(missing_ok=True)
            removed.append(name)
    if removed:
        fsync_dir(outbox)
    return removed


@contextmanager
def _name_lock(outbox: Path, name: str) -> Iterator[None]:
    """One sealer per bundle name at a time (across processes); the kernel drops it on a crash."""
    locks = outbox / ".locks"
    locks.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(locks / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _verify_own(path: Path, pub: minisign.PublicKey) -> mf.SignedFacts | None:
    """The signed facts of a whole bundle in the outbox made by this node's key, else None."""
    sig_path = Path(f"{path}{SIG_SUFFIX}")
    try:
        sig = minisign.parse_signature(sig_path.read_text())
        with open(path, "rb") as f:
            digest = minisign.hash_file(f)
        minisign.verify_digest(pub, sig, digest)
    except (OSError, minisign.MinisignError):
        return None
    return mf.SignedFacts.from_comment(sig.trusted_comment)


def _write_temp(outbox: Path, name: str, write: Callable[[Any], Any]) -> Path:
    # Not durable.replacing: a bundle and its signature are two files renamed in order (signature
    # first, then bundle, one directory fsync), under names ``recover`` sweeps, written through
    # EarlyWritebackFile so a large bundle's fsync does not stall on gigabytes of dirty pages.
    tmp = outbox / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=CHUNK) as f:
            w = EarlyWritebackFile(f)
            write(w)
            w.fsync()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def seal_run(cfg: Config, keys: SealKeys, ledger: Ledger, run_dir: Path, run: mf.RunIdentity,
             segment: int | mf.Segment = 0, redaction_report: Mapping[str, Any] | None = None, *,
             run_key: str | None = None, log_path: Path | None = None,
             on_sealed: Callable[[sqlite3.Connection, SealedBundle], None] | None = None,
             progress: Progress = no_progress, level: int = 3,
             store_compressed: bool = True, expect: Snapshot | None = None,
             log_facts: Mapping[str, Any] | None = None) -> SealedBundle:
    """Seal ``run_dir`` (already redacted) as one segment of ``run`` into the outbox.

    ``segment``: a number, or ``Segment(number, byte_start, byte_end)`` where the byte range is
    the part of the run's `.wandb` log this segment covers; ``byte_end`` also limits how much of
    the log in ``run_dir`` is packed (a live log keeps growing). ``on_sealed(db, sealed)`` runs
    inside the ledger transaction that records the bundle, for the caller's own bookkeeping.
    ``store_compressed=False`` recompresses already-compressed media too (for measuring).
    ``expect``: what redaction wrote (``bundle_write.snapshot``); a copy that differs is refused.
    ``log_facts``: the log's facts for delivery (``segments.sealed_facts``), kept in the manifest.
    Idempotent: the same content sealed again returns the bundle already there (``reused``).
    Raises ``SealError`` (a file changed, the disk filled) leaving no bundle behind.
    """
    seg = segment if isinstance(segment, mf.Segment) else mf.Segment(int(segment))
    run_dir = Path(run_dir)
    outbox = outbox_dir(cfg)
    outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = bundle_name(run.run_id, seg.number)
    final = outbox / name
    pub = keys.signer.public()
    if log_path is None:
        log_path = find_log(run_dir)
    with _name_lock(outbox, name):
        progress("plan", run_dir=str(run_dir))
        plan = plan_run(run_dir, log_path, seg.byte_end, progress=progress, store_compressed=store_compressed)
        if expect is not None:
            check_complete(plan, expect)
        created = datetime.now(timezone.utc).replace(microsecond=0)
        manifest = mf.build(
            bundle_id=new_bundle_id(), run=run, run_dir_name=run_dir.name, segment=seg,
            log_name=plan.log_name, log_size=plan.log_size, members=[p.member for p in plan.members],
            skipped=plan.skipped, redaction=redaction_report or {}, source_node=cfg.node_name,
            node_key_id=pub.key_id_hex, created=created.isoformat().replace("+00:00", "Z"),
            agent_version=__version__, log_facts=log_facts)
        cid = manifest["content_id"]
        byte_end = manifest["segment"]["byte_end"]

        def done(bundle_id: str, size: int, reused: bool) -> SealedBundle:
            sealed = SealedBundle(bundle_id, cid, run.run_id, seg.number, seg.byte_start, byte_end,
                                  final, size, reused)
            _record(ledger, sealed, run_key, run, on_sealed, {
                "kind": "sealed", "bundle": name, "bundle_id": bundle_id, "content_id": cid, "run_id": run.run_id,
                "segment": seg.number, "byte_range": [seg.byte_start, byte_end], "size": size, "reused": reused,
                "node": cfg.node_name, "redaction": manifest["redaction"]})
            progress("recorded", bundle_id=bundle_id, reused=reused)
            return sealed

        # Already sealed with this content (recorded, or installed just before a crash)?
        facts = _verify_own(final, pub) if final.exists() else None
        if facts and facts.content_id == cid and facts.run_id == run.run_id and facts.segment == seg.number:
            row = ledger.bundle(facts.bundle_id)
            if row is not None and row["state"] != "sealed":
                return SealedBundle(facts.bundle_id, cid, run.run_id, seg.number, seg.byte_start, byte_end,
                                    final, final.stat().st_size, True)
            return done(facts.bundle_id, final.stat().st_size, True)
        _refuse_overwriting_recorded(ledger, run.run_id, seg.number, cid)

        manifest_bytes = mf.encode(manifest)
        result: dict[str, Any] = {}

        def write_bundle(f: Any) -> None:
            chunks = iter_tar_zst(plan, manifest_bytes, int(created.timestamp()), level, progress)
            result["digest"], result["size"] = encrypt_chunks(chunks, f, keys.recipients)

        progress("write", total=plan.total_bytes)
        try:
            tmp_bundle = _write_temp(outbox, name, write_bundle)
        except OSError as exc:
            if failures.disk_full(exc):
                raise  # not this run's trouble: the caller pauses until there is room
            raise SealError(f"cannot write to the outbox {outbox}: {exc.strerror or exc}") from None
        try:
            signed = mf.SignedFacts(manifest["bundle_id"], cid, run.run_id, seg.number)
            sig = minisign.sign_digest(keys.signer, result["digest"],
                                       signed.trusted_comment(int(created.timestamp()), name))
            tmp_sig = _write_temp(outbox, name + SIG_SUFFIX, lambda f: f.write(sig.to_file().encode()))
            progress("fsynced")
            if final.exists():  # an older, unrecorded bundle under this name: bundle first
                final.unlink()
                Path(f"{final}{SIG_SUFFIX}").unlink(missing_ok=True)
                fsync_dir(outbox)
            os.rename(tmp_sig, Path(f"{final}{SIG_SUFFIX}"))
            progress("renamed_sig")
            os.rename(tmp_bundle, final)
            fsync_dir(outbox)
            progress("renamed")
        except BaseException:
            tmp_bundle.unlink(missing_ok=True)
            raise
        return done(manifest["bundle_id"], result["size"], False)


def withdraw(sealed: SealedBundle, pub: minisign.PublicKey) -> bool:
    """Remove a bundle this node installed but may not keep (another node sealed the run first),
    if the outbox still holds that very bundle (not recorded: its transaction was rolled back).
    The signature goes after the bundle, so a bundle name never stands alone."""
    facts = _verify_own(sealed.path, pub) if sealed.path.exists() else None
    if facts is None or facts.bundle_id != sealed.bundle_id:
        return False
    sealed.path.unlink()
    sealed.sig_path.unlink(missing_ok=True)
    fsync_dir(sealed.path.parent)
    return True


def _refuse_overwriting_recorded(ledger: Ledger, run_id: str, segment: int, cid: str) -> None:
    row = ledger.outbox_bundle_of(run_id, segment)
    if row is not None and row["content_id"] != cid and Path(row["path"]).exists():
        raise SealError(
            f"segment {segment} of run {run_id} is already {row['state']} as bundle {row['bundle_id']} "
            f"with other content; a segment's content must not change (seal the change as the next segment)")


def _record(ledger: Ledger, sealed: SealedBundle, run_key: str | None, run: mf.RunIdentity,
            on_sealed: Callable[[sqlite3.Connection, SealedBundle], None] | None, audit_line: dict[str, Any]) -> None:
    with ledger.tx() as db:
        ledger.record_sealed(bundle_id=sealed.bundle_id, run_key=run_key, run_id=sealed.run_id, segment=sealed.segment,
                             name=sealed.path.name, path=str(sealed.path), content_id=sealed.content_id,
                             byte_start=sealed.byte_start, byte_end=sealed.byte_end, project=run.project,
                             entity=run.entity, audit=audit_line)
        if on_sealed:
            on_sealed(db, sealed)
