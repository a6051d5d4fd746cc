"""The placeholder naming, source-file and planning shortcuts give exactly what the plain forms give.

``MediaFiles.naming`` takes a wandb media file name (``<dir>/<key>_<step>_<hash>.<ext>``) from
``Outgoing.media_path``, which scrubs the directories (once per directory) and the key, as
``Outgoing.path`` does, instead of matching the scrubbed name again: the same prefix and
extension, the same names remembered as produced, the same counts, for any name; and a secret
in the directories or the key never reaches the prefix. ``SourceFiles.file`` remembers each
directory's checked path and listing together: the same answer as ``os.path.join`` and a
stat. ``media_items.media_in_items`` (the plan's fold) finds the same media objects as the
plain grouping (``media_groups``) does.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hypothesis import given, settings, strategies as st
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.redact import media_items
from tfwb_agent.redact.policy import DEFAULT_POLICY, parse_policy
from tfwb_agent.redact.redaction import Redaction
from tfwb_agent.redact.source_files import SourceFiles

_RENAME_RX = re.compile(r"^(?P<dir>(?:.*/)?)(?P<stem>[^/]+)_(?P<hash>[0-9a-f]{20})(?P<ext>\.[^/]+)$")
_NEW_EXT = {"image": ".png", "audio": ".wav", "video": ".gif", "html": ".html", "table": ".table.json"}
SITE = parse_policy("site", {"patterns": [r"\bP\d{4}\b", r"mask", r"s3cr3t"]})
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
KINDS = ["image", "audio", "video", "html", "object3d", "any", "table"]


def _plain_naming(r: Redaction, path: str, kind: str) -> tuple[str, str]:
    """The naming rule written plainly: the scrubbed path, matched again."""
    scrubbed = r.out.path(path)
    m = _RENAME_RX.match(scrubbed)
    ext = _NEW_EXT.get(kind, m.group("ext") if m else Path(scrubbed).suffix)
    if m:
        return f"{m.group('dir')}{m.group('stem')}_", ext
    return f"{Path(scrubbed).parent.as_posix()}/redacted_".lstrip("./"), ext


def _pair(policy) -> tuple[Redaction, Redaction]:
    return tuple(Redaction(Path("/nonexistent"), None, policy, b"k" * 32, Path) for _ in range(2))  # type: ignore


def _same(names: list[tuple[str, str]], policy=DEFAULT_POLICY) -> tuple[Redaction, list]:
    fast, plain = _pair(policy)
    got = [fast.media.naming(p, k) for p, k in names]
    want = [_plain_naming(plain, p, k) for p, k in names]
    assert got == want
    assert fast.out.produced == plain.out.produced
    assert fast.report.to_dict() == plain.report.to_dict()
    return fast, got


HASH = "0123456789abcdef0123"
FIXED = [f"media/images/samples/ct_{i}_{HASH}.png" for i in range(3)] + [
    f"media/images/samples/mask_1_2_{HASH}.png", f"media/images/ct_4_{HASH}.tar.gz", f"ct_4_{HASH}.png",
    f"/media/ct_4_{HASH}.png", f"media//ct_4_{HASH}.png", f"media/images/ct_{HASH}.png",
    f"media/images/ct_4_{HASH}.png-x", f"media/images/ct_4_{HASH}", f"media/images/a_1_{HASH}_2_{HASH}.png",
    f"media/P1234/s3cr3t_7_{HASH}.png", f"media/images/{GHP}/ct_3_{HASH}.png", f"media/images/{GHP}_3_{HASH}.png",
    f"media/table/x_3_{HASH}.table.json", "media/images/plain.png", "", "/", "a/b/", f"_1_{HASH}.png",
    f"media/images/12345678901234567890_1_{HASH}.png", f"media/images/x_1_{HASH.upper()}.png",
]


def test_naming_matches_the_plain_rule_on_edge_cases() -> None:
    for policy in (DEFAULT_POLICY, SITE):
        _same([(p, k) for p in FIXED for k in ("image", "any", "table")], policy)


def test_a_produced_name_stays_as_it_is() -> None:
    fast, plain = _pair(DEFAULT_POLICY)
    for r in (fast, plain):
        r.out.produced.add(f"media/images/mask_1_{HASH}.png")
    assert fast.media.naming(f"media/images/mask_1_{HASH}.png", "any") == \
        _plain_naming(plain, f"media/images/mask_1_{HASH}.png", "any")


def test_a_secret_in_the_directories_or_the_key_never_reaches_the_prefix() -> None:
    fast, got = _same([(f"media/images/{GHP}/ct_3_{HASH}.png", "image"),
                       (f"media/images/samples/{GHP}_3_{HASH}.png", "image"),
                       (f"media/P1234/s3cr3t_7_{HASH}.png", "image"),
                       (f"media/images/mask/mask_2_{HASH}.png", "image")], SITE)
    for prefix, _ in got:
        for secret in (GHP, "P1234", "s3cr3t", "mask"):
            assert secret not in prefix, (secret, prefix)
    # Each directory and key is scrubbed once however many files share it, and counted once.
    again, _ = _same([(f"media/images/mask/mask_{i}_{HASH}.png", "image") for i in range(50)], SITE)
    assert again.report.strings["file_names"] == 1


def test_a_secret_in_the_extension_never_reaches_the_name() -> None:
    """wandb keeps the user's file's extension for some kinds (a 3-D object, a molecule): it is
    a name like the key, scrubbed; a planted W&B key or a site pattern there does not leave."""
    wandb_key = "0123456789abcdef" * 2 + "01234567"  # a bare 40-hex W&B API key
    cases = [(f"media/object3D/pts_1_{HASH}.{wandb_key}", "object3d"), (f"media/molecule/m_2_{HASH}.P1234", "any"),
             (f"media/object3D/pts_3_{HASH}.obj.P1234", "any")]
    for policy, secrets in ((DEFAULT_POLICY, [wandb_key]), (SITE, [wandb_key, "P1234"])):
        fast, got = _same(cases, policy)
        names = [prefix + ext for prefix, ext in got] + sorted(fast.out.produced)
        for name in names:
            for secret in secrets:
                assert secret not in name, (secret, name)
        assert fast.report.strings["file_names"] >= len(secrets)


_PART = st.text(alphabet=st.sampled_from("ab_.-/19fP0s3crtmk"), max_size=10)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(["media", "images", "mask", "P1234", "", "a.b", GHP]), max_size=3),
                          _PART, st.lists(st.integers(0, 99), max_size=2),
                          st.sampled_from([HASH, "fedcba9876543210fedc", "0123", ""]),
                          st.sampled_from([".png", ".tar.gz", ".png-x", "", ".", ".p_g"]),
                          st.sampled_from(KINDS)), max_size=8))
def test_naming_matches_the_plain_rule(names) -> None:
    cases = []
    for dirs, key, steps, h, ext, kind in names:
        last = key + "".join(f"_{s}" for s in steps) + (f"_{h}" if h else "") + ext
        cases.append(("/".join(dirs + [last]), kind))
    for policy in (DEFAULT_POLICY, SITE):
        _same(cases + cases, policy)


def test_source_file_is_join_and_a_regular_file(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "media" / "images").mkdir(parents=True)
    (files / "media" / "images" / "a.png").write_bytes(b"x")
    (files / "top.txt").write_text("t")
    (files / "media" / "images" / "sub").mkdir()
    os.symlink(files / "top.txt", files / "media" / "images" / "link.png")
    os.symlink(files / "media", files / "alias")
    src = SourceFiles(str(tmp_path))
    for _ in range(2):     # asked again: the remembered directory gives the same answers
        assert src.file("media/images/a.png") == os.path.join(str(files), "media/images/a.png")
        assert src.file("top.txt") == os.path.join(str(files), "top.txt")
        for bad in ("media/images/link.png", "media/images/sub", "media/images/none.png", "alias/images/a.png",
                    "media/../top.txt", "/top.txt", "media/images/", "media\\images\\a.png"):
            assert src.file(bad) is None, bad
    (files / "media" / "images" / "late.png").write_bytes(b"y")   # made after the listing: asked alone
    assert src.file("media/images/late.png") == os.path.join(str(files), "media/images/late.png")


def _plain_media_in_items(items, fields, seen):
    """``media_in_items`` written with the plain grouping (``media_groups``)."""
    paths = media_items.item_paths(items)
    raws = [it.value_json for it in items]
    owner, groups = media_items.media_groups(raws, paths)
    found = []
    for path, raw, r in zip(paths, raws, owner):
        if r is None and media_items.may_hold_media(raw):
            try:
                media_items._walk(media_items.loads(raw), media_items.display_key(path), found)
            except ValueError:
                pass
    for r, idx in groups.items():
        mem = [(paths[i][len(r):], raws[i]) for i in idx]
        if seen is not None:
            k = (r, tuple(sorted(mem)) if all(len(rel) == 1 for rel, _ in mem) else tuple(mem))
            if k in seen:
                continue
            if len(seen) >= 256:
                seen.clear()
            seen.add(k)
        node: dict = {}
        for rel, raw in mem:
            if fields is None or rel[0] in fields:
                media_items.insert(node, rel, media_items.loads(raw))
        found.append((media_items.display_key(r), node))
    return found


_KEY = st.sampled_from(["a", "b", "a.b", "_type", "path", "width", "x"])
_RAW = st.sampled_from(['"image-file"', '"images/separated"', '"nothing"', "64", '"p.png"', "[1,2]",
                        ' {"_type":"image-file","path":"q.png"}', '{"_type":"table-file"}', "{", "\u2003[1]",
                        '["m.png"]', "not json", ""])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.tuples(st.one_of(st.tuples(_KEY), st.lists(_KEY, min_size=1, max_size=4)), _RAW),
                         max_size=10), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_media_in_items_is_the_plain_grouping(rows, with_fields: bool, with_seen: bool) -> None:
    fields = media_items.PLAN_FIELDS if with_fields else None
    seen_fast, seen_plain = (set(), set()) if with_seen else (None, None)
    for row in rows + rows:
        items = [pb.HistoryItem(key=k[0], value_json=raw) if isinstance(k, tuple) else
                 pb.HistoryItem(nested_key=k, value_json=raw) for k, raw in row]
        got = _outcome(media_items.media_in_items, items, fields, seen_fast)
        want = _outcome(_plain_media_in_items, items, fields, seen_plain)
        assert got == want
        assert seen_fast == seen_plain


def _outcome(f, *args):
    # (A field of a flattened object that is not JSON raises, in both: the fold stops there.)
    try:
        return json.dumps(f(*args))
    except (ValueError, AttributeError, TypeError) as exc:
        return type(exc).__name__
