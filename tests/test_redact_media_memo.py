"""A media object met again in the summary, its fields in another order (wandb 0.31 writes the
summary's fields in Go map order), is taken from the redactor's memo: the items that leave must
be exactly those a redaction without the memo writes for that summary, and the memo must have
been used (the files are resolved once)."""
from __future__ import annotations

import random

from redact_helpers import default_outgoing, site_tag
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.redact.items import redact_scrub_items
from tfwb_agent.redact.media import FileOutcome
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.report import RedactionReport

FIELDS = {
    "_type": '"image-file"', "path": '"media/images/ct_3_0205fb893815c1a9be16.png"',
    "sha256": '"0205fb893815c1a9be167c0e080a0c350328396956df15a04ada77dbc3824e77"', "size": "4228",
    "format": '"png"', "width": "64", "height": "64", "caption": '"patient P7191"',
    "boxes": '{"predictions": {"path": "media/metadata/boxes2D/x.json", "_type": "bounding-boxes"}}',
    "grouping": "3",
}


class Redactor:
    """The pieces ``redact_scrub_items`` takes, real where it matters (scrubber, outgoing)."""

    def __init__(self) -> None:
        self.report = RedactionReport()
        self.out = default_outgoing(self.report)
        self.resolved: list[str] = []

    def resolve(self, path, kind, d, key):
        self.resolved.append(path)
        return FileOutcome("media/images/ct_aaaaaaaaaaaaaaaaaaaa.png", "ab" * 32, 99, "cd" * 32, "png")

    def run(self, items, place, memo):
        decide = lambda key, kind: DEFAULT_POLICY.decide(key, kind, ())  # noqa: E731
        handled, new, _ = redact_scrub_items(items, decide, self.resolve, site_tag,
                                             lambda d, kind, key: self.report.count_media(d.rule, kind, d.action, key),
                                             None, self.out, place, memo)
        assert handled
        return new


def _items(cls, order):
    return [cls(nested_key=["samples/ct", k], value_json=FIELDS[k]) for k in order] + \
        [cls(nested_key=["loss"], value_json="0.5")]


def test_a_repeat_in_another_order_leaves_as_a_fresh_rewrite_of_it():
    rng = random.Random(7)
    keys = list(FIELDS)
    for _ in range(40):
        row, summary = keys[:], keys[:]
        rng.shuffle(row)
        rng.shuffle(summary)
        memo: dict = {}
        with_memo = Redactor()
        with_memo.run(_items(pb.HistoryItem, row), "history", memo)
        got = with_memo.run(_items(pb.SummaryItem, summary), "summary", memo)
        fresh = Redactor().run(_items(pb.SummaryItem, summary), "summary", {})
        assert got == fresh, (row, summary)
        # The memo served the repeat: its file was resolved once, in the row.
        assert with_memo.resolved == ["media/images/ct_3_0205fb893815c1a9be16.png"]
        assert [n for n, _, _ in got][:-1] == [("samples/ct", k) for k in _expected_order(summary)]
        assert not any("P7191" in raw or "boxes" in n[-1] for n, _, raw in got)


def _expected_order(order):
    # The rewrite keeps the node's own fields where they came and drops the overlays.
    return [k for k in order if k != "boxes"]
