"""History and summary items: find the media among them and rewrite only those.

An item is a protobuf ``HistoryItem`` / ``SummaryItem`` (``key`` or ``nested_key``, and
``value_json``). Items that carry no media come back as the very same objects, so their bytes
are unchanged: the property test relies on it.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from . import media
from .media import Decide, Resolve, TextTag
from .outgoing import item_parts

Path_ = tuple[str, ...]
# json.loads without its wrapper (the values are str: the same result, the same ValueError).
_loads = json.JSONDecoder().decode


def item_path(item: Any) -> Path_:
    return tuple(item.nested_key) if len(item.nested_key) else (item.key,)


def display_key(path: Path_) -> str:
    return ".".join(path)


def _may_hold_media(raw: str) -> bool:
    # Cheap test before parsing: media objects are JSON objects (or lists of them).
    s = raw.lstrip()
    return s[:1] in ("{", "[")


def _paths(items: Sequence[Any]) -> list[Path_]:
    return [tuple(nk) if len(nk := it.nested_key) else (it.key,) for it in items]


def _media_roots(raws: Sequence[str], paths: Sequence[Path_], typed: Sequence[int] | None = None) -> set[Path_]:
    """Roots of media objects that wandb 0.31 flattened into one item per field. ``typed``: the
    indices of the items whose path ends in ``_type`` (the only candidates), when known."""
    roots: set[Path_] = set()
    for i in (typed if typed is not None else range(len(paths))):
        path = paths[i]
        if len(path) >= 2 and path[-1] == "_type":
            try:
                t = _loads(raws[i])
            except ValueError:
                continue
            if isinstance(t, str) and t in media.KINDS:
                roots.add(path[:-1])
    return roots


def _root_of(path: Path_, roots: set[Path_]) -> Path_ | None:
    for n in range(1, len(path)):
        if path[:n] in roots:
            return path[:n]
    return None


def _media_groups(raws: Sequence[str], paths: Sequence[Path_], typed: Sequence[int] | None = None
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


def redact_items(items: Sequence[Any], new_item: Callable[[Path_, str], Any], decide: Decide,
                 resolve: Resolve, text_tag: TextTag,
                 count: Callable[[Any, str, str], None],
                 sensitive: Callable[[str], bool] | None = None) -> list[Any] | None:
    """Return the rewritten item list, or None when nothing needed a change.

    ``new_item(path, value_json)`` builds an item of the caller's type. Plain values under a
    key the training code declared ``sensitive`` are replaced by their keyed tag (wandb's own
    ``_step``/``_runtime``/``_timestamp`` never are); None: no key is."""
    paths = _paths(items)
    raws = [it.value_json for it in items]
    owner, groups = _media_groups(raws, paths)
    # Each flattened media object is decided once, in order of first appearance. A kept one
    # leaves its items where they were; a rewritten one takes its first item's place.
    results: dict[Path_, Any] = {}
    for r, group in groups.items():
        node: dict[str, Any] = {}
        n = len(r)
        for i in group:
            _insert(node, paths[i][n:], _loads(raws[i]))
        new = media.transform_node(node, display_key(r), decide, resolve, text_tag, count)
        results[r] = None if new is node else new
    out: list[Any] = []
    changed = any(v is not None for v in results.values())
    emitted: set[Path_] = set()
    for it, path, raw, r in zip(items, paths, raws, owner):
        if r is not None:
            new = results[r]
            if new is None:
                out.append(it)
            elif r not in emitted:
                emitted.add(r)
                if isinstance(new, dict):
                    out.extend(new_item(r + (k,), media.dumps(v)) for k, v in new.items())
                else:
                    out.append(new_item(r, media.dumps(new)))
            continue
        if _may_hold_media(raw):
            try:
                value = _loads(raw)
            except ValueError:
                out.append(it)
                continue
            if media.contains_media(value):
                nv, c = media.transform_value(value, display_key(path), decide, resolve, text_tag, count)
                if c:
                    changed = True
                    out.append(new_item(path, media.dumps(nv)))
                    continue
        if sensitive is not None:
            key = display_key(path)
            if not key.startswith("_") and sensitive(key):
                changed = True
                out.append(new_item(path, media.dumps(f"hash:{text_tag('value', raw)}")))
                continue
        out.append(it)
    return out if changed else None


_PLAIN_FIELDS = frozenset({"key", "nested_key", "value_json"})
_ONEOF_CHECKS: dict[Any, tuple[str, ...] | None] = {}


def _oneof_check(d: Any) -> tuple[str, ...] | None:
    """The oneofs to ask of an item type so that "none of them set" means "nothing but a key,
    a nested key and a value_json": every other field of the type lies in one of them (a
    HistoryItem's typed ``value``; a SummaryItem has none). None if some other field lies
    outside a oneof (a newer wandb's): then each item's fields are listed."""
    if d not in _ONEOF_CHECKS:
        others = [f for f in d.fields if f.name not in _PLAIN_FIELDS]
        ok = all(f.containing_oneof is not None for f in others) and \
            not any(f.containing_oneof is not None for f in d.fields if f.name in _PLAIN_FIELDS)
        _ONEOF_CHECKS[d] = tuple(sorted({f.containing_oneof.name for f in others})) if ok else None
    return _ONEOF_CHECKS[d]


def _plain(items: Sequence[Any]) -> tuple[list[Path_], list[str], list[bool], list[int]] | None:
    """(paths, value_json, nested?, indices of the items whose path ends in ``_type``) of
    items that hold nothing but a key or a nested key and a JSON value; None if any item holds
    anything else (then the generic path does it). One loop: this runs for every row."""
    paths: list[Path_] = []
    raws: list[str] = []
    nested: list[bool] = []
    typed: list[int] = []
    oneofs = _oneof_check(items[0].DESCRIPTOR) if len(items) else None
    for it in items:
        if oneofs is not None:
            # (Fields are either these three or in a oneof: one call per oneof instead of
            # listing the fields; an unknown field was discarded before.)
            for o in oneofs:
                if it.WhichOneof(o) is not None:
                    return None
            key, nk, raw = it.key, it.nested_key, it.value_json
            if not len(nk):
                nk = None
        else:
            parts = item_parts(it.ListFields())
            if parts is None:
                return None
            key, nk, raw = parts
        if nk is not None:
            if key:
                return None
            path = tuple(nk)
            if len(path) >= 2 and path[-1] == "_type":
                typed.append(len(paths))
            paths.append(path)
            nested.append(True)
        else:
            paths.append((key,))
            nested.append(False)
        raws.append(raw)
    return paths, raws, nested, typed


def redact_scrub_items(items: Sequence[Any], decide: Decide, resolve: Resolve, text_tag: TextTag, count: Callable[[Any, str, str], None],
                       sensitive: Callable[[str], bool] | None, out: Any, place: str,
                       memo: dict[Any, Any] | None = None) -> tuple[bool, list[tuple[Path_, bool, str]] | None]:
    """``redact_items`` and the outgoing scrub of the items that result, in one pass over
    plain data: what ``redact_items`` followed by ``Outgoing.message`` on each item gives,
    without building protobuf items to parse them again.

    Returns (handled, items, updates): handled False when an item is not plain (the caller
    then takes the generic path); items None when nothing changed, else the items that replace
    them as (path, nested?, value_json): a nested key when ``nested``, else a key; updates
    (``_in_place``): the same change as (position, new value_json), when it can be made so.

    ``memo`` remembers the last media objects rewritten: wandb writes each one twice, in the
    history row and in the summary after it. A repeat (same key, same fields, same values) is
    decided and counted again, and takes the rewritten object from the memo; its files were
    resolved the first time (``resolve`` would only look them up)."""
    snap = _plain(items)
    if snap is None:
        return False, None, None
    paths, raws, nested, typed = snap
    owner, groups = _media_groups(raws, paths, typed)
    results: dict[Path_, Any] = {}
    for r, group in groups.items():
        n = len(r)
        key = display_key(r)
        mk = (r, tuple((paths[i][n:], raws[i]) for i in group)) if memo is not None else None
        hit = memo.get(mk) if mk is not None else None
        if hit is not None:
            kind, results[r] = hit
            count(decide(key, kind), kind, key)
            continue
        node: dict[str, Any] = {}
        for i in group:
            _insert(node, paths[i][n:], _loads(raws[i]))
        new = media.transform_node(node, key, decide, resolve, text_tag, count)
        results[r] = None if new is node else new
        if mk is not None:
            if len(memo) >= 256:
                memo.clear()
            memo[mk] = (media.media_kind(node) or "any", results[r])
    changed = False
    # (path, nested?, original value_json or None, new value when rewritten)
    entries: list[tuple[Path_, bool, str | None, Any]] = []
    emitted: set[Path_] = set()
    for path, raw, nest, r in zip(paths, raws, nested, owner):
        if r is not None:
            new = results[r]
            if new is None:
                entries.append((path, nest, raw, None))
            elif r not in emitted:
                emitted.add(r)
                changed = True
                if isinstance(new, dict):
                    entries.extend((r + (k,), True, None, v) for k, v in new.items())
                else:
                    entries.append((r, len(r) > 1, None, new))
            continue
        if _may_hold_media(raw):
            try:
                value = _loads(raw)
            except ValueError:
                entries.append((path, nest, raw, None))
                continue
            if media.contains_media(value):
                nv, c = media.transform_value(value, display_key(path), decide, resolve, text_tag, count)
                if c:
                    changed = True
                    entries.append((path, len(path) > 1, None, nv))
                    continue
        if sensitive is not None:
            key = display_key(path)
            if not key.startswith("_") and sensitive(key):
                changed = True
                entries.append((path, len(path) > 1, None, f"hash:{text_tag('value', raw)}"))
                continue
        entries.append((path, nest, raw, None))
    # The outgoing scrub, as ``Outgoing._item`` does it: every key name, and the JSON value
    # under the key its walk would see (a nested key's last name after scrubbing; a plain
    # key as it was).
    done: list[tuple[Path_, bool, str]] = []
    path_names = out.path_names
    for path, nest, raw, value in entries:
        names = path_names(path)
        if names != path:
            changed = True
        key = names[-1] if nest else path[0]
        if raw is not None:
            if '"' in raw:
                new_raw = out.json_text(raw, place, key)
                if new_raw != raw:
                    changed = True
                    raw = new_raw
        else:
            raw = media.dumps(out.value(value, place, key))
        done.append((names, nest, raw))
    if not changed:
        return True, None, None
    return True, done, _in_place(paths, nested, raws, done)


def _in_place(paths: Sequence[Path_], nested: Sequence[bool], raws: Sequence[str],
              done: Sequence[tuple[Path_, bool, str]]) -> list[tuple[int, str]] | None:
    """When the new items line up one for one with the old ones (same count, the same key in
    each place: a rewritten media object keeps its fields), the values that changed, by
    position; else None. Setting those in place gives the same items as rebuilding the list,
    without building every item anew."""
    if len(done) != len(paths):
        return None
    updates: list[tuple[int, str]] = []
    for i, (names, nest, raw) in enumerate(done):
        if names != paths[i] or nest != nested[i]:
            return None
        if raw != raws[i]:
            updates.append((i, raw))
    return updates


def _insert(node: dict[str, Any], rel: Path_, value: Any) -> None:
    for part in rel[:-1]:
        node = node.setdefault(part, {})
    node[rel[-1]] = value


# The fields of a media object that planning reads: its type, its files, its size.
PLAN_FIELDS = frozenset({"_type", "path", "filenames", "width", "height"})


def media_in_items(items: Sequence[Any], fields: frozenset[str] | None = None,
                   seen: set[Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(key, media object) for every media object in the items: the planning pass uses it.
    ``fields``: of a flattened object (wandb 0.31), only these top-level fields are read.
    ``seen``: flattened objects met before (same key, same fields, same values: wandb writes
    each one in the history row and again in the summary) are not returned again."""
    found: list[tuple[str, dict[str, Any]]] = []
    paths: list[Path_] = []
    raws: list[str] = []
    typed: list[int] = []       # items whose path ends in "_type": the only root candidates
    for it in items:            # one loop: this runs for every row of every log read
        nk = it.nested_key
        if len(nk):
            path = tuple(nk)
            if len(path) >= 2 and path[-1] == "_type":
                typed.append(len(paths))
        else:
            path = (it.key,)
        paths.append(path)
        raws.append(it.value_json)
    roots = _media_roots(raws, paths, typed) if typed else None
    owner = _owners(paths, roots) if roots else [None] * len(paths)
    members: dict[Path_, list[tuple[Path_, str]]] = {}
    for raw, path, r in zip(raws, paths, owner):
        if r is not None:
            members.setdefault(r, []).append((path[len(r):], raw))
        elif _may_hold_media(raw):
            try:
                _walk(_loads(raw), display_key(path), found)
            except ValueError:
                pass
    for r, mem in members.items():
        if seen is not None:
            k = (r, tuple(mem))
            if k in seen:
                continue
            if len(seen) >= 256:
                seen.clear()
            seen.add(k)
        node: dict[str, Any] = {}
        for rel, raw in mem:
            if fields is None or rel[0] in fields:
                _insert(node, rel, _loads(raw))
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
