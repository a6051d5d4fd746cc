"""Which strings a rule can never match, read from the rule itself: a string of a few ASCII word
characters (``c123``, ``loss``, ``mask``) is what most captions and key names are, and the
scrubber's one-pass search of every rule costs microseconds a character on it. A rule can match
such a string only if no match of it needs a character outside ``[A-Za-z0-9_]`` (a ``:``, a
``/``, a blank); of the rules that can, the shortest match bounds how short a string still needs
the search (``plain_limit``). Read from the parsed pattern (``re``'s own parser), so a rule added
later moves the bound by itself; where the parse holds something this reading does not know, the
rule is taken as able to match anything of its length."""
from __future__ import annotations

import re
import string
from typing import Any, Iterable

from re import _constants as _c, _parser as _p   # re's own parser (Python 3.11 and later)

WORD = frozenset(string.ascii_letters + string.digits + "_")
_WORD_CATEGORIES = {getattr(_c, n) for n in ("CATEGORY_WORD", "CATEGORY_UNI_WORD", "CATEGORY_NOT_SPACE",
                                             "CATEGORY_UNI_NOT_SPACE", "CATEGORY_NOT_DIGIT",
                                             "CATEGORY_UNI_NOT_DIGIT", "CATEGORY_NOT_LINEBREAK",
                                             "CATEGORY_UNI_NOT_LINEBREAK")}
_DIGIT_CATEGORIES = {_c.CATEGORY_DIGIT, _c.CATEGORY_UNI_DIGIT}
_NO_WORD_CATEGORIES = {getattr(_c, n) for n in ("CATEGORY_NOT_WORD", "CATEGORY_UNI_NOT_WORD", "CATEGORY_SPACE",
                                                "CATEGORY_UNI_SPACE", "CATEGORY_LINEBREAK", "CATEGORY_UNI_LINEBREAK")}
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT}


def _set_takes_a_word_char(items: Iterable[tuple[Any, Any]], ignore_case: bool) -> bool:
    negated, chars = False, set()
    for op, av in items:
        if op is _c.NEGATE:
            negated = True
        elif op is _c.LITERAL:
            chars.add(chr(av))
        elif op is _c.RANGE:
            chars.update(chr(c) for c in range(av[0], min(av[1], 127) + 1))
        elif op is _c.CATEGORY and av in _DIGIT_CATEGORIES:
            chars.update(string.digits)
        elif op is _c.CATEGORY and av in _NO_WORD_CATEGORIES:
            pass
        else:                      # a word category, or one not known here: it may take any
            chars.update(WORD)
    if ignore_case:
        chars |= {c.swapcase() for c in chars}
    return bool(WORD - chars) if negated else bool(chars & WORD)


def _needs_a_non_word_char(seq: Any, flags: int) -> bool:
    """Whether every match of ``seq`` takes a character outside ``WORD``."""
    for op, av in seq:
        if op is _c.LITERAL:
            c = chr(av)
            if c not in WORD and not (flags & re.IGNORECASE and c.swapcase() in WORD):
                return True
        elif op is _c.IN:
            if not _set_takes_a_word_char(av, bool(flags & re.IGNORECASE)):
                return True
        elif op is _c.SUBPATTERN:
            if _needs_a_non_word_char(av[-1], (flags | av[1]) & ~av[2]):
                return True
        elif op is _c.ATOMIC_GROUP:
            if _needs_a_non_word_char(av, flags):
                return True
        elif op is _c.BRANCH:
            if all(_needs_a_non_word_char(b, flags) for b in av[1]):
                return True
        elif op in _REPEATS:
            lo, _hi, sub = av
            if lo >= 1 and _needs_a_non_word_char(sub, flags):
                return True
        # (Lookarounds and anchors take no character; anything else may take a word character.)
    return False


def plain_limit(patterns: Iterable[re.Pattern[str]]) -> int:
    """The longest string of ``WORD`` characters none of ``patterns`` can match anywhere in: one
    shorter than the shortest match of every rule that can match such a string at all. 0 if a
    pattern cannot be read."""
    limit = 1 << 30
    for rx in patterns:
        try:
            parsed = _p.parse(rx.pattern, rx.flags)
            if not _needs_a_non_word_char(parsed, parsed.state.flags):
                limit = min(limit, parsed.getwidth()[0] - 1)
        except Exception:
            return 0
    return max(0, limit)
