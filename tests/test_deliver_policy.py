"""Delivery decisions as pure functions: policy windows, holds, ages; back-off; config; cuts."""
from __future__ import annotations

import random
from datetime import datetime

import pytest

from tfwb_agent import config as config_mod
from tfwb_agent.deliver import backoff, policy
from tfwb_agent.deliver.settings import validate_policy, validate_sync, validate_targets
from tfwb_agent.segments import LogFacts, plan_cut


def rules(*tables):
    return validate_policy("t.toml", list(tables)).rules


AT = lambda h, m=0: datetime(2026, 11, 27, h, m)  # noqa: E731


def test_window_across_midnight():
    r = rules({"projects": ["ct-*"], "targets": ["srv"], "windows": ["22:00-06:00"]})
    for h, ok in [(21, False), (22, True), (23, True), (0, True), (5, True), (6, False), (12, False)]:
        d = policy.decide(r, "ct-a", "srv", now=AT(h, 30 if h == 5 else 0), age_days=0, approved=False)
        assert d.may_send is ok, (h, d)
    d = policy.decide(r, "ct-a", "srv", now=AT(12), age_days=0, approved=False)
    assert d.verdict == policy.WAIT and d.next_open == AT(22) and "22:00-06:00" in d.reason


def test_window_same_day_and_next_opening_tomorrow():
    r = rules({"projects": ["*"], "targets": ["srv"], "windows": ["01:00-02:00", "13:15-14:00"]})
    assert policy.decide(r, "p", "srv", now=AT(13, 20), age_days=0, approved=False).may_send
    d = policy.decide(r, "p", "srv", now=AT(14, 0), age_days=0, approved=False)
    assert d.verdict == policy.WAIT and d.next_open == datetime(2026, 11, 28, 1, 0)


def test_no_rule_denies_and_says_why():
    r = rules({"projects": ["ct-*"], "targets": ["srv"]})
    d = policy.decide(r, "secret-proj", "srv", now=AT(3), age_days=0, approved=False)
    assert d.verdict == policy.DENY and "secret-proj" in d.reason and "srv" in d.reason
    d = policy.decide(r, "ct-a", "cloud", now=AT(3), age_days=0, approved=False)
    assert d.verdict == policy.DENY and "cloud" in d.reason


def test_first_matching_rule_decides_hold_and_age():
    r = rules({"projects": ["ct-private*"], "targets": ["srv"], "hold": True},
              {"projects": ["ct-*"], "targets": ["srv"], "max_age_days": 2})
    held = policy.decide(r, "ct-private-1", "srv", now=AT(3), age_days=0, approved=False)
    assert held.verdict == policy.HOLD and "approve" in held.reason
    assert policy.decide(r, "ct-private-1", "srv", now=AT(3), age_days=0, approved=True).may_send
    old = policy.decide(r, "ct-a", "srv", now=AT(3), age_days=3.5, approved=False)
    assert old.verdict == policy.DENY and "max_age_days" in old.reason
    assert policy.decide(r, "ct-a", "srv", now=AT(3), age_days=1.0, approved=False).may_send


def test_backoff_grows_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    seen = [backoff.delay(n, 5, 60, rng) for n in range(1, 12)]
    assert 2.5 <= seen[0] <= 5
    assert 5 <= seen[1] <= 10
    assert all(30 <= s <= 60 for s in seen[5:])  # capped, never below half the cap
    assert len({round(s, 6) for s in seen}) == len(seen)  # jittered
    assert backoff.delay(0, 5, 60) == 0


def test_config_refuses_inline_keys_and_bad_values():
    with pytest.raises(config_mod.ConfigError, match="never inline"):
        validate_targets("t.toml", {"a": {"base_url": "http://h", "api_key": "abc"}})
    with pytest.raises(config_mod.ConfigError, match="exactly one"):
        validate_targets("t.toml", {"a": {"base_url": "http://h"}})
    with pytest.raises(config_mod.ConfigError, match="must not carry credentials"):
        validate_targets("t.toml", {"a": {"base_url": "http://u:p@h", "api_key_env": "K"}})
    with pytest.raises(config_mod.ConfigError, match="22:00-06:00"):
        validate_policy("t.toml", [{"projects": ["*"], "targets": ["a"], "windows": ["10pm-6am"]}])
    with pytest.raises(config_mod.ConfigError, match="max_parallel"):
        validate_sync("t.toml", {"max_parallel": 0})
    t = validate_targets("t.toml", {"a": {"base_url": "http://h:1/", "api_key_env": "K", "entity": "e"}}).by_name["a"]
    assert t.base_url == "http://h:1" and t.key_ref == ("env", "K") and "api_key_env" in t.describe()


def test_cut_sends_only_what_the_server_lacks():
    f = LogFacts(history_rows=3, history_ends=[100, 200, 300], end=350)
    whole = plan_cut(f, 0)
    assert whole is not None and not whole.resumed and whole.rows == 3 and whole.end == 350
    rest = plan_cut(f, 2)
    assert rest is not None and rest.resumed and rest.start == 200 and rest.rows == 1
    assert plan_cut(f, 3) is None and plan_cut(f, 5) is None
