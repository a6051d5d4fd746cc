"""Writing a bundle (sealing): a run directory as tar (MANIFEST.json first) -> zstd -> age.

Sealing reads the run twice: once to hash every member (two threads, largest files first: the
manifest comes first and lists every hash), once to stream the tar. Memory stays bounded: files
move in 1 MiB chunks, the compressor and the encryptor each hold a small window. The work of
the second pass is spread over both cores of a small node: libzstd's own worker threads
compress, this thread reads, encrypts (agefmt) and writes, and one more thread computes the
BLAKE2b that the minisign signature covers; all three run outside the GIL for most of the time.

The minisign signature over that ciphertext is made and installed by ``outbox``.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import queue
import stat
import tarfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from pyrage import x25519

from . import agefmt
from . import manifest as mf
from . import minisign
from .bundle import CHUNK, Progress, no_progress
from .streams import EarlyWritebackFile, ZstdMixedWriter

ZSTD_THREADS = 2  # libzstd worker threads (no GIL): compression overlaps encryption and hashing
# Already-compressed formats: zstd cannot shrink them, so they are stored (see streams.py).
STORED_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".heic", ".gz", ".tgz", ".zst", ".zip",
    ".bz2", ".xz", ".lz4", ".7z", ".npz", ".mp4", ".webm", ".mov", ".mp3", ".ogg", ".flac", ".pt",
})


class SealError(Exception):
    """Sealing could not finish (a file changed or vanished, a write failed)."""


@dataclass(frozen=True)
class PlannedMember:
    member: mf.Member
    path: Path
    mtime: int
    stat_key: tuple[int, int, int, int]  # dev, ino, size, mtime_ns at hashing time


@dataclass(frozen=True)
class SealPlan:
    run_dir: Path
    members: tuple[PlannedMember, ...]  # in tar order: compressible first, then stored
    skipped: tuple[dict[str, str], ...]
    log_name: str | None
    log_size: int | None

    @property
    def total_bytes(self) -> int:
        return sum(p.member.size for p in self.members)


def _walk(run_dir: Path) -> tuple[list[tuple[str, Path]], list[dict[str, str]]]:
    """Regular files under ``run_dir`` (relative names), never following a symlink."""
    files: list[tuple[str, Path]] = []
    skipped: list[dict[str, str]] = []
    stack = [(run_dir, "")]
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            name = f"{rel}{e.name}"
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append({"name": name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                                "why": "name is not UTF-8"})
                continue
            if e.is_symlink():
                skipped.append({"name": name, "why": "symlink (never followed)"})
            elif e.is_dir(follow_symlinks=False):
                stack.append((Path(e.path), f"{name}/"))
            elif e.is_file(follow_symlinks=False):
                files.append((name, Path(e.path)))
            else:
                skipped.append({"name": name, "why": "not a regular file"})
    return files, skipped


def _hash_file(path: Path, limit: int | None) -> tuple[int, str, int, tuple[int, int, int, int]]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealError(f"{path} is no longer a regular file")
        size = st.st_size if limit is None else limit
        if size > st.st_size:
            raise SealError(f"{path} holds {st.st_size} bytes, fewer than the {limit} to seal")
        h, left, buf = hashlib.sha256(), size, bytearray(CHUNK)
        view = memoryview(buf)
        while left:
            n = f.readinto(view[:min(CHUNK, left)])
            if not n:
                raise SealError(f"{path} shrank while being hashed")
            h.update(view[:n])
            left -= n
        return size, h.hexdigest(), int(st.st_mtime), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat(follow_symlinks=False).st_size
    except OSError:
        return 0  # hashing it will say what is wrong


def plan_run(run_dir: Path, log_path: Path | None = None, byte_end: int | None = None,
             workers: int = 2, progress: Progress = no_progress, store_compressed: bool = True) -> SealPlan:
    """Pass one: list and hash every member. ``byte_end`` limits the `.wandb` log to its first
    ``byte_end`` bytes (a live run keeps growing while it is sealed)."""
    run_dir = Path(run_dir)
    files, skipped = _walk(run_dir)
    prefix = run_dir.name
    log_rel = str(log_path.relative_to(run_dir)) if log_path else None

    def one(item: tuple[str, Path]) -> PlannedMember:
        rel, path = item
        limit = byte_end if (rel == log_rel and byte_end is not None) else None
        size, digest, mtime, key = _hash_file(path, limit)
        progress("hashed", name=rel, size=size)
        stored = store_compressed and path.suffix.lower() in STORED_SUFFIXES
        return PlannedMember(mf.Member(f"{prefix}/{rel}", size, digest, stored), path, mtime, key)

    # hashlib releases the GIL: two workers hash two files at once. Largest first, so that no
    # worker is left hashing one big file alone at the end.
    by_size = sorted(files, key=lambda item: _size_or_zero(item[1]), reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        planned = list(pool.map(one, by_size))
    planned.sort(key=lambda p: (p.member.stored, p.member.name))  # one switch to stored frames
    log_size = next((p.member.size for p in planned if log_rel and p.member.name == f"{prefix}/{log_rel}"), None)
    return SealPlan(run_dir, tuple(planned), tuple(skipped), log_rel and f"{prefix}/{log_rel}", log_size)


Snapshot = dict[str, tuple[int, int]]  # relative name -> (size, mtime_ns)


def snapshot(run_dir: Path) -> Snapshot:
    """What a directory holds now, file by file, as ``plan_run`` will see it: taken right after
    redaction wrote a copy, it is what sealing must find (``check_complete``)."""
    files, _skipped = _walk(Path(run_dir))
    out: Snapshot = {}
    for rel, path in files:
        st = path.stat(follow_symlinks=False)
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def check_complete(plan: SealPlan, expect: Snapshot) -> None:
    """Refuse to seal a copy that is not what redaction wrote: a member missing, added, or of
    another size or time than when redaction finished. Raises ``SealError`` before anything is
    signed."""
    prefix = plan.run_dir.name + "/"
    got = {p.member.name[len(prefix):]: (p.member.size, p.stat_key[3]) for p in plan.members}
    missing = sorted(set(expect) - set(got))
    added = sorted(set(got) - set(expect))
    changed = sorted(n for n in set(got) & set(expect) if got[n] != expect[n])
    if missing or added or changed:
        what = "; ".join(f"{label}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
                         for label, names in (("missing", missing), ("not written by redaction", added),
                                              ("changed", changed)) if names)
        raise SealError(f"the redacted copy {plan.run_dir} is not what redaction wrote ({what}); not sealed")


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, mtime, 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""  # no local user names leave the node
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pad(size: int) -> bytes:
    return bytes(-size % tarfile.BLOCKSIZE)


def _member_chunks(zw: ZstdMixedWriter, out: list[bytes], p: PlannedMember, progress: Progress) -> Iterator[bytes]:
    m = p.member
    zw.write(_tar_header(m.name, m.size, p.mtime), m.stored)
    fd = os.open(p.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != p.stat_key[:2]:
            raise SealError(f"{p.path} was replaced while sealing")
        # Unchanged since hashing (same size and mtime): trust the hash. Otherwise (a live log
        # that grew) hash again and compare, so the manifest never lies about a member.
        recheck = (st.st_size, st.st_mtime_ns) != p.stat_key[2:]
        h = hashlib.sha256() if recheck else None
        left = m.size
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                raise SealError(f"{p.path} shrank while sealing")
            if h:
                h.update(block)
            zw.write(block, m.stored)
            left -= len(block)
            yield from _drain(out)
            if left and m.size > CHUNK:
                progress("packing", name=m.name, done=m.size - left)
        if h and h.hexdigest() != m.sha256:
            raise SealError(f"{p.path} changed while sealing")
    zw.write(_pad(m.size), m.stored)
    progress("packed", name=m.name, size=m.size)


def _drain(out: list[bytes]) -> Iterator[bytes]:
    # Pieces as they are: joining them would copy every stored byte once more.
    yield from out
    out.clear()


def iter_tar_zst(plan: SealPlan, manifest_bytes: bytes, manifest_mtime: int, level: int = 3,
                 progress: Progress = no_progress) -> Iterator[bytes]:
    """The plaintext of a bundle, piece by piece: tar (MANIFEST.json first) through zstd."""
    out: list[bytes] = []
    zw = ZstdMixedWriter(out.append, level, threads=ZSTD_THREADS)
    zw.compressed(_tar_header(mf.MANIFEST_NAME, len(manifest_bytes), manifest_mtime))
    zw.compressed(manifest_bytes + _pad(len(manifest_bytes)))
    for p in plan.members:
        yield from _member_chunks(zw, out, p, progress)
    zw.compressed(bytes(2 * tarfile.BLOCKSIZE))  # end of archive
    zw.close()
    yield from _drain(out)


def encrypt_chunks(chunks: Iterable[bytes], out: EarlyWritebackFile,
                   recipients: Sequence[x25519.Recipient]) -> tuple[bytes, int]:
    """age-encrypt the concatenation of ``chunks`` into ``out``; returns the BLAKE2b-512 and the
    length of the ciphertext (what the signature covers).

    A second thread hashes the ciphertext (hashlib releases the GIL) while this one reads,
    compresses, encrypts and writes; the queue between them holds a few MiB."""
    hasher = minisign.new_hash()
    start = out.written

    def hash_pieces(pieces: list[bytes]) -> None:
        for piece in pieces:
            hasher.update(piece)

    with _BackgroundSink(hash_pieces) as hash_later:
        def sink(pieces: list[bytes]) -> None:
            hash_later(pieces)
            out.write_many(pieces)
        aw = agefmt.AgeWriter(sink, [agefmt.recipient_key(r) for r in recipients])
        for data in chunks:
            aw.write(data)
        aw.close()
    out.flush()
    return hasher.digest(), out.written - start


class _BackgroundSink:
    """Call ``write`` on another thread, in order, with at most ``depth`` blocks waiting.
    An error there is raised here, at the next call or on leaving the ``with``."""

    def __init__(self, write: Callable[[list[bytes]], object], depth: int = 8) -> None:
        self._write = write
        self._q: queue.Queue[list[bytes] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bundle-hasher", daemon=True)

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._write(data)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def __call__(self, data: list[bytes]) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(data)

    def __enter__(self) -> "_BackgroundSink":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def new_bundle_id() -> str:
    return uuid.uuid4().hex
