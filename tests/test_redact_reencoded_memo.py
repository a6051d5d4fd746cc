"""The fields of a rewritten media object that the rewrite left as they were ("64", "png" in
every row) are scrubbed and encoded once per distinct JSON (``Outgoing.reencoded``). The memo
must never serve an answer the current rules would not give: not after the rules change (the
run's identity is added once its metadata is read), and never for a value the scrub changed
(each such value is scrubbed, and counted, every time). And the run's own words, which the
scrubber now searches apart from the site's combined rules, are still found."""
from __future__ import annotations

import hashlib
import json

from redact_helpers import default_outgoing, site_tag
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.redact.items import redact_scrub_items
from tfwb_agent.redact.media import FileOutcome
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.report import RedactionReport
from tfwb_agent.redact.secrets import Scrubber, compile_patterns

TOKEN = "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"


class Redactor:
    def __init__(self) -> None:
        self.report = RedactionReport()
        self.out = default_outgoing(self.report)

    def resolve(self, path, kind, d, key):
        h = hashlib.sha256(path.encode()).hexdigest()
        return FileOutcome(f"media/images/ct_{h[:20]}.png", h, 99, h, "png")

    def row(self, step: int, fields: dict[str, str], memo: dict) -> dict[str, str]:
        """One history row holding an image flattened as wandb 0.31 writes it; what leaves,
        by field."""
        items = [pb.HistoryItem(nested_key=["samples/ct", k], value_json=v) for k, v in {
            "_type": '"image-file"', "path": f'"media/images/ct_{step}_{step:020x}.png"',
            "format": '"png"', "width": "64", **fields}.items()]
        decide = lambda key, kind: DEFAULT_POLICY.decide(key, kind, ())  # noqa: E731
        handled, new, _ = redact_scrub_items(items, decide, self.resolve, site_tag,
                                             lambda d, kind, key: self.report.count_media(d.rule, kind, d.action, key),
                                             None, self.out, "history", memo)
        assert handled and new is not None
        return {path[-1]: raw for path, _, raw in new}


def test_a_value_passed_under_the_old_rules_is_scrubbed_under_the_new_ones():
    r = Redactor()
    memo: dict = {}
    first = r.row(1, {"site": '"gpu-node-17"'}, memo)
    assert json.loads(first["site"]) == "gpu-node-17"     # no rule knew the host yet
    # The run's identity is read from its metadata: the host is a word to scrub from now on
    # (what ``Redaction.add_identity`` does).
    r.out.scrubber = r.out.scrubber.with_words("identity", {"gpu-node-17"})
    second = r.row(2, {"site": '"gpu-node-17"'}, memo)
    assert "gpu-node-17" not in second["site"], second
    assert second["site"].startswith('"[redacted:identity:')
    assert r.report.strings["history"] == 1
    # An unchanged field under unchanged rules still leaves as it was, from the memo or not.
    assert second["width"] == first["width"] == "64" and second["format"] == '"png"'


def test_a_value_the_scrub_changes_is_scrubbed_and_counted_every_time():
    r = Redactor()
    memo: dict = {}
    for step in range(1, 4):
        out = r.row(step, {"note": json.dumps(f"token {TOKEN}")}, memo)
        assert TOKEN not in out["note"] and "[redacted:huggingface_token:" in out["note"], out
        assert r.report.strings["history"] == step        # counted again at each row


def test_the_same_json_under_another_key_is_asked_again():
    # A value is clean under one key and a secret under another (a config-style secret key):
    # the memo is per key, so the second must not be served the first one's answer.
    r = Redactor()
    memo: dict = {}
    a = r.row(1, {"label": '"s3cr3t-value"'}, memo)
    assert json.loads(a["label"]) == "s3cr3t-value"
    b = r.row(2, {"api_key": '"s3cr3t-value"'}, memo)
    assert "s3cr3t-value" not in b["api_key"], b


def test_the_runs_words_are_found_though_searched_apart_from_the_other_rules():
    # ``with_words`` keeps the site's combined pre-check and searches the run's words apart:
    # a string that only the run's words match must still be scrubbed, wherever the word stands,
    # and again after a second set of words is added on top.
    base = Scrubber(compile_patterns(), site_tag, True)
    s = base.with_words("identity", {"gpu-node-17", "alice"})
    for text in ("gpu-node-17", "ran on gpu-node-17 today", "by alice", "alice"):
        new, counts = s.scrub(text)
        assert counts.get("identity") == 1 and "gpu-node-17" not in new and "alice" not in new, (text, new)
        assert base.scrub(text) == (text, {})
    s2 = s.with_words("identity2", {"bob"})
    new, counts = s2.scrub("bob and alice")
    assert counts == {"identity2": 1, "identity": 1} and "bob" not in new and "alice" not in new
    assert s2.scrub_name("alice")[0].startswith("redacted-identity-")
