"""Opening a bundle: age -> zstd -> tar back into a staging directory, every step checked.

Opening checks, in order: the signature against the trusted node keys, then while streaming
age -> zstd -> tar: the manifest (first member), every member's type, name, size and SHA-256.
Anything wrong raises ``Refused`` with a reason code from ``REASONS``; the caller throws the
partial staging directory away, so a refused bundle leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import pyrage
import zstandard
from pyrage import x25519

from .. import ids
from . import manifest as mf
from . import minisign
from .bundle import CHUNK, Progress, no_progress
from .keystore import OpenKeys, TrustedKey
from .staging import Staging
from .streams import HashingReader

ZSTD_MAX_WINDOW = 1 << 27  # a bundle asking for a larger window is refused (bounds memory)

REASONS = {
    "unknown_signer": "signed by a key that is not among the trusted node keys",
    "bad_signature": "the signature does not match the bundle",
    "not_for_this_identity": "not encrypted to this gateway's identity (or its recipient stanza was altered)",
    "corrupt_header": "the age header is damaged",
    "damaged_ciphertext": "the ciphertext is truncated or altered",
    "bad_archive": "the decrypted stream is not a well-formed zstd/tar archive",
    "manifest_mismatch": "the content does not match the manifest",
    "bad_member": "a tar member that may not be extracted (.., absolute path, link, device, unexpected)",
    "replay": "this content was imported before",
    "bad_id": "an identifier in the bundle (bundle id, run id, run directory) is not a plain name",
    "conflict": "a bundle with this id was imported before with other content",
}


class Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
        self.verified: "Verified | None" = None  # set once the signature was checked


@dataclass(frozen=True)
class Verified:
    signer: TrustedKey
    signature: minisign.Signature
    digest: bytes  # BLAKE2b-512 of the bundle as verified
    size: int
    facts: mf.SignedFacts | None


def verify_signature(bundle: BinaryIO, sig_text: str | None, trusted: Sequence[TrustedKey]) -> Verified:
    """Check the bundle's minisign signature against the trusted node keys."""
    if sig_text is None:
        raise Refused("bad_signature", "no .minisig file beside the bundle")
    try:
        sig = minisign.parse_signature(sig_text)
    except minisign.MinisignError as exc:
        raise Refused("bad_signature", str(exc)) from None
    signer = next((t for t in trusted if t.key.key_id == sig.key_id), None)
    if signer is None:
        raise Refused("unknown_signer", f"key id {minisign.format_key_id(sig.key_id)} is not among the "
                                        f"{len(trusted)} trusted node key(s)")
    bundle.seek(0)
    h = minisign.new_hash()
    size = 0
    while block := bundle.read(CHUNK):
        h.update(block)
        size += len(block)
    digest = h.digest()
    try:
        minisign.verify_digest(signer.key, sig, digest)
    except minisign.BadSignature as exc:
        raise Refused("bad_signature", f"{exc} (key {signer.label})") from None
    return Verified(signer, sig, digest, size, mf.SignedFacts.from_comment(sig.trusted_comment))


def _decrypt_reason(exc: BaseException) -> Refused:
    text = str(exc)
    low = text.lower()
    if "no matching keys" in low:
        return Refused("not_for_this_identity", text)
    if isinstance(exc, pyrage.DecryptError) or "header" in low or "age format" in low:
        return Refused("corrupt_header", text.splitlines()[0] if text else type(exc).__name__)
    return Refused("damaged_ciphertext", text or type(exc).__name__)


def _kind(ti: tarfile.TarInfo) -> str:
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hard link"
    if ti.ischr() or ti.isblk():
        return "device file"
    if ti.isfifo():
        return "fifo"
    if ti.isdir():
        return "directory"
    return f"member of type {ti.type!r}"


@dataclass
class Opened:
    verified: Verified
    manifest: dict[str, Any]
    members: list[dict[str, Any]] = field(default_factory=list)
    staged: Path | None = None


def _read_archive(stream: BinaryIO, verified: Verified, staging: Staging | None,
                  on_manifest: Callable[[dict[str, Any]], None], progress: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Walk the decrypted, decompressed tar; check (and extract) every member."""
    tf = tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)
    first = tf.next()
    if first is None or first.name != mf.MANIFEST_NAME or not first.isreg():
        raise Refused("manifest_mismatch", "the first member is not MANIFEST.json")
    if first.size > mf.MANIFEST_MAX:
        raise Refused("manifest_mismatch", f"MANIFEST.json is {first.size} bytes, more than allowed")
    raw = tf.extractfile(first).read()  # type: ignore[union-attr]
    try:
        manifest = mf.parse(raw)
    except mf.BadIdentifier as exc:
        raise Refused("bad_id", str(exc)) from None
    except mf.ManifestError as exc:
        raise Refused("manifest_mismatch", str(exc)) from None
    facts = verified.facts
    if facts is None or facts.bundle_id != manifest["bundle_id"] or facts.content_id != manifest["content_id"]:
        raise Refused("manifest_mismatch", "the signed trusted comment does not name this manifest's bundle")
    on_manifest(manifest)
    if isinstance(stream, Bounded):
        stream.allow(manifest)
    expected = {e["name"]: e for e in manifest["members"]}
    seen: list[dict[str, Any]] = []
    done: set[str] = set()
    while (ti := tf.next()) is not None:
        if not ti.isreg():
            raise Refused("bad_member", f"{ti.name!r} is a {_kind(ti)}")
        why = mf.check_member_name(ti.name)
        if why:
            raise Refused("bad_member", f"{ti.name!r}: {why}")
        e = expected.get(ti.name)
        if e is None:
            raise Refused("bad_member", f"{ti.name!r} is not in the manifest")
        if ti.name in done:
            raise Refused("bad_member", f"{ti.name!r} appears twice")
        done.add(ti.name)
        if ti.size != e["size"]:
            raise Refused("manifest_mismatch", f"{ti.name}: {ti.size} bytes, manifest says {e['size']}")
        src = tf.extractfile(ti)
        assert src is not None
        h = hashlib.sha256()
        out = staging.create(ti.name) if staging else None
        try:
            while block := src.read(CHUNK):
                h.update(block)
                if out:
                    out.write(block)
            if out and staging and staging.durable:
                out.flush()
                os.fsync(out.fileno())
        finally:
            if out:
                out.close()
        if h.hexdigest() != e["sha256"]:
            raise Refused("manifest_mismatch", f"{ti.name}: SHA-256 differs from the manifest")
        seen.append({"name": ti.name, "size": ti.size, "sha256": e["sha256"]})
        progress("member", name=ti.name, size=ti.size)
    missing = [n for n in expected if n not in done]
    if missing:
        raise Refused("manifest_mismatch", f"{len(missing)} member(s) in the manifest are missing, e.g. {missing[0]!r}")
    # Read to the very end: only then has age authenticated the last chunk.
    while block := stream.read(CHUNK):
        if block.count(0) != len(block):
            raise Refused("bad_archive", "data after the end of the tar archive")
    return manifest, seen


def open_bundle(bundle_path: Path, keys: OpenKeys, *, sig_text: str | None = None,
                staging_root: Path | None = None, durable: bool = True,
                on_manifest: Callable[[dict[str, Any]], None] = lambda m: None,
                progress: Progress = no_progress) -> Opened:
    """Verify, decrypt and check a bundle; with ``staging_root``, extract it there as
    ``<staging_root>/<bundle_id>/``, fsynced unless not ``durable`` (a work directory thrown
    away after use and made again after a crash). Raises ``Refused``; a refusal leaves nothing
    staged."""
    if sig_text is None:
        sig_path = Path(f"{bundle_path}.minisig")
        sig_text = sig_path.read_text(errors="replace") if sig_path.is_file() else None
    fd = os.open(bundle_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("bad_signature", f"{bundle_path} is not a regular file")
        verified = verify_signature(f, sig_text, keys.trusted)
        staging = None
        try:
            _check_signed_ids(verified)
            if not keys.identities:
                raise Refused("not_for_this_identity", "no age identity at hand to decrypt with")
            f.seek(0)
            staging = Staging(staging_root, durable) if staging_root is not None else None
            manifest, members = _decrypt_and_read(f, verified, keys.identities, staging, on_manifest, progress)
            staged = staging.commit(manifest["bundle_id"]) if staging else None
        except Refused as exc:
            exc.verified = verified  # who signed it and what the signature says it holds
            if staging:
                staging.discard()
            raise
        except BaseException:
            if staging:
                staging.discard()
            raise
    return Opened(verified, manifest, members, staged)


def _check_signed_ids(verified: Verified) -> None:
    """The ids the signature vouches for are plain names, before anything is decrypted."""
    facts = verified.facts
    if facts is None:
        return  # checked against the manifest later: no such bundle passes
    try:
        ids.check("bundle id", facts.bundle_id)
        ids.check("run id", facts.run_id)
    except ids.BadId as exc:
        raise Refused("bad_id", f"signed comment: {exc}") from None


def _decrypt_and_read(f: BinaryIO, verified: Verified, identities: Sequence[x25519.Identity],
                      staging: Staging | None, on_manifest: Callable[[dict[str, Any]], None],
                      progress: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    src = HashingReader(f, minisign.new_hash())
    r, w = os.pipe()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pyrage.decrypt_io(src, _PipeFile(w), list(identities))
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(w)

    t = threading.Thread(target=run, name="open-decrypt", daemon=True)
    t.start()
    main_error: BaseException | None = None
    result = None
    rf = os.fdopen(r, "rb", buffering=CHUNK)
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        with dctx.stream_reader(rf, read_size=CHUNK, read_across_frames=True, closefd=False) as zr:
            bounded = Bounded(zr, mf.MANIFEST_MAX + Bounded.HEADER_ALLOWANCE + CHUNK)  # type: ignore[arg-type]
            result = _read_archive(bounded, verified, staging, on_manifest, progress)  # type: ignore[arg-type]
    except BaseException as exc:
        main_error = exc
    finally:
        rf.close()  # the decrypting thread, if still writing, now gets EPIPE and stops
        t.join()
    dec_error = next((e for e in errors if not isinstance(e, BrokenPipeError)), None)
    if dec_error is not None:
        if isinstance(main_error, Refused) and main_error.reason == "replay":
            raise main_error
        raise _decrypt_reason(dec_error)
    if main_error is not None:
        if isinstance(main_error, Refused):
            raise main_error
        if isinstance(main_error, (tarfile.TarError, zstandard.ZstdError, EOFError)):
            raise Refused("bad_archive", str(main_error) or type(main_error).__name__)
        raise main_error
    if src.hasher.digest() != verified.digest or src.size != verified.size:
        raise Refused("bad_signature", "the bundle changed between checking its signature and decrypting it")
    assert result is not None
    return result


class _PipeFile:
    """A writable for pyrage: whole writes to a pipe fd."""

    def __init__(self, fd: int) -> None:
        self._w = _PipeWriter(fd)

    def write(self, data: bytes) -> int:
        self._w(data)
        return len(data)

    def flush(self) -> None:
        pass


class _PipeWriter:
    """Whole writes to a pipe fd (os.write may write part)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(self.fd, mv):]


def iter_bundles(directory: Path) -> list[tuple[Path, str | None]]:
    """Every ``*.tar.zst.age`` name on a medium, each with why it is not a bundle to open (a
    symlink, never followed; a directory; ...) or None. Hidden names (an export's temporary
    files) are not listed."""
    out: list[tuple[Path, str | None]] = []
    for p in sorted(directory.glob("*.tar.zst.age")):
        if p.name.startswith("."):
            continue
        try:
            mode = p.lstat().st_mode
        except OSError as exc:
            out.append((p, f"cannot read it ({exc.strerror})"))
            continue
        if stat.S_ISLNK(mode):
            out.append((p, "a symlink, not a bundle (links on a medium are never followed)"))
        elif stat.S_ISDIR(mode):
            out.append((p, "a directory, not a bundle"))
        elif not stat.S_ISREG(mode):
            out.append((p, "not a regular file"))
        else:
            out.append((p, None))
    return out


class Bounded:
    """The decompressed stream, never read past what the manifest accounts for: until the
    manifest is read, its own limit; then every member it declares (rounded up to tar blocks),
    a header allowance per member and a little trailing padding. A decompression bomb (a small
    bundle that unpacks to far more than it declares) stops at the limit, before it is written
    or held anywhere."""

    HEADER_ALLOWANCE = 64 << 10   # per member: its tar header and PAX records
    TAIL_ALLOWANCE = 1 << 20      # end-of-archive blocks and record padding

    def __init__(self, src: BinaryIO, limit: int) -> None:
        self.src, self.limit, self.count = src, limit, 0

    def allow(self, manifest: dict[str, Any]) -> None:
        members = manifest["members"]
        declared = sum(-(-e["size"] // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for e in members)
        self.limit = self.count + declared + self.HEADER_ALLOWANCE * (len(members) + 1) + self.TAIL_ALLOWANCE

    def read(self, n: int = -1) -> bytes:
        want = self.limit - self.count + 1 if n is None or n < 0 else min(n, self.limit - self.count + 1)
        data = self.src.read(max(want, 0))
        self.count += len(data)
        if self.count > self.limit:
            raise Refused("bad_archive", f"it unpacks to more than the {self.limit} bytes its manifest accounts "
                                         "for (a decompression bomb); stopped there, nothing of the excess was written")
        return data
