"""Files records: the path each item leaves with, and the common record rewritten from its bytes.

wandb 0.31 writes one files record per media file (10,000s in a big run: most of a log's
records), each exactly ``num``, ``_info`` holding only a ``stream_id``, and ``files`` holding
one item holding only a ``path``, in that order. ``rewrite_bytes`` rewrites such a record from
its bytes into the bytes the generic path gives (parse, ``records.rewrite``, serialize), for a
third of the time: the item's path by the same rule (``file_path``); ``num`` (no string) and
``_info``'s ``stream_id`` (an identifier, ``string_fields.STRUCTURAL``) are what the walk leaves
as they are, and the walk skips the item's path (``FILES_ITEMS``: a name the redaction made).

Fail closed: a record of any other shape (another field, a field twice or in another order, a
second item, an unknown field, a number or length not written the way protobuf writes it, bytes
that are not UTF-8, a length that does not add up) is not rewritten here, and takes the generic
path, which parses it, drops what it does not know and scrubs every string. The shape is checked
against the descriptors and the walk's plan at import; if they differ, there is no fast path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wandb.proto import wandb_internal_pb2 as pb

from .files import file_action, is_text
from .string_fields import MSG, MSGS, SKIP, field_plan

if TYPE_CHECKING:
    from .redaction import Redaction

# A FilesItem's only string is its path (the rest are enums), which ``files`` sets to a name the
# redaction made (``Outgoing.path`` leaves those as they are): the walk may skip the items.
# Were a wandb to add a string field to it, the walk takes them again (and there is no fast path).
FILES_ITEMS = pb.FilesRecord.DESCRIPTOR.fields_by_name["files"] if all(
    f.name == "path" or f.type not in (f.TYPE_STRING, f.TYPE_MESSAGE, f.TYPE_BYTES)
    for f in pb.FilesItem.DESCRIPTOR.fields) else None


def file_path(r: "Redaction", path: str) -> str | None:
    """The path a files record's item leaves with (a name the redaction made), or None: the
    item does not leave."""
    action = file_action(path, r.policy)
    if action == "media":
        o = r.media.file_outcome(path)
        return None if o is None else o.path
    if action.startswith("drop"):
        return None
    if action == "scrub" and not _is_text(r, path):
        return None               # the walk of files/ drops it: no record may name it
    return r.out.path(path)


def _is_text(r: "Redaction", rel: str) -> bool:
    src = r.source.file(rel)
    return src is not None and is_text(src)


def files(r: "Redaction", rec: Any) -> bool:
    """The generic rule: each item's path by ``file_path``; the record leaves if an item does."""
    items = rec.files.files       # (one record per media file in wandb 0.31: read each once)
    keep = []
    for f in items:
        new = file_path(r, f.path)
        if new is not None:
            f.path = new
            keep.append(f)
    if len(keep) != len(items):
        del items[:]
        items.extend(keep)
    return bool(keep)


def _shape_holds() -> bool:
    """Whether the descriptors and the walk's plan are those the byte shape was written for."""
    rec, fr, fi = pb.Record.DESCRIPTOR, pb.FilesRecord.DESCRIPTOR, pb.FilesItem.DESCRIPTOR
    try:
        num, fil, info = (rec.fields_by_name[n] for n in ("num", "files", "_info"))
        want = [(num, 1, num.TYPE_INT64), (fil, 6, num.TYPE_MESSAGE), (info, 200, num.TYPE_MESSAGE),
                (fr.fields_by_name["files"], 1, num.TYPE_MESSAGE), (fi.fields_by_name["path"], 1, num.TYPE_STRING),
                (info.message_type.fields_by_name["stream_id"], 1, num.TYPE_STRING)]
    except KeyError:
        return False
    plan, files_plan = field_plan(rec), field_plan(fr)
    # _info is walked, its stream_id left as it is (an identifier): the bytes keep it as they are.
    info_plan = field_plan(info.message_type)
    return (FILES_ITEMS is not None and all(fd.number == n and fd.type == t for fd, n, t in want)
            and fil.message_type is fr and FILES_ITEMS.message_type is fi
            and plan[num] is SKIP and plan[info] is MSG and info_plan[info.message_type.fields_by_name["stream_id"]] is SKIP
            and plan[fil] is MSG and files_plan[FILES_ITEMS] is MSGS)


ENABLED = _shape_holds()


def rewrite_bytes(r: "Redaction", p: bytes) -> bytes | None | bool:
    """The bytes that leave for record ``p`` when it has the shape; None when it has it and
    does not leave (counted as the generic path counts it); False when it does not have it."""
    # num: a varint of at most 9 bytes (a positive int64), minimal (its last byte not 0).
    i = 1
    if not ENABLED or p[:1] != b"\x08":
        return False
    while i < 10 and i < len(p) and p[i] & 0x80:
        i += 1
    if i >= 10 or i >= len(p) or p[i] == 0:
        return False
    num = p[1:i + 1]
    # _info (field 200): exactly a stream_id, non-empty; lengths below 128 (one byte).
    i += 1
    if p[i:i + 2] != b"\xc2\x0c" or p[i + 3:i + 4] != b"\x0a" or i + 4 >= len(p):
        return False
    info_len, sid_len = p[i + 2], p[i + 4]
    if info_len != sid_len + 2 or not 0 < sid_len < 126:
        return False
    info = p[i + 2:i + 5 + sid_len]     # its length, then the message
    i += 5 + sid_len
    # files (field 6): exactly one item holding exactly a path, non-empty, to the record's end.
    head = p[i:i + 6]
    if len(head) < 6 or head[0] != 0x32 or head[2] != 0x0a or head[4] != 0x0a:
        return False
    path_b = p[i + 6:]
    if not (head[1] == head[3] + 2 and head[3] == head[5] + 2 and head[5] == len(path_b) > 0 and head[1] < 128):
        return False
    try:
        info[3:].decode("utf-8")
        path = path_b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    new = file_path(r, path)
    if new is None:
        r.report.records_dropped["files (nothing left to send)"] += 1
        return None
    nb = new.encode("utf-8")
    n = len(nb)
    if n > 123:       # (then its lengths take two bytes: written by protobuf, as the generic path does)
        msg = pb.Record.FromString(p)
        msg.files.files[0].path = new
        return msg.SerializeToString()
    # As protobuf writes it: fields by number (num, files, _info), lengths as one-byte varints.
    return b"\x08" + num + b"\x32" + bytes((n + 4, 0x0a, n + 2, 0x0a, n)) + nb + b"\xc2\x0c" + info
