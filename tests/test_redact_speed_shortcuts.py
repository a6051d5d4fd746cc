"""The redactor's shortcuts give exactly what the plain forms give.

``media_items.loads`` reads a value_json with the JSON decoder's C scanner alone when the value
spans the whole string: the same value (and type) as the decoder's ``decode`` (``json.loads``
without its wrapper, whose only difference is a BOM check), and the same ValueError for anything
it cannot read. ``placeholders.text_tagger`` copies a keyed hash set up once: the same
tag as HMAC-SHA-256 over ``kind NUL value`` (the documented rule, which ``text_tag`` and every
placeholder name depend on), for any text, lone surrogates included, and a different tag under
another secret or another kind.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math

from hypothesis import given, settings, strategies as st

from tfwb_agent.redact import placeholders
from tfwb_agent.redact.media_items import loads

DECODE = json.JSONDecoder().decode

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
EDGES = ["", " ", "1 ", " 1", "1\n", "[1,", "{", '"a', "NaN", "-Infinity", "1e400", "-0", "0.1e-3",
         '"\\ud800"', '"\x00"', "tru", "true false", "[] []", "\ufeff1", '"é"', "01", "+1", ".5",
         "1.", '{"a":1,}', "[1 2]", "nul", '{"a" 1}', "\t[1]\t"]


def _decoded(f, raw: str):
    try:
        value = f(raw)
    except ValueError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", type(value).__name__, repr(value) if not (isinstance(value, float) and math.isnan(value)) else "nan")


def test_loads_matches_decode_on_edge_cases() -> None:
    for raw in EDGES:
        assert _decoded(loads, raw) == _decoded(DECODE, raw), raw


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from(["", " ", "\n", "x", "]", " 1"]), st.booleans())
def test_loads_matches_decode(value, tail: str, compact: bool) -> None:
    raw = json.dumps(value, separators=(",", ":") if compact else None)
    for s in (raw, raw + tail, tail + raw):
        assert _decoded(loads, s) == _decoded(DECODE, s), s


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(["caption", "value", "cell", "secret", "path"]),
       st.text(alphabet=st.characters(blacklist_categories=())))
def test_text_tagger_is_the_keyed_hash(secret: bytes, kind: str, value: str) -> None:
    want = hmac.new(secret, kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()[:16]
    tagger = placeholders.text_tagger(secret)
    assert tagger(kind, value) == want
    assert tagger(kind, value) == want          # the set-up hash is copied, not consumed
    assert placeholders.text_tag(secret, kind, value) == want
    assert tagger(kind + "x", value) != want
    assert placeholders.text_tagger(secret + b"\x01")(kind, value) != want
