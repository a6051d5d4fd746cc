"""Read and write wandb's `.wandb` transaction log.

The format (see DESIGN.md): a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then
LevelDB-log framing in 32 KiB blocks that count from the start of the file (the header sits in
block 0). Each chunk has a 7-byte header: CRC-32 (zlib, seeded with the type byte), length
(little-endian u16) and type (FULL, FIRST, MIDDLE, LAST). A block with fewer than 7 bytes left
is zero-padded. Each reassembled record is a serialized ``wandb_internal_pb2.Record``.

The reader streams: it holds one block and one record at a time, so memory does not grow with
the file. It can resume at any record boundary it returned earlier (a saved offset).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
FILE_HEADER_LEN = len(FILE_HEADER)
BLOCK_LEN = 32 * 1024
CHUNK_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


class LogError(Exception):
    """A `.wandb` file that cannot be read; ``offset`` says where, ``detail`` what it costs."""

    def __init__(self, message: str, offset: int, detail: str | None = None) -> None:
        super().__init__(f"{message} at byte offset {offset}" + (f"; {detail}" if detail else ""))
        self.offset = offset


class NotAWandbLog(LogError):
    """The file does not start with the `.wandb` header."""


class CorruptLog(LogError):
    """Damage: a bad chunk with data after it, either whole blocks (damage before the file's
    last block) or whole chunks within the last block. What follows cannot be trusted."""


@dataclass
class Tail:
    """How a read ended.

    ``end`` is the offset just after the last whole record (where to resume). ``torn_at`` is
    set when the file goes on past ``end`` with bytes that do not form a whole record (a
    partial chunk, or a bad chunk in the last block); ``reason`` then says what was wrong.
    """

    end: int
    size: int
    torn_at: int | None = None
    reason: str | None = None


def check_header(f: BinaryIO) -> None:
    f.seek(0)
    head = f.read(FILE_HEADER_LEN)
    if len(head) < FILE_HEADER_LEN:
        raise NotAWandbLog(f"file is {len(head)} bytes, shorter than the .wandb header", 0)
    ident, magic, version = struct.unpack("<4sHB", head)
    if ident != b":W&B" or magic != 0xBEE1:
        raise NotAWandbLog("not a .wandb file (no ':W&B' header)", 0)
    if version != 0:
        raise NotAWandbLog(f"unsupported .wandb version {version}", 4)


class LogReader:
    """Iterate ``(offset, payload)`` over the whole records of a `.wandb` file.

    After iteration, ``tail`` says where reading stopped and whether the tail is torn. A bad
    chunk whose block is not the file's last raises ``CorruptLog`` with its offset.
    """

    def __init__(self, f: BinaryIO, start: int = FILE_HEADER_LEN) -> None:
        if start < FILE_HEADER_LEN:
            raise ValueError(f"start offset {start} is inside the file header")
        self._f = f
        self._start = start
        self.tail: Tail | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        f = self._f
        check_header(f)
        size = os.fstat(f.fileno()).st_size
        pos = self._start
        f.seek(pos)
        block = b""
        block_base = pos  # file offset of block[0]
        record_start: int | None = None
        parts: list[bytes] = []
        end = pos  # after the last whole record

        def torn(at: int, reason: str) -> None:
            self.tail = Tail(end=end, size=size, torn_at=at, reason=reason)

        def bad(at: int, reason: str) -> None:
            # A tear is where writing stopped: nothing whole can follow it. A bad chunk followed
            # by whole blocks, or by whole chunks within the last block, is damage.
            lost_from = record_start if record_start is not None else at
            block_end = (at // BLOCK_LEN + 1) * BLOCK_LEN
            if size > block_end:
                raise CorruptLog(reason, at, _lost(size, lost_from, "whole blocks follow it"))
            later = next_whole_chunk(block[at - block_base:], at, size)
            if later is not None:
                raise CorruptLog(reason, at, _lost(size, lost_from, f"a whole chunk follows it at byte offset {later}"))
            torn(lost_from, reason)

        while True:
            in_block = pos % BLOCK_LEN
            left_in_block = BLOCK_LEN - in_block
            if left_in_block < CHUNK_HEADER_LEN:
                pos += left_in_block  # trailer padding
                continue
            # Refill the buffer with the rest of the current block.
            if not (block_base <= pos < block_base + len(block)):
                f.seek(pos)
                block = f.read(left_in_block)
                block_base = pos
            i = pos - block_base
            avail = len(block) - i
            if avail == 0:
                if record_start is not None:
                    torn(record_start, "the file ends inside a record")
                else:
                    self.tail = Tail(end=end, size=size)
                return
            if avail < CHUNK_HEADER_LEN:
                torn(record_start if record_start is not None else pos, "the file ends inside a chunk header")
                return
            crc, length, ctype = struct.unpack_from("<IHB", block, i)
            if crc == 0 and length == 0 and ctype == 0:
                # Zeroes: a preallocated or padded region. Nothing more was written here yet.
                if any(block[i:]) or size > block_base + len(block):
                    bad(pos, "a zero chunk header followed by data")
                    return
                if record_start is not None:
                    torn(record_start, "the file ends inside a record")
                else:
                    self.tail = Tail(end=end, size=size)
                return
            if ctype not in _TYPE_CRC:
                bad(pos, f"unknown chunk type {ctype}")
                return
            if CHUNK_HEADER_LEN + length > left_in_block:
                bad(pos, f"chunk length {length} runs past its block")
                return
            data = block[i + CHUNK_HEADER_LEN : i + CHUNK_HEADER_LEN + length]
            if len(data) < length:
                torn(record_start if record_start is not None else pos, "the file ends inside a chunk")
                return
            if zlib.crc32(data, _TYPE_CRC[ctype]) != crc:
                bad(pos, "chunk CRC mismatch")
                return
            chunk_at = pos
            pos += CHUNK_HEADER_LEN + length
            if ctype == FULL:
                if record_start is not None:
                    bad(chunk_at, "a FULL chunk inside an unfinished record")
                    return
                end = pos
                yield chunk_at, data
            elif ctype == FIRST:
                if record_start is not None:
                    bad(chunk_at, "a FIRST chunk inside an unfinished record")
                    return
                record_start, parts = chunk_at, [data]
            else:
                if record_start is None:
                    bad(chunk_at, "a continuation chunk without a FIRST chunk")
                    return
                parts.append(data)
                if ctype == LAST:
                    start, payload = record_start, b"".join(parts)
                    record_start, parts = None, []
                    end = pos
                    yield start, payload


def _lost(size: int, lost_from: int, why: str) -> str:
    return (f"{why}, so this is damage, not a torn tail: the {size - lost_from} bytes from byte offset "
            f"{lost_from} to the end (the records there, an exit record among them if the run finished) "
            "cannot be read")


def next_whole_chunk(data: bytes, base: int, size: int) -> int | None:
    """The file offset of the first whole, CRC-valid chunk that starts after ``base`` in
    ``data`` (the bytes from ``base`` to the end of its block), or None."""
    for i in range(1, len(data) - CHUNK_HEADER_LEN + 1):
        at = base + i
        in_block = at % BLOCK_LEN
        if in_block > BLOCK_LEN - CHUNK_HEADER_LEN:
            continue
        crc, length, ctype = struct.unpack_from("<IHB", data, i)
        if ctype not in _TYPE_CRC or in_block + CHUNK_HEADER_LEN + length > BLOCK_LEN:
            continue
        body = data[i + CHUNK_HEADER_LEN : i + CHUNK_HEADER_LEN + length]
        if len(body) == length and at + CHUNK_HEADER_LEN + length <= size and zlib.crc32(body, _TYPE_CRC[ctype]) == crc:
            return at
    return None


def read_records(path: str | os.PathLike, start: int = FILE_HEADER_LEN):
    """Yield ``(offset, Record)``; the generator's return value is the ``Tail``."""
    # Lazy: wandb.proto is preloaded without the SDK (wandb_proto.py); were that to fail, this
    # import would load the whole SDK (~1 s): only where records are read.
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        reader = LogReader(f, start)
        for offset, payload in reader:
            yield offset, parse_record(payload, offset, pb)
        return reader.tail


def parse_record(payload: bytes, offset: int, pb: Any = None) -> Any:
    """The ``Record`` in ``payload`` (read at ``offset``), or ``CorruptLog``."""
    if pb is None:
        from wandb.proto import wandb_internal_pb2 as pb  # lazy, as in read_records
    rec = pb.Record()
    try:
        rec.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise CorruptLog(f"record is not a wandb Record ({exc})", offset) from exc
    return rec


class LogWriter:
    """Write records in the framing that `wandb sync` reads."""

    def __init__(self, f: BinaryIO, append_at: int | None = None) -> None:
        """A new log (writes the file header), or with ``append_at`` the end of an existing log
        whose last record is whole: records then follow it in the same framing."""
        self._f = f
        if append_at is None:
            f.write(FILE_HEADER)
            self._pos = FILE_HEADER_LEN
        else:
            if append_at < FILE_HEADER_LEN:
                raise ValueError(f"cannot append at {append_at}: inside the file header")
            f.seek(append_at)
            self._pos = append_at

    @property
    def offset(self) -> int:
        return self._pos

    def write(self, payload: bytes | object) -> int:
        """Append one record (bytes, or a protobuf message); return its offset."""
        if not isinstance(payload, (bytes, bytearray)):
            payload = payload.SerializeToString()  # type: ignore[attr-defined]
        start = self._pos
        data = memoryview(payload)
        first = True
        while True:
            left = BLOCK_LEN - self._pos % BLOCK_LEN
            if left < CHUNK_HEADER_LEN:
                self._f.write(b"\x00" * left)
                self._pos += left
                left = BLOCK_LEN
            room = left - CHUNK_HEADER_LEN
            piece, data = data[:room], data[room:]
            last = len(data) == 0
            ctype = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            crc = zlib.crc32(piece, _TYPE_CRC[ctype])
            self._f.write(struct.pack("<IHB", crc, len(piece), ctype))
            self._f.write(piece)
            self._pos += CHUNK_HEADER_LEN + len(piece)
            first = False
            if last:
                return start
