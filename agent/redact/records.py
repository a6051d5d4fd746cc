"""Which records of a `.wandb` log leave, and how each is rewritten.

Fail closed: ``RULES`` lists every record type that may leave, with its structural rewrite
(media, config keys, identity, files, artifacts); after it, every string of the record passes
``Outgoing.message``. A record type not in ``RULES`` — TensorBoard's (its events are read at
sync time from the volume), internal requests (one carries the API key), a type a newer wandb
adds, a field number this wandb does not know — is dropped and counted in the report, and so
are unknown fields inside known records. Console records are joined into whole lines first
(``console.TextStream``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Callable

from google.protobuf import unknown_fields
from wandb.proto import wandb_internal_pb2 as pb

from . import items as items_mod
from . import meta
from .console_records import Console
from .console import TextStream
from .files import Sink, copy_stream, is_text, scrub_text_file
from .files_records import FILES_ITEMS, files
from .tables import redact_table

if TYPE_CHECKING:
    from .redaction import Redaction

STAGING = "_staging"
CONSOLE = ("output_raw", "output")
# Record types that are dropped on purpose, and why (the report says so).
DROPPED = {"tbrecord": "tensorboard", "request": "internal request", "output_logger": "wandb's own log"}
# Where each kept type's strings come from (the report's places).
PLACE = {"history": "history", "summary": "summary", "config": "config", "run": "run",
         "environment": "metadata", "files": "file_names", "stats": "stats", "artifact": "artifacts",
         "use_artifact": "artifacts", "noop_link_artifact": "artifacts", "alert": "alerts",
         "telemetry": "telemetry", "metric": "key_names", "exit": "other", "final": "other",
         "header": "other", "footer": "other", "preempting": "other", "output_raw": "console",
         "output": "console"}


def _make(cls: Any) -> Callable[[tuple[str, ...], str], Any]:
    def build(path: tuple[str, ...], value_json: str) -> Any:
        it = cls(value_json=value_json)
        if len(path) == 1:
            it.key = path[0]
        else:
            it.nested_key.extend(path)
        return it
    return build


_NEW_SUMMARY, _NEW_HISTORY = _make(pb.SummaryItem), _make(pb.HistoryItem)


def _items(r: "Redaction", container: Any, new_item: Callable[[tuple[str, ...], str], Any]) -> bool:
    new = items_mod.redact_items(container, new_item, r.decide, r.media.resolve, r.text_tag, r.count,
                                 r.is_sensitive if r.sensitive else None)
    if new is not None:
        del container[:]          # the kept items survive in ``new`` (protobuf copies on extend)
        container.extend(new)
    return True


def _config(r: "Redaction", updates: Any) -> bool:
    for u in updates:
        key = u.key or ".".join(u.nested_key)
        try:
            value = json.loads(u.value_json)
        except ValueError:
            continue
        nv, changed = meta.redact_config_value(key, value, r.policy, r.out, r.text_tag, r.report, r.sensitive)
        if changed:
            u.value_json = json.dumps(nv)
    return True


def _run(r: "Redaction", rec: Any) -> bool:
    if "identifiers" not in r.policy.keep_strings:
        meta.refuse_secret_routing(rec.run, r.scrubber.routing_rules, "run")
    _config(r, rec.run.config.update)
    if r.policy.metadata == "redact":
        meta.redact_run_identity(rec.run, r.text_tag, r.report)
    return _items(r, rec.run.summary.update, _NEW_SUMMARY)


def _environment(r: "Redaction", rec: Any) -> bool:
    if r.policy.metadata == "redact":
        meta.redact_environment(rec.environment, r.out, r.text_tag, r.report)
    return True


def _artifact(r: "Redaction", rec: Any) -> bool:
    art = rec.artifact
    table_artifact = art.type == "run_table"
    if not table_artifact and r.policy.artifacts == "drop":
        r.report.artifacts["dropped"] += 1
        return False
    if "identifiers" not in r.policy.keep_strings:
        meta.refuse_secret_routing(art, r.scrubber.routing_rules, "artifact")
    keep, tables = [], []  # tables: the keys of a run-table artifact's tables
    for e in art.manifest.contents:
        if e.ref and not e.local_path:
            ref = e.ref
            if ref.startswith("file://"):   # a local path behind a URI is still a local path
                e.ref = "file://" + r.out.text(ref[len("file://"):], "artifacts")
            else:
                e.ref = r.out.text(ref, "artifacts")
            if e.digest == ref:             # a reference without checksum: its digest is the URI
                e.digest = e.ref
            keep.append(e)            # a reference: no bytes of ours travel with it
            continue
        if table_artifact and not e.path.endswith(".table.json"):
            r.report.artifacts["entries_dropped"] += 1
            continue
        src = r.map_path(e.local_path) if e.local_path else None
        if src is None or not src.is_file() or src.is_symlink():
            r.report.artifacts["entries_missing"] += 1
            continue
        new_path = r.out.path(e.path)
        rel = f"{STAGING}/{rec.num}/{new_path}"
        if not _safe_rel(rel):
            r.report.artifacts["entries_dropped"] += 1
            continue
        if e.path.endswith(".table.json"):
            # A table is strings: in a run-table artifact or any other kept one (``art.add(
            # wandb.Table(...), "t")``), it is redacted as the policy says of tables.
            data = src.read_bytes()
            r.report.bytes_in += len(data)
            key = e.path[: -len(".table.json")]
            d = r.decide(key, "table")
            try:
                table = json.loads(data) if d.action != "drop" else None
            except ValueError:
                table = None
            if not isinstance(table, dict):
                r.report.artifacts["entries_dropped"] += 1
                continue
            data = json.dumps(redact_table(table, d, r.text_tag, r.report.columns,
                                           f"{key} (artifact)", r.out)).encode()
            r.write(rel, data)
            digest, size = hashlib.md5(data).digest(), len(data)
            tables.append(key)
        else:
            md5 = hashlib.md5()
            sink = Sink(r.out_path(rel), md5.update)
            try:
                if r.policy.scrub_files and is_text(str(src)):
                    # Under ``scrub_files`` a kept artifact's text is scrubbed as files/' text is.
                    r.report.bytes_in += scrub_text_file(str(src), sink, TextStream(
                        lambda s: r.out.text(s, "artifacts"), file=True))
                    r.report.artifacts["entries_scrubbed"] += 1
                else:
                    r.report.bytes_in += copy_stream(str(src), sink)
            finally:
                sink.close()
            size = sink.size
            r.report.bytes_out += size
            digest = md5.digest()
        e.path = new_path
        # Where the gateway will find it (``relocate_staging`` puts the run directory in
        # front): no path of this node's goes into the bundle.
        e.local_path = f"/{rel}"
        e.digest = base64.b64encode(digest).decode()
        e.size = size
        keep.append(e)
    if not keep or (table_artifact and not tables):
        r.report.artifacts["dropped"] += 1
        return False
    if table_artifact:
        art.name = _table_artifact_name(art.run_id, art.name, tables[0], r.out.name(tables[0]))
    del art.manifest.contents[:]
    art.manifest.contents.extend(keep)
    h = hashlib.md5(b"wandb-artifact-manifest-v1\n")
    for e in sorted(keep, key=lambda e: e.path):
        h.update(f"{e.path}:{e.digest}\n".encode())
    art.digest = h.hexdigest()
    r.report.artifacts["rewritten"] += 1
    return True


def _table_artifact_name(run_id: str, name: str, key: str, new_key: str) -> str:
    """A run-table artifact's name, made again from the table's key as scrubbed (the same new
    name the key has in the history). wandb names
    it after the key: ``run-<id>-<key>`` (0.31), or with every character but letters, digits
    and ``_`` removed (0.15). That second form no longer looks like the secret it came from
    (``glpat-…`` loses its dash), so scrubbing the old name as text cannot be trusted: the old
    name never leaves, whatever its form."""
    if name == f"run-{run_id}-{key}":
        return f"run-{run_id}-{new_key}"
    return f"run-{run_id}-{_WANDB015_TABLE_NAME.sub('', new_key)}"


_WANDB015_TABLE_NAME = re.compile(r"[^a-zA-Z0-9_]+")  # wandb 0.15's sdk/data_types/utils.py


def _safe_rel(rel: str) -> bool:
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and \
        not any(p in ("..", ".", "") for p in rel.split("/"))


def _keep(r: "Redaction", rec: Any) -> bool:
    return True


RULES: dict[str, Callable[["Redaction", Any], bool]] = {
    "history": lambda r, rec: _items(r, rec.history.item, _NEW_HISTORY),
    "summary": lambda r, rec: _items(r, rec.summary.update, _NEW_SUMMARY),
    "config": lambda r, rec: _config(r, rec.config.update),
    "run": _run, "environment": _environment, "files": files, "artifact": _artifact,
    # No structure of ours in these: the generic pass scrubs their strings.
    "stats": _keep, "alert": _keep, "telemetry": _keep, "metric": _keep, "exit": _keep,
    "final": _keep, "header": _keep, "footer": _keep, "preempting": _keep,
    "use_artifact": _keep, "noop_link_artifact": _keep,
}


def _type_name(rec: Any) -> str:
    t = rec.WhichOneof("record_type")
    if t is not None:
        return t
    numbers = sorted({f.field_number for f in unknown_fields.UnknownFieldSet(rec)})
    return "unknown:" + ",".join(map(str, numbers)) if numbers else "empty"


def rewrite(r: "Redaction", rec: Any, console: Console) -> list[Any]:
    """The records that leave in place of ``rec``: none, it (rewritten), or held console text."""
    t = _type_name(rec)
    if t in DROPPED or t not in RULES and t not in CONSOLE:
        r.report.records_dropped[f"{t} ({DROPPED[t]})" if t in DROPPED else t] += 1
        return []
    before = rec.ByteSize()
    rec.DiscardUnknownFields()
    if rec.ByteSize() != before:
        r.report.unknown_fields[t] += 1
    skip = None
    if t in CONSOLE:
        out = console.take(t, rec)
    elif t in _ITEM_FIELD and _items_scrubbed(r, rec, t):
        out = [rec]
        skip = _ITEM_FIELD[t]       # its items are redacted and scrubbed already
    elif RULES[t](r, rec):
        out = [rec]
        if t == "files":
            skip = FILES_ITEMS      # every kept item's path is a name ``files`` made already
    else:
        r.report.records_dropped[f"{t} (nothing left to send)"] += 1
        return []
    for o in out:
        r.out.message(o, PLACE[t], skip)
    return out


# The item containers of history and summary records, which ``_items_scrubbed`` handles whole.
_ITEM_FIELD = {"history": pb.HistoryRecord.DESCRIPTOR.fields_by_name["item"],
               "summary": pb.SummaryRecord.DESCRIPTOR.fields_by_name["update"]}


def _items_scrubbed(r: "Redaction", rec: Any, t: str) -> bool:
    """History and summary items in one pass: media rewritten (as ``_items``) and every key
    name and value scrubbed (as ``Outgoing`` would), without a second parse of each value.
    False when an item holds more than a key and a JSON value: the generic path does it."""
    container = rec.history.item if t == "history" else rec.summary.update
    handled, new, updates = items_mod.redact_scrub_items(container, r.decide, r.media.resolve, r.text_tag, r.count,
                                                         r.is_sensitive if r.sensitive else None, r.out, PLACE[t],
                                                         r.media_memo)
    if not handled:
        return False
    if updates is not None:
        for i, raw in updates:   # same keys in the same places: only values change
            container[i].value_json = raw
    elif new is not None:
        del container[:]
        add = container.add
        for path, nested, raw in new:
            if nested:
                add(nested_key=path, value_json=raw)
            else:
                add(key=path[0], value_json=raw)
    return True
