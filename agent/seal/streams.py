"""Small stream pieces for sealing: zstd that stores already-compressed data, hashing writers.

A zstd stream may be any sequence of frames, and ``zstd -d`` decodes them one after another.
Compressible data goes into ordinary level-3 frames. Data that is already compressed (PNG,
JPEG, gzip, ...) goes into *raw* frames: a frame whose blocks are stored as they are (zstd
format, RFC 8878 sections 3.1.1, 3.1.1.2). Storing costs one copy instead of a futile search
for matches, which is where most of zstd's time goes on incompressible input.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from typing import BinaryIO, Callable

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX = 128 * 1024           # the largest block any zstd frame may hold
RAW_FRAME_MAX = 1 << 20            # content per raw frame: keeps the decoder's window small
# Frame header descriptor: content size in 4 bytes (flag 2), single segment (window = content
# size), no checksum (age authenticates every byte), no dictionary.
_FHD_RAW = 0b1010_0000


def raw_frame(data: bytes | memoryview) -> list[bytes | memoryview]:
    """One zstd frame holding ``data`` in raw (stored) blocks, as pieces that reference
    ``data`` rather than copy it. ``len(data) <= RAW_FRAME_MAX``."""
    n = len(data)
    assert 0 < n <= RAW_FRAME_MAX
    parts: list[bytes | memoryview] = [ZSTD_MAGIC + bytes([_FHD_RAW]) + struct.pack("<I", n)]
    mv = memoryview(data)
    for off in range(0, n, _BLOCK_MAX):
        block = mv[off:off + _BLOCK_MAX]
        last = 1 if off + _BLOCK_MAX >= n else 0
        # Block header, 3 bytes little-endian: size << 3 | type (0 = raw) << 1 | last.
        parts.append((len(block) << 3 | last).to_bytes(3, "little"))
        parts.append(block)
    return parts


ZSTD_JOB_SIZE = 2 << 20  # bytes of input per libzstd worker job (see ZstdMixedWriter)


class ZstdMixedWriter:
    """Write through zstd, choosing per call whether to compress (level ``level``) or store.

    Consecutive compressed writes share one frame; switching to stored ends that frame.
    """

    def __init__(self, sink: Callable[[bytes | memoryview], object], level: int = 3, threads: int = 0) -> None:
        self._sink = sink
        # With worker threads libzstd cuts the input into jobs, several in flight at once; its
        # default job size at low levels holds hundreds of MB of an incompressible member (a
        # checkpoint) in memory. Small jobs keep sealing's memory bounded whatever the file.
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, **({"job_size": ZSTD_JOB_SIZE} if threads else {}))
        self._cctx = zstandard.ZstdCompressor(compression_params=params)
        self._cobj: zstandard.ZstdCompressionObj | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self._sink(data)
            self.bytes_out += len(data)

    def compressed(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        if self._cobj is None:
            self._cobj = self._cctx.compressobj()
        self.bytes_in += len(data)
        self._emit(self._cobj.compress(data))

    def stored(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        self._end_frame()
        self.bytes_in += len(data)
        mv = memoryview(data)
        for off in range(0, len(mv), RAW_FRAME_MAX):
            for part in raw_frame(mv[off:off + RAW_FRAME_MAX]):
                self._emit(part)

    def write(self, data: bytes | memoryview, store: bool = False) -> None:
        (self.stored if store else self.compressed)(data)

    def _end_frame(self) -> None:
        if self._cobj is not None:
            self._emit(self._cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            self._cobj = None

    def close(self) -> None:
        self._end_frame()


class HashingReader:
    """Read from ``src`` and hash what was read: proves the bytes decrypted are the bytes whose
    signature was checked, even if the file changed on its medium in between."""

    def __init__(self, src: BinaryIO, hasher: "hashlib._Hash") -> None:
        self.src, self.hasher, self.size = src, hasher, 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        n = self.src.readinto(b)  # type: ignore[attr-defined]
        if n:
            self.hasher.update(memoryview(b)[:n])
            self.size += n
        return n or 0


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        # The process's own symbols, libc's among them: ``ctypes.util.find_library`` would run
        # ``ldconfig -p`` in a subprocess whenever this module is imported (every command).
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    SYNC_FILE_RANGE_WRITE = 2

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)  # a hint: failure only costs speed
    return start


_start_writeback = _load_sync_file_range()
WRITEBACK_EVERY = 8 << 20


class EarlyWritebackFile:
    """A file written front to back that asks the kernel to start writing each 8 MiB to disk
    as soon as it is complete (sync_file_range, no waiting), so the final fsync finds little
    left to do: the disk works while the CPU compresses and encrypts instead of after."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.fd = f, f.fileno()
        self.written = self.flushed_to = 0

    def write(self, data: bytes) -> int:
        n = self.f.write(data)
        self._wrote(len(data))
        return n or len(data)

    def write_many(self, pieces: list[bytes]) -> None:
        """Many pieces in one system call (writev), none of them copied on the way."""
        self.f.flush()
        total = sum(map(len, pieces))
        views = [memoryview(p) for p in pieces]
        done = 0
        while done < total:
            n = os.writev(self.fd, views[:1024])  # IOV_MAX
            done += n
            while n and views:  # drop what was written (a short writev is rare but legal)
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0], n = views[0][n:], 0
        self._wrote(total)

    def _wrote(self, n: int) -> None:
        self.written += n
        if _start_writeback is not None and self.written - self.flushed_to >= WRITEBACK_EVERY:
            self.f.flush()
            _start_writeback(self.fd, self.flushed_to, self.written - self.flushed_to)
            self.flushed_to = self.written

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.fd

    def fsync(self) -> None:
        self.f.flush()
        os.fsync(self.fd)
