"""History and summary items: find the media among them and rewrite only those.

An item is a protobuf ``HistoryItem`` / ``SummaryItem`` (``key`` or ``nested_key``, and
``value_json``). Items that carry no media come back as the very same objects, so their bytes
are unchanged: the property test relies on it. Which items make up a media object:
``media_items.py``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from . import media
from .media import Decide, Resolve, TextTag
from .media_items import (PLAN_FIELDS, Path_, display_key, insert, item_paths, loads, may_hold_media,
                          media_groups, media_in_items)
from .string_fields import item_parts

__all__ = ["PLAN_FIELDS", "media_in_items", "redact_items", "redact_scrub_items"]  # the first two: for runlog


def redact_items(items: Sequence[Any], new_item: Callable[[Path_, str], Any], decide: Decide,
                 resolve: Resolve, text_tag: TextTag,
                 count: Callable[[Any, str, str], None],
                 sensitive: Callable[[str], bool] | None = None) -> list[Any] | None:
    """Return the rewritten item list, or None when nothing needed a change.

    ``new_item(path, value_json)`` builds an item of the caller's type. Plain values under a
    key the training code declared ``sensitive`` are replaced by their keyed tag (wandb's own
    ``_step``/``_runtime``/``_timestamp`` never are); None: no key is."""
    paths = item_paths(items)
    raws = [it.value_json for it in items]
    owner, groups = media_groups(raws, paths)
    # Each flattened media object is decided once, in order of first appearance. A kept one
    # leaves its items where they were; a rewritten one takes its first item's place.
    results: dict[Path_, Any] = {}
    for r, group in groups.items():
        node: dict[str, Any] = {}
        n = len(r)
        for i in group:
            insert(node, paths[i][n:], loads(raws[i]))
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
        if may_hold_media(raw):
            try:
                value = loads(raw)
            except ValueError:
                out.append(it)
                continue
            if media.contains_media(value):
                nv, c = media.transform_value(value, display_key(path), decide, resolve, text_tag, count)
                if c:
                    changed = True
                    out.append(new_item(path, media.dumps(nv)))
                    continue
        if _declared_sensitive(path, raw, sensitive):
            changed = True
            out.append(new_item(path, media.dumps(f"hash:{text_tag('value', raw)}")))
            continue
        out.append(it)
    return out if changed else None


def sensitive_path(path: Path_, sensitive: Callable[[str], bool]) -> bool:
    """Whether an item's (nested) key is one the training code declared sensitive, or lies
    under one: a dict logged under ``patient`` is the nested items ``patient.id``,
    ``patient.age``, each as sensitive as ``patient`` itself. A nested key is asked joined by
    "." (as W&B shows it) and by "/" (as keys are written: ``patient/*``); wandb's own keys
    (``_step``) never are."""
    if path[0].startswith("_"):
        return False
    if len(path) == 1:
        return sensitive(path[0])
    for n in range(1, len(path) + 1):
        head = path[:n]
        if sensitive(".".join(head)) or (n > 1 and sensitive("/".join(head))):
            return True
    return False


def sensitive_inside(path: Path_, value: Any, sensitive: Callable[[str], bool]) -> bool:
    """Whether a declared-sensitive key lies inside ``value``, the item at ``path``: a dict
    logged whole (``run.summary["best"] = {"patient_id": ...}`` with ``best.patient_id``
    declared) is one item whose keys are in its value."""
    if isinstance(value, dict):
        return any(sensitive_path(path + (str(k),), sensitive) or sensitive_inside(path + (str(k),), v, sensitive)
                   for k, v in value.items())
    if isinstance(value, list):
        return any(sensitive_inside(path, v, sensitive) for v in value)
    return False


def _declared_sensitive(path: Path_, raw: str, sensitive: Callable[[str], bool] | None) -> bool:
    if sensitive is None:
        return False
    if sensitive_path(path, sensitive):
        return True
    if raw[:1] != "{" or path[0].startswith("_"):
        return False
    try:
        return sensitive_inside(path, loads(raw), sensitive)
    except ValueError:
        return False


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
            # (``nk[:]``: the repeated field as a list in one call, a third of what
            # iterating the container costs; rows are mostly nested keys.)
            key, nk, raw = it.key, it.nested_key[:], it.value_json
            if not nk:
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
    history row and in the summary after it. A repeat (same key, same fields, same values, in
    any order for a flat object) is decided and counted again, and takes the rewritten object
    from the memo, its fields in the order the rewrite gives this repeat's; its files were
    resolved the first time (``resolve`` would only look them up)."""
    snap = _plain(items)
    if snap is None:
        return False, None, None
    paths, raws, nested, typed = snap
    owner, groups = media_groups(raws, paths, typed)
    results: dict[Path_, Any] = {}
    ready: dict[Path_, dict[str, str]] = {}   # repeats: each field's outgoing JSON, as it left before
    fresh: dict[Path_, Any] = {}              # objects rewritten here: their memo key
    same: dict[Path_, str] = {}               # their fields the rewrite left as they were: the JSON
    for r, group in groups.items():
        n = len(r)
        key = display_key(r)
        mk = flat = None
        if memo is not None:
            fields = [(paths[i][n:], raws[i]) for i in group]
            # wandb writes the summary's fields in another order than the row's (a Go map):
            # a flat object is the same object in any order, and is found again sorted.
            flat = all(len(rel) == 1 for rel, _ in fields)
            mk = (r, tuple(sorted(fields)) if flat else tuple(fields))
            hit = memo.get(mk)
            if hit is not None:
                kind, new, scrubbed = hit
                count(decide(key, kind), kind, key)
                results[r] = media.in_field_order(new, [rel[0] for rel, _ in fields]) if flat else new
                if scrubbed is not None:
                    ready[r] = scrubbed
                continue
        node: dict[str, Any] = {}
        for i in group:
            insert(node, paths[i][n:], loads(raws[i]))
        new = media.transform_node(node, key, decide, resolve, text_tag, count)
        results[r] = None if new is node else new
        if isinstance(new, dict) and new is not node:
            for i in group:
                rel = paths[i][n:]
                if len(rel) == 1 and rel[0] in new and new[rel[0]] is node[rel[0]]:
                    same[paths[i]] = raws[i]
        if mk is not None:
            if len(memo) >= 256:
                memo.clear()
            memo[mk] = (media.media_kind(node) or "any", results[r], None)
            if isinstance(results[r], dict):
                fresh[r] = mk
    changed = False
    # (path, nested?, original value_json or None, new value when rewritten, the rewritten
    # object whose field it is or None)
    entries: list[tuple[Path_, bool, str | None, Any, Path_ | None]] = []
    emitted: set[Path_] = set()
    for path, raw, nest, r in zip(paths, raws, nested, owner):
        if r is not None:
            new = results[r]
            if new is None:
                entries.append((path, nest, raw, None, None))
            elif r not in emitted:
                emitted.add(r)
                changed = True
                if isinstance(new, dict):
                    entries.extend((r + (k,), True, None, v, r) for k, v in new.items())
                else:
                    entries.append((r, len(r) > 1, None, new, None))
            continue
        if may_hold_media(raw):
            try:
                value = loads(raw)
            except ValueError:
                entries.append((path, nest, raw, None, None))
                continue
            if media.contains_media(value):
                nv, c = media.transform_value(value, display_key(path), decide, resolve, text_tag, count)
                if c:
                    changed = True
                    entries.append((path, len(path) > 1, None, nv, None))
                    continue
        if _declared_sensitive(path, raw, sensitive):
            changed = True
            entries.append((path, len(path) > 1, None, f"hash:{text_tag('value', raw)}", None))
            continue
        entries.append((path, nest, raw, None, None))
    done, scrub_changed = _scrub(entries, out, place, ready, fresh, memo, same)
    if not (changed or scrub_changed):
        return True, None, None
    return True, done, _in_place(paths, nested, raws, done)


def _scrub(entries: Sequence[tuple[Path_, bool, str | None, Any, Path_ | None]], out: Any, place: str,
           ready: dict[Path_, dict[str, str]], fresh: dict[Path_, Any], memo: dict[Any, Any] | None,
           same: dict[Path_, str]) -> tuple[list[tuple[Path_, bool, str]], bool]:
    """The outgoing scrub, as ``Outgoing._item`` does it: every key name, and the JSON value
    under the key its walk would see (a nested key's last name after scrubbing; a plain key as
    it was). Returns the items and whether any changed.

    A rewritten object whose fields all came out of the scrub as they went in (nothing
    scrubbed, so nothing counted) leaves the same way again whatever the place, unless a place
    is kept as is: its fields' JSON is remembered in the memo, and a repeat (``ready``) takes
    it instead of walking and encoding each value again. A field the rewrite left as it was
    (``same``: its original JSON) is scrubbed and encoded by ``Outgoing.reencoded``, which
    remembers it ("64", "png" come in every row)."""
    done: list[tuple[Path_, bool, str]] = []
    changed = False
    path_names = out.path_names
    scrubbed: dict[Path_, dict[str, str]] = {}
    unclean: set[Path_] = set()
    for path, nest, raw, value, obj in entries:
        names = path_names(path)
        if names != path:
            changed = True
        key = names[-1] if nest else path[0]
        if raw is not None:
            if not out.json_as_is(raw, key):
                new_raw = out.json_text(raw, place, key)
                if new_raw != raw:
                    changed = True
                    raw = new_raw
        elif obj is not None and obj in ready:
            raw = ready[obj][path[-1]]
        else:
            src = same.get(path)
            if src is not None:
                raw, clean = out.reencoded(src, value, place, key)
            else:
                nv = out.value(value, place, key)
                raw, clean = media.dumps(nv), nv == value
            if obj in fresh:
                if clean:
                    scrubbed.setdefault(obj, {})[path[-1]] = raw
                else:
                    unclean.add(obj)
        done.append((names, nest, raw))
    if memo is not None and place not in out.keep:
        for obj, mk in fresh.items():
            if obj not in unclean and obj in scrubbed:
                kind, new, _ = memo.get(mk) or (None, None, None)
                if kind is not None:
                    memo[mk] = (kind, new, scrubbed[obj])
    return done, changed


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

