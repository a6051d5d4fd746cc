"""The scrubber's shortcut for short strings of word characters (``rule_reach``): a caption
``c123`` or a key ``loss`` is not searched with every rule when no rule can match it; the site's
patterns and the run's own words still are. The shortcut must never change what leaves: the
tests compare it with the full search on strings chosen to break it."""
from __future__ import annotations

import random
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redact_helpers import site_tag
from tfwb_agent.redact.rule_reach import plain_limit
from tfwb_agent.redact.secrets import Scrubber, compile_patterns


def _pair() -> tuple[Scrubber, Scrubber]:
    """(with the shortcut, without it), with a site pattern and the run's words."""
    fast = Scrubber(compile_patterns([r"\bP\d{4}\b", r"MRN\d{6}"]), site_tag, True).with_words(
        "host", ["icu-gpu-07", "alice", "ml"])
    full = Scrubber(fast.patterns, site_tag, True, words=fast.words)
    object.__setattr__(full, "_plain_limit", 0)
    return fast, full


def test_the_reading_of_a_rule_knows_what_it_needs():
    def limit(rx: str) -> int:
        return plain_limit([re.compile(rx)])
    assert limit(r"\bpassword:\s*\S+") > 100              # a ":" in every match: never plain
    assert limit(r"(?i)\bKEY=\w+") > 100 and limit(r"a{1,3}:") > 100
    assert limit(r"[A-Za-z]{5}") == 4 and limit(r"(?:a|:)bcd") == 3   # may match word characters
    assert limit(r"x(?=:)y{3}") == 3                        # a lookahead takes nothing
    assert limit(r"[^\s\"']{6}") == 5 and limit(r"[^\W]{4}") == 3
    assert limit(r"(?i)[^a-z]{2}xy") == 3                   # digits and "_" are word characters too
    assert limit(r"\w{0,3}") == 0                           # matches the empty string: no shortcut


def test_the_default_rules_leave_a_shortcut_and_a_shorter_rule_moves_it():
    fast, _ = _pair()
    assert fast._plain_limit >= 8
    # A rule added later that matches a short word (here "pwd" alone) lowers the bound by itself.
    short = Scrubber(fast.patterns, site_tag, True, context=(("word", re.compile(r"(?P<v>\bpwd\b)")),), words=fast.words)
    assert short._plain_limit == 2 and short.scrub("pwd")[1] == {"word": 1}


ADVERSARIAL = ["ghp_", "ghp_abc", "hf_abcdefg", "AKIA1234", "sk_live_ab", "xoxb_1234", "password", "passwd",
               "token", "apikey", "pwd", "secret", "P7126", "dice_P7126", "MRN123456", "alice", "alice1",
               "icu_gpu_07", "ml", "ml_loss", "mlops", "root", "AIzaSyAb12", "glpat_1234", "a" * 10, "0" * 10,
               "dapi123456", "AP12345678", "APA12345678", "ATATT3abcd"]


def test_strings_made_to_break_the_shortcut_leave_as_the_full_search_leaves_them():
    fast, full = _pair()
    rng = random.Random(7)
    samples = list(ADVERSARIAL)
    for _ in range(20000):
        n = rng.randint(1, fast._plain_limit + 2)
        samples.append("".join(rng.choice(string.ascii_letters + string.digits + "_") for _ in range(n)))
    for s in samples:
        assert fast.scrub(s) == full.scrub(s), s
        assert fast.scrub_name(s) == full.scrub_name(s), s
    assert fast.scrub("P7126")[1] == {"site_0": 1} and fast.scrub("alice")[0] != "alice"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=12))
def test_any_short_word_leaves_as_the_full_search_leaves_it(s):
    fast, full = _PAIR
    assert fast.scrub(s) == full.scrub(s)


_PAIR = _pair()
