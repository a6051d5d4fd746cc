"""Media objects among history and summary items: which items make up one, and the planning
pass's find.

An item is a protobuf ``HistoryItem`` / ``SummaryItem`` (``key`` or ``nested_key``, and
``value_json``). wandb 0.31 flattens a media object into one item per field under the
object's key (``samples/ct._type``, ``samples/ct.path`` ...); older wandb writes it whole as
one item's JSON value.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from . import media

Path_ = tuple[str, ...]
_DECODER = json.JSONDecoder()
_decode, _scan = _DECODER.decode, _DECODER.scan_once


def loads(raw: str) -> Any:
    """The JSON decoder's ``decode(raw)`` (``json.loads`` without its wrapper): the same value,
    the same ValueError. A value that starts at its first character and ends at its last (every
    value_json wandb writes) is read by the decoder's C scanner alone, without ``decode``'s two
    whitespace matches and its wrappers (called for every field of every media object, in the
    plan's fold and in the rewrite); anything else is left to ``decode``."""
    try:
        value, end = _scan(raw, 0)
    except StopIteration:
        return _decode(raw)
    return value if end == len(raw) else _decode(raw)


def display_key(path: Path_) -> str:
    return ".".join(path)


def may_hold_media(raw: str) -> bool:
    # Cheap test before parsing: media objects are JSON objects (or lists of them).
    s = raw.lstrip()
    return s[:1] in ("{", "[")


def item_paths(items: Sequence[Any]) -> list[Path_]:
    # (``nested_key[:]``: the repeated field as a list in one call, cheaper than iterating it.)
    return [tuple(nk) if (nk := it.nested_key[:]) else (it.key,) for it in items]


def _media_roots(raws: Sequence[str], paths: Sequence[Path_], typed: Sequence[int] | None = None) -> set[Path_]:
    """Roots of media objects that wandb 0.31 flattened into one item per field. ``typed``: the
    indices of the items whose path ends in ``_type`` (the only candidates), when known."""
    roots: set[Path_] = set()
    for i in (typed if typed is not None else range(len(paths))):
        path = paths[i]
        if len(path) >= 2 and path[-1] == "_type":
            try:
                t = loads(raws[i])
            except ValueError:
                continue
            if media.is_media_type(t):
                roots.add(path[:-1])
    return roots


def _root_of(path: Path_, roots: set[Path_]) -> Path_ | None:
    for n in range(1, len(path)):
        if path[:n] in roots:
            return path[:n]
    return None


def media_groups(raws: Sequence[str], paths: Sequence[Path_], typed: Sequence[int] | None = None
                  ) -> tuple[list[Path_ | None], dict[Path_, list[int]]]:
    """For each item, the media object (its root path) it belongs to, or None; and each media
    object's items, in order of first appearance. ``typed``: as ``_media_roots``."""
    if typed is not None and not typed:
        return [None] * len(paths), {}
    roots = _media_roots(raws, paths, typed)
    if not roots:
        return [None] * len(paths), {}
    owner = _owners(paths, roots)
    groups: dict[Path_, list[int]] = {}
    for i, r in enumerate(owner):
        if r is not None:
            groups.setdefault(r, []).append(i)
    return owner, groups


def _owners(paths: Sequence[Path_], roots: set[Path_]) -> list[Path_ | None]:
    """``_root_of`` of each path; most roots are one key long."""
    if all(len(r) == 1 for r in roots):
        # Then a path's root can only be its first key (the common case: one comprehension).
        return [p[:1] if len(p) >= 2 and p[:1] in roots else None for p in paths]
    out: list[Path_ | None] = []
    for p in paths:
        if len(p) < 2:
            out.append(None)
        elif p[:1] in roots:
            out.append(p[:1])
        else:
            out.append(_root_of(p, roots) if len(p) > 2 else None)
    return out


def insert(node: dict[str, Any], rel: Path_, value: Any) -> None:
    """One flattened item's value at its place (``rel``, below the root) in the object."""
    for part in rel[:-1]:
        node = node.setdefault(part, {})
    node[rel[-1]] = value


# The fields of a media object that planning reads: its type, its files, its size.
PLAN_FIELDS = frozenset({"_type", "path", "filenames", "width", "height"} | set(media.SEQUENCE_FIELDS))


def media_in_items(items: Sequence[Any], fields: frozenset[str] | None = None,
                   seen: set[Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(key, media object) for every media object in the items: the planning pass uses it.
    ``fields``: of a flattened object (wandb 0.31), only these top-level fields are read.
    ``seen``: flattened objects met before (same key, same fields, same values, in any order for
    a flat object: wandb writes each one in the history row and again in the summary, in
    another order) are not returned again."""
    # (This runs for every history and summary record of every log read: one loop over the
    # items, the roots and owners found inline, JSON parsed only where it may hold media.)
    found: list[tuple[str, dict[str, Any]]] = []
    rows: list[tuple[Path_, str]] = []
    typed: list[int] = []       # items whose path ends in "_type": the only root candidates
    add = rows.append
    for it in items:
        nk = it.nested_key[:]   # a list in one call (see item_paths)
        if nk:
            if len(nk) >= 2 and nk[-1] == "_type":
                typed.append(len(rows))
            add((tuple(nk), it.value_json))
        else:
            add(((it.key,), it.value_json))
    roots: set[Path_] = set()
    for i in typed:
        path, raw = rows[i]
        try:
            t = loads(raw)
        except ValueError:
            continue
        if media.is_media_type(t):
            roots.add(path[:-1])
    deep = bool(roots) and not all(len(r) == 1 for r in roots)
    members: dict[Path_, list[tuple[Path_, str]]] = {}
    nested: set[Path_] = set()  # roots with a field below their top level
    for path, raw in rows:
        r = None
        if roots and len(path) >= 2:
            if path[:1] in roots:
                r = path[:1]
            elif deep and len(path) > 2:
                r = _root_of(path, roots)
        if r is not None:
            rel = path[len(r):]
            if len(rel) != 1:
                nested.add(r)
            m = members.get(r)
            if m is None:
                members[r] = [(rel, raw)]
            else:
                m.append((rel, raw))
        elif (c := raw[:1]) == "{" or c == "[" or (c.isspace() and may_hold_media(raw)):
            try:
                _walk(loads(raw), display_key(path), found)
            except ValueError:
                pass
    for r, mem in members.items():
        if seen is not None:
            # In any order: wandb writes the summary's fields in another order than the row's.
            k = (r, tuple(mem) if r in nested else tuple(sorted(mem)))
            if k in seen:
                continue
            if len(seen) >= 256:
                seen.clear()
            seen.add(k)
        node: dict[str, Any] = {}
        for rel, raw in mem:
            if fields is None or rel[0] in fields:
                if len(rel) == 1:
                    node[rel[0]] = loads(raw)
                else:
                    insert(node, rel, loads(raw))
        found.append((display_key(r), node))
    return found


def _walk(value: Any, key: str, found: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(value, dict):
        if media.media_kind(value) is not None:
            found.append((key, value))
            return
        for k, v in value.items():
            _walk(v, f"{key}.{k}" if key else str(k), found)
    elif isinstance(value, list):
        for v in value:
            _walk(v, key, found)
