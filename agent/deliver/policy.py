"""Which targets a run may go to, and when: a pure function of the rules, the run and the time.

Rules come from ``[[policy]]``. A rule applies to a (project, target) pair when one of its
``projects`` globs matches the run's project and it lists the target; the first such rule
decides. No rule: the run never goes to that target. Windows are local wall-clock ranges,
``"22:00-06:00"`` running across midnight; a rule without windows is always open.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, timedelta

from .settings import PolicyRule, Window

SEND, WAIT, HOLD, DENY = "send", "wait", "hold", "deny"


@dataclass(frozen=True)
class Decision:
    verdict: str                    # send | wait (window closed) | hold (needs approval) | deny (never)
    reason: str                     # in words, for `status` and the log
    rule: int | None = None         # index of the deciding [[policy]] rule
    next_open: datetime | None = None  # for WAIT: when the next window opens

    @property
    def may_send(self) -> bool:
        return self.verdict == SEND


def rule_for(rules: tuple[PolicyRule, ...], project: str | None, target: str) -> PolicyRule | None:
    proj = project or ""
    for r in rules:
        if target in r.targets and any(fnmatch.fnmatchcase(proj, g) for g in r.projects):
            return r
    return None


def in_window(w: Window, now: datetime) -> bool:
    minute = now.hour * 60 + now.minute
    if w.start < w.end:
        return w.start <= minute < w.end
    return minute >= w.start or minute < w.end  # across midnight


def next_opening(windows: tuple[Window, ...], now: datetime) -> datetime:
    """The next local time one of ``windows`` opens (never ``now`` itself)."""
    base = now.replace(second=0, microsecond=0)
    best = None
    for w in windows:
        cand = base.replace(hour=w.start // 60, minute=w.start % 60)
        if cand <= now:
            cand += timedelta(days=1)
        best = cand if best is None or cand < best else best
    assert best is not None
    return best


def decide(rules: tuple[PolicyRule, ...], project: str | None, target: str, *, now: datetime,
           age_days: float, approved: bool) -> Decision:
    """May a run of ``project``, ``age_days`` old, go to ``target`` at local time ``now``?"""
    r = rule_for(rules, project, target)
    if r is None:
        return Decision(DENY, f"no [[policy]] rule allows project {project or '(none)'!r} to go to target {target!r}")
    label = f"policy[{r.index}]"
    if r.max_age_days is not None and age_days > r.max_age_days:
        return Decision(DENY, f"{label}: the run is {age_days:.1f} days old, more than max_age_days = "
                              f"{r.max_age_days:g}", r.index)
    if r.hold and not approved:
        return Decision(HOLD, f"{label}: held until approved (`tfwb-agent approve RUN_ID`)", r.index)
    if r.windows and not any(in_window(w, now) for w in r.windows):
        nxt = next_opening(r.windows, now)
        spans = ", ".join(w.text for w in r.windows)
        return Decision(WAIT, f"{label}: outside its window(s) {spans}; next opens {nxt:%Y-%m-%d %H:%M}",
                        r.index, nxt)
    return Decision(SEND, f"{label} allows it" + (" (approved)" if r.hold else ""), r.index)
