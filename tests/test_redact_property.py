"""Property: whatever the policy does not touch comes out bit-identical.

Random history records: scalar items (plain and nested keys, odd JSON spacing), media objects
in wandb 0.15's one-item form, in wandb 0.31's flattened form, and lists of media. The policy
keeps media under ``keep/*`` and hashes the rest.
"""
from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings, strategies as st
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.redact.items import redact_items
from tfwb_agent.redact.media import FileOutcome
from tfwb_agent.redact.policy import parse_policy

POLICY = parse_policy("prop", {"rule": [{"key": "keep/*", "media": ["any"], "action": "keep"}]})

names = st.text(alphabet="abcxyz/._-0123456789", min_size=1, max_size=8)
scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                    st.text(max_size=12),
                    st.dictionaries(st.text(min_size=1, max_size=4).filter(lambda k: k != "_type"),
                                    st.integers(), max_size=3),
                    st.lists(st.integers(), max_size=3))
spacing = st.sampled_from([(",", ":"), (", ", ": "), (",", ": ")])


def image(i: int, n: int) -> dict:
    return {"_type": "image-file", "path": f"media/images/k_{i}_{n:020x}.png", "sha256": f"{n:064x}",
            "size": 10 + n, "width": 4, "height": 3, "format": "png"}


@st.composite
def records(draw):
    items, media_keys = [], []
    n_scalar = draw(st.integers(0, 8))
    for i in range(n_scalar):
        value = json.dumps(draw(scalars), separators=draw(spacing))
        if draw(st.booleans()):
            items.append(pb.HistoryItem(key=f"s{i}{draw(names)}", value_json=value))
        else:
            parts = [f"s{i}{draw(names)}"] + draw(st.lists(names, min_size=1, max_size=3))
            items.append(pb.HistoryItem(nested_key=parts, value_json=value))
    for j in range(draw(st.integers(0, 4))):
        key = f"{draw(st.sampled_from(['keep', 'hide']))}/m{j}"
        form = draw(st.sampled_from(["one", "flat", "list"]))
        media_keys.append(key)
        if form == "one":
            items.append(pb.HistoryItem(key=key, value_json=json.dumps(image(j, draw(st.integers(0, 99))),
                                                                       separators=draw(spacing))))
        elif form == "list":
            imgs = [image(j * 10 + k, draw(st.integers(0, 99))) for k in range(draw(st.integers(1, 3)))]
            items.append(pb.HistoryItem(key=key, value_json=json.dumps(imgs)))
        else:
            for field, v in image(j, draw(st.integers(0, 99))).items():
                items.append(pb.HistoryItem(nested_key=[key, field], value_json=json.dumps(v)))
    order = draw(st.permutations(range(len(items))))
    return [items[i] for i in order]


def resolve(path: str, kind: str, decision, key: str) -> FileOutcome:
    sha = hashlib.sha256(("placeholder:" + path).encode()).hexdigest()
    return FileOutcome(f"media/images/redacted_{sha[:20]}.png", sha, 99, sha, "png")


def new_item(path, value_json):
    return pb.HistoryItem(key=path[0], value_json=value_json) if len(path) == 1 else \
        pb.HistoryItem(nested_key=list(path), value_json=value_json)


def _root(item) -> str:
    return item.nested_key[0] if len(item.nested_key) else item.key


@settings(max_examples=150, deadline=None)
@given(records())
def test_untouched_items_are_bit_identical(items) -> None:
    before = [it.SerializeToString() for it in items]
    out = redact_items(items, new_item, lambda k, kind: POLICY.decide(k, kind), resolve,
                       lambda kind, v: "t" * 16, lambda *a: None)
    result = items if out is None else out
    untouched = [b for it, b in zip(items, before) if not _root(it).startswith("hide/")]
    assert [it.SerializeToString() for it in result if not _root(it).startswith("hide/")] == untouched
    # What the policy hashes changed: no original media name or digest survives.
    hidden = [it for it in items if _root(it).startswith("hide/")]
    out_hidden = b"".join(it.SerializeToString() for it in result if _root(it).startswith("hide/"))
    for it in hidden:
        for v in json.loads(it.value_json) if it.value_json.startswith("[") else [json.loads(it.value_json)]:
            if isinstance(v, dict):
                assert v["path"].encode() not in out_hidden and v["sha256"].encode() not in out_hidden
            elif isinstance(v, str) and v.startswith("media/"):
                assert v.encode() not in out_hidden
    assert (out is None) == (not hidden)
    assert {_root(it) for it in result} == {_root(it) for it in items}
