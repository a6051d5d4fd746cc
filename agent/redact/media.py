"""Media items inside history and summary values: find them, and rewrite them.

wandb writes a media item as a JSON object with a ``_type`` (``image-file``,
``images/separated``, ``table-file`` ...) that names its file(s) under ``files/``. wandb 0.15
puts the whole object in one item's ``value_json``; wandb 0.31 flattens it into one item per
field (``nested_key = [key, field]``). Both end up here as a plain dict.

Everything in this module takes data and returns data; the files themselves are handled by
``run.py`` through the ``resolve`` callback.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from .policy import Decision

# wandb `_type` -> the policy's media kind.
KINDS: dict[str, str] = {
    "image-file": "image", "images/separated": "image", "images": "image", "image": "image",
    "audio-file": "audio", "audio": "audio",
    "video-file": "video", "videos": "video", "video": "video",
    "html-file": "html", "html": "html",
    "table-file": "table", "table": "table", "joined-table": "table", "partitioned-table": "table",
    "object3D-file": "object3d", "object3D": "object3d",
    "molecule-file": "molecule", "molecule": "molecule",
    "plotly-file": "any", "bokeh-file": "any", "graph-file": "any",
}
# Fields that point at more files or at per-item text: a placeholder cannot keep them.
_OVERLAYS = ("masks", "boxes", "all_masks", "all_boxes", "classes")
_TEXT_FIELDS = ("caption", "captions", "audioCaptions")


@dataclass(frozen=True)
class FileOutcome:
    """A file under files/ after redaction: its new name and what wandb records about it."""
    path: str
    sha256: str
    size: int
    tag: str = ""       # keyed tag of the original ("" when kept as is)
    fmt: str = ""       # new format / extension when the placeholder changed it


Resolve = Callable[[str, str, Decision, str], "FileOutcome | None"]  # (path, kind, decision, key)
Decide = Callable[[str, str], Decision]                              # (key, kind)
TextTag = Callable[[str, str], str]                                  # (kind, value) -> tag


# Typed objects that are no media: a histogram is numbers.
NOT_MEDIA = frozenset({"histogram"})


def is_media_type(t: Any) -> bool:
    """Whether an object of wandb type ``t`` is media: one of ``KINDS``, or a type this
    redactor does not know (handled as media, of kind "any", so that it fails closed)."""
    return isinstance(t, str) and t not in NOT_MEDIA


def media_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        t = value.get("_type")
        if is_media_type(t):
            return KINDS.get(t, "any")
    return None


# A sequence's own items (a list of wandb.Audio, Video or Object3D logged under one key): each a
# media object with its own file, caption and digest, rewritten as a single one is.
SEQUENCE_FIELDS = ("audio", "videos", "objects")


def _own_files(node: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if isinstance(node.get("path"), str):
        out.append(node["path"])
    # (An Object3D sequence's ``filenames`` are relative to its media directory: its
    # ``objects`` name the same files from the run's.)
    if isinstance(node.get("filenames"), list) and "objects" not in node:
        out += [f for f in node["filenames"] if isinstance(f, str)]
    return out


def _members(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for f in SEQUENCE_FIELDS if isinstance(node.get(f), list) for m in node[f] if media_kind(m) is not None]


def referenced_files(node: dict[str, Any]) -> list[str]:
    """The run-relative file names a media object points at, its sequence's items' too."""
    out = _own_files(node)
    for m in _members(node):
        out += referenced_files(m)
    return out


def marker(kind: str) -> str:
    """What a dropped item leaves behind in history/summary."""
    return f"[tfwb: {kind} dropped by policy]"


def transform_node(node: dict[str, Any], key: str, decide: Decide, resolve: Resolve,
                   text_tag: TextTag, count: Callable[[Decision, str, str], None]) -> Any:
    """Rewrite one media object. Keep returns ``node`` itself (the caller then leaves the raw
    JSON alone, bit for bit); hash returns a new object; drop returns a marker string."""
    kind = media_kind(node) or "any"
    d = decide(key, kind)
    count(d, kind, key)
    if d.action != "keep" and node.get("_type") not in KINDS:
        # A type this redactor does not know (an LLM trace, a newer wandb's): nothing of it
        # leaves unless a rule keeps it; its files are dropped with it.
        for f in referenced_files(node):
            resolve(f, kind, Decision("drop", d.rule), key)
        return marker(f"{kind} of unknown type")
    if _members(node):
        return _sequence(node, key, d, decide, resolve, text_tag)
    files = _own_files(node)
    if d.action == "keep":
        for f in files:
            resolve(f, kind, d, key)   # copied as is
        return node
    if d.action == "drop":
        for f in files:
            resolve(f, kind, d, key)   # recorded as dropped, never copied
        return marker(kind)
    new = {k: v for k, v in node.items() if k not in _OVERLAYS}
    outcomes = [resolve(f, kind, d, key) for f in files]
    if isinstance(node.get("path"), str):
        o = outcomes.pop(0)
        if o is None:
            return marker(kind)
        new["path"], new["size"] = o.path, o.size
        if "sha256" in node or kind != "table":
            new["sha256"] = o.sha256
        if o.fmt:
            new["format"] = o.fmt
        if "caption" in node:
            new["caption"] = f"hash:{o.tag[:16]}"
    if isinstance(node.get("filenames"), list):
        kept = [o for o in outcomes if o is not None]
        new["filenames"] = [o.path for o in kept]
        new["count"] = len(kept)
        if kept and kept[0].fmt:
            new["format"] = kept[0].fmt
        if "captions" in node:
            new["captions"] = [f"hash:{o.tag[:16]}" for o in kept]
    for field_name in _TEXT_FIELDS:  # captions without a file to take a tag from
        if field_name in new and new[field_name] is node.get(field_name):
            new[field_name] = _hash_texts(node[field_name], text_tag)
    if kind == "table" and isinstance(node.get("ncols"), int):
        dropped = sum(1 for _, a in d.columns if a == "drop")
        new["ncols"] = max(0, node["ncols"] - dropped) if dropped else node["ncols"]
    return new


def _sequence(node: dict[str, Any], key: str, d: Decision, decide: Decide, resolve: Resolve,
              text_tag: TextTag) -> Any:
    """A sequence: each item rewritten as a single one is; the whole as its items say (an
    Object3D sequence's ``filenames`` named again from its rewritten objects)."""
    if d.action == "keep":
        for f in referenced_files(node):
            resolve(f, media_kind(node) or "any", d, key)
        return node
    if d.action == "drop":
        for f in referenced_files(node):
            resolve(f, media_kind(node) or "any", d, key)
        return marker(media_kind(node) or "any")
    new = {k: v for k, v in node.items() if k not in _OVERLAYS}
    for field_name in SEQUENCE_FIELDS:
        if isinstance(node.get(field_name), list):
            new[field_name] = [transform_node(m, key, decide, resolve, text_tag, _uncounted)
                               if media_kind(m) is not None else marker("any") for m in node[field_name]]
    for field_name in _TEXT_FIELDS:
        if field_name in new:
            new[field_name] = _hash_texts(node[field_name], text_tag)
    if isinstance(new.get("objects"), list):
        prefix = "media/object3D/"
        paths = [o["path"] for o in new["objects"] if isinstance(o, dict) and isinstance(o.get("path"), str)]
        new["filenames"] = [p[len(prefix):] if p.startswith(prefix) else p for p in paths]
        new["count"] = len(paths)
    return new


def _uncounted(d: Decision, kind: str, key: str) -> None:
    """A sequence's items are counted with it, once."""


def in_field_order(new: Any, order: list[str]) -> Any:
    """A rewritten flat object (``transform_node``'s) with its fields in the order the rewrite
    gives a node whose fields came in ``order``: the node's own fields where they came (the
    overlays excepted: the rewrite sets them again, at the end), then those it added, in the
    order it adds them."""
    if not isinstance(new, dict):
        return new
    out = {k: new[k] for k in order if k in new and k not in _OVERLAYS}
    if len(out) != len(new):
        out.update((k, v) for k, v in new.items() if k not in out)
    return out


def _hash_texts(value: Any, text_tag: TextTag) -> Any:
    if isinstance(value, str):
        return f"hash:{text_tag('caption', value)}"
    if isinstance(value, list):
        return [_hash_texts(v, text_tag) for v in value]
    return value


def transform_value(value: Any, key: str, decide: Decide, resolve: Resolve, text_tag: TextTag,
                    count: Callable[[Decision, str, str], None]) -> tuple[Any, bool]:
    """Walk a JSON value; rewrite every media object in it. Returns (value, changed).

    Nested dicts extend the key with '.', as wandb shows nested keys; list positions do not
    (every element of a media list answers to the same key)."""
    if isinstance(value, dict):
        if media_kind(value) is not None:
            new = transform_node(value, key, decide, resolve, text_tag, count)
            return new, new is not value
        changed, out = False, {}
        for k, v in value.items():
            nv, c = transform_value(v, f"{key}.{k}" if key else str(k), decide, resolve, text_tag, count)
            out[k] = nv
            changed |= c
        return (out if changed else value), changed
    if isinstance(value, list):
        changed, out = False, []
        for v in value:
            nv, c = transform_value(v, key, decide, resolve, text_tag, count)
            out.append(nv)
            changed |= c
        return (out if changed else value), changed
    return value, False


def contains_media(value: Any) -> bool:
    if isinstance(value, dict):
        return media_kind(value) is not None or any(contains_media(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_media(v) for v in value)
    return False


# One encoder for every value written back (``json.dumps`` with arguments builds one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    return _ENCODE(value)
