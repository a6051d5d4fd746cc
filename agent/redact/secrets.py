"""What counts as a secret in a string, and the scrubber that takes it out.

Three kinds of rules, applied together to every outgoing string (see ``outgoing.py``):

- **Token rules**: the maintained rule set of the `detect-secrets` library (its regex plugins,
  loaded from the installed library at run time, so a new release's rules come with it), plus
  the formats it lacks or matches too narrowly (bare W&B keys, OpenAI, Slack, Hugging Face,
  bare AWS secret keys, PEM blocks, high-entropy tokens). The whole match goes.
  (The tables of our own rules, and what a key's name says, are ``secret_rules.py``.)
- **Context rules**: the value after a secret-looking key or flag: ``password: X``,
  ``--api-key X``, ``Authorization: Bearer X``, a .netrc line's ``password X``. Only the value
  goes; the key stays readable.
- **Site rules**: the site's own ``patterns``, the run's identity (host, user, e-mail), and
  absolute local paths.

A match becomes ``[redacted:<rule>:<tag>]`` in text and ``redacted-<rule>-<tag>`` in names
(keys, file names: no brackets or colons, which some file systems and URLs mangle). The tag is
a keyed hash (``placeholders.text_tag``): the same secret shows as the same marker everywhere on
the site without revealing it, and the same name always maps to the same new name.
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from .json_neighbours import secret_positions
from .rule_reach import plain_limit
from .secret_rules import (CONTEXT_RULES, EXTRA_TOKEN_RULES, LAST_TOKEN_RULES, PATH_PATTERN,
                           key_secrecy, names_tokenizer_setting)

# detect-secrets plugins left out: not secrets (public IPs), or keyword heuristics that the
# context rules below do on every string (KeywordDetector is not regex-based anyway).
_SKIPPED_PLUGINS = {"IPPublicDetector"}

def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_HOME_IN_TOKEN = re.compile(r"[/_](?:home|Users)[/_]")


def _high_entropy(token: str) -> bool:
    """Random-looking: lower, upper and digits, and characters spread like random ones. A long
    CamelCase metric or checkpoint name repeats its letters (about 4.2 bits a character);
    random base64 of 32 characters has 4.3 or more 95 times in 100, of 40 about 4.8."""
    body = token.rstrip("=")
    # A home's path inside the token (``val//home/alice/…/ct_001``, a media key built from a
    # path) is the path rule's to take, from its "/": what comes before it is judged alone, so
    # a key's readable start (``val/``) is not taken with it when the user's name is random.
    home = _HOME_IN_TOKEN.search(body)
    if home:
        body = body[:home.start()]
        if len(body) < 32:   # the rule's least length
            return False
    if not (any(c.islower() for c in body) and any(c.isupper() for c in body) and any(c.isdigit() for c in body)):
        return False
    return _entropy(body) >= min(4.5, math.log2(len(body)) - 0.7)


def _names_a_credential(m: re.Match[str]) -> bool:
    key = m.group("k")
    return bool(key_secrecy(key)) and not names_tokenizer_setting(key)


# A rule that needs more than its regex to decide: match -> keep it as a secret?
_CHECKS: dict[str, Callable[[re.Match[str]], bool]] = {
    "high_entropy_token": lambda m: _high_entropy(m.group(0)),
    # 40 characters of base64 may be a path's (``val//home/alice01/data/P1234567/ct``): the path
    # rule takes it from its "/", not with the key's start.
    "aws_secret_access_key": lambda m: not _HOME_IN_TOKEN.search(m.group(0)),
    "secret_key_name": _names_a_credential,       # the key's words, as a config's keys are read
}


@functools.lru_cache(maxsize=1)
def detect_secrets_rules() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The regex plugins of the installed detect-secrets, as (rule name, pattern)."""
    # Lazy: detect-secrets takes ~0.2 s to import; only a policy that asks for its rules pays it.
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector

    rules = []
    for cls in get_mapping_from_secret_type_to_class().values():
        if not issubclass(cls, RegexBasedDetector) or cls.__name__ in _SKIPPED_PLUGINS:
            continue
        name = re.sub(r"\W+", "_", cls.secret_type.lower()).strip("_")
        for rx in cls().denylist:
            rules.append((name, _linear(rx)))
    return tuple(rules)


# Some detect-secrets rules backtrack without bound on ordinary text: three runs of blanks around
# a key's separator (a wide table's ``password`` column: cubic in the blanks), or ``.+`` between
# two markers from every ``//`` of a line (quadratic). Each is loaded as the same language with
# its runs taken whole, or its span bounded.
_BLANKS_AROUND_SEPARATOR = "(?: *)(?:=|:|:=|=>| +|::)(?: *)"
_UNBOUNDED = {
    _BLANKS_AROUND_SEPARATOR: "(?: *+(?:=>|:=|::|=|:) *+| ++)",
    "\\/\\/.+\\/:_authToken=": "\\/\\/[^\\s]{1,256}?\\/:_authToken=",   # npm: //registry/:_authToken=
}


def _linear(rx: re.Pattern[str]) -> re.Pattern[str]:
    pattern = rx.pattern
    for slow, bounded in _UNBOUNDED.items():
        pattern = pattern.replace(slow, bounded)
    return rx if pattern == rx.pattern else re.compile(pattern, rx.flags)


def compile_patterns(extra: Iterable[str] = ()) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Token rules: ours, then detect-secrets', then our last ones, then the site's own
    (``site_0``, ``site_1`` ...)."""
    out = [(name, re.compile(rx)) for name, rx in EXTRA_TOKEN_RULES]
    out += list(detect_secrets_rules())
    out += [(name, re.compile(rx)) for name, rx in LAST_TOKEN_RULES]
    out += [(f"site_{i}", re.compile(rx)) for i, rx in enumerate(extra)]
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _context_rules() -> tuple[tuple[str, re.Pattern[str]], ...]:
    # Compiled when a scrubber is first made, not on import: commands that scrub nothing (sync,
    # status) import this module for the masking of their own messages' secrets.
    return tuple((name, re.compile(rx)) for name, rx in CONTEXT_RULES)
_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"))


def _scoped(rx: re.Pattern[str]) -> str:
    """A pattern as one alternative of a bigger one: its flags scoped to it, its group names
    dropped (names may repeat across rules)."""
    src = re.sub(r"\(\?P<\w+>", "(?:", rx.pattern)
    m = re.match(r"\(\?([aiLmsux]+)\)", src)          # leading inline flags apply to the rule only
    inline = m.group(1) if m else ""
    if m:
        src = src[m.end():]
    letters = inline + "".join(c for f, c in _FLAGS if rx.flags & f and c not in inline)
    letters = letters.replace("u", "").replace("a", "").replace("L", "")
    return f"(?{letters}:{src})" if letters else src
_PATH_RX = re.compile(PATH_PATTERN)
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_]")
_WORD_ONLY = re.compile(r"[A-Za-z0-9_]+")


@functools.lru_cache(maxsize=8)
def _plain_limit(rules: tuple[re.Pattern[str], ...]) -> int:
    return plain_limit(rules)


_ESCAPED_ASCII = re.compile(r"\\u00((?!22|5[cC])[2-7][0-9a-fA-F])")
_MARKER = re.compile(r"\[redacted:[\w-]+:[0-9a-f]{16}\]|redacted-\w+?-[0-9a-f]{16}(?![0-9a-f])")


@dataclass(frozen=True)
class Scrubber:
    """Compiled rules plus the tagger. ``scrub(text)`` returns (new_text, {rule: count})."""

    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    tag: Callable[[str, str], str]  # (kind, value) -> short keyed tag
    paths: bool = True
    context: tuple[tuple[str, re.Pattern[str]], ...] | None = None   # None: the context rules
    words: re.Pattern[str] | None = None   # the run's identity (``with_words``), one of ``patterns``

    def __post_init__(self) -> None:
        if self.context is None:
            object.__setattr__(self, "context", _context_rules())
        # One pass over the text with every rule as an alternative tells whether any rule
        # matches anywhere (search tries each rule at each position); most strings match none,
        # and then the rule-by-rule pass below is skipped. The run's words are searched apart:
        # the rest is the same pattern for every run of the site, compiled once (``re`` keeps
        # it), not once per run (some 20 ms of CPU, and one more entry in ``re``'s cache).
        rules = [rx for _, rx in self.patterns if rx is not self.words] + [rx for _, rx in self.context] + \
            ([_PATH_RX] if self.paths else [])
        object.__setattr__(self, "_any", re.compile("|".join(f"(?:{_scoped(rx)})" for rx in rules)))
        # The site's patterns are also asked of the text with "_" read as a blank: a pattern
        # anchored with ``\b`` (``\bP\d{4}\b``) must find the id in ``dice_P7126`` too, and
        # "_" is a word character to ``\b``. (Same length: a span found there is the text's.)
        site = [rx for name, rx in self.patterns if name.startswith("site_")]   # compile_patterns' names
        object.__setattr__(self, "_site_any", re.compile("|".join(f"(?:{_scoped(rx)})" for rx in site))
                           if site else None)
        # A string of at most this many ASCII word characters (a caption ``c123``, a key ``loss``)
        # no built-in rule can match (``rule_reach``): only the site's patterns and the run's
        # words are asked of it.
        object.__setattr__(self, "_plain_limit", _plain_limit(tuple(
            rx for name, rx in self.patterns if rx is not self.words and not name.startswith("site_"))
            + tuple(rx for _, rx in self.context) + ((_PATH_RX,) if self.paths else ())))

    @functools.cached_property
    def site_rules(self) -> "Scrubber | None":
        """The site's own ``patterns`` alone (no built-in rule, context rule, path or word), or
        None when the site has none: for strings the built-in rules have nothing to find in
        (a digest, ``outgoing.py``) but a site pattern may (a hashed patient id)."""
        site = tuple((name, rx) for name, rx in self.patterns if name.startswith("site_"))  # compile_patterns
        return Scrubber(site, self.tag, paths=False, context=()) if site else None

    @functools.cached_property
    def routing_rules(self) -> "Scrubber":
        """Every rule but local paths (a project is no path): for the identifiers that route a
        run (``meta.refuse_secret_routing``). The run's own host, user and e-mail too: a project
        named after its host, an entity that is its user's name would leave as they are."""
        return Scrubber(self.patterns, self.tag, paths=False, context=self.context, words=self.words)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, rule) to replace, in order."""
        view = text.replace("_", " ") if self._site_any is not None and "_" in text else None
        if len(text) <= self._plain_limit and _WORD_ONLY.fullmatch(text):
            if (self._site_any is None or not (self._site_any.search(text) or view and self._site_any.search(view))) \
                    and (self.words is None or not self.words.search(text)):
                return []
        elif not self._any.search(text) and (self.words is None or not self.words.search(text)) \
                and (view is None or not self._site_any.search(view)):
            return []
        # Markers already in the text are left as they are: scrubbing is idempotent, so a name
        # scrubbed once (a file's new name) is the same wherever it is scrubbed again.
        markers = [(m.start(), m.end()) for m in _MARKER.finditer(text)] if "redacted" in text else []
        found: list[tuple[int, int, int, str]] = []   # start, end, rule's rank, rule
        rules = [(name, rx, "token") for name, rx in self.patterns]
        rules += [(name, rx, "context") for name, rx in self.context]
        if self.paths:
            rules.append(("local_path", _PATH_RX, "token"))
        for rank, (name, rx, how) in enumerate(rules):
            check = _CHECKS.get(name)
            for t in (text, view) if view is not None and name.startswith("site_") else (text,):
                for m in rx.finditer(t):
                    s, e = m.span("v") if how == "context" else m.span()
                    if e > s and (check is None or check(m)) \
                            and not any(a < e and s < b for a, b in markers):
                        found.append((s, e, rank, name))
        # Overlapping matches merge into one span: a longer secret that a shorter rule matched
        # in part (the tail of a SendGrid key looks random) goes whole; the rule tried first
        # (the most specific) names it.
        merged: list[list] = []
        for s, e, rank, name in sorted(found):
            if merged and s < merged[-1][1]:
                m = merged[-1]
                m[1] = max(m[1], e)
                if rank < m[2]:
                    m[2], m[3] = rank, name
            else:
                merged.append([s, e, rank, name])
        return [(s, e, name) for s, e, _, name in merged]

    def _replace(self, text: str, name_form: bool) -> tuple[str, dict[str, int]]:
        spans = self.spans(text)
        if "\\u00" in text:
            # JSON's escapes of plain characters (``{"\\u0070assword": …}``): the text as it
            # reads is asked too, and if a rule finds something there, the text leaves so
            # (unescaped) and scrubbed.
            view = _ESCAPED_ASCII.sub(lambda m: chr(int(m[1], 16)), text)
            if view != text and (found := self.spans(view)):
                text, spans = view, found
        if not spans:
            return text, {}
        counts: dict[str, int] = {}
        out, pos = [], 0
        for s, e, name in spans:
            out.append(text[pos:s])
            # A host or user name is the same in any case: one tag for all its spellings.
            t = self.tag("path" if name == "local_path" else "secret",
                         text[s:e].lower() if _is_words_rule(self, name) else text[s:e])
            out.append(f"redacted-{_NAME_SAFE.sub('_', name)}-{t}" if name_form else f"[redacted:{name}:{t}]")
            counts[name] = counts.get(name, 0) + 1
            pos = e
        out.append(text[pos:])
        return "".join(out), counts

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        return self._replace(text, name_form=False)

    def scrub_name(self, name: str) -> tuple[str, dict[str, int]]:
        """A key or file name: the same rules, a marker that is itself a safe name."""
        return self._replace(name, name_form=True)

    def with_words(self, rule: str, words: Iterable[str]) -> "Scrubber":
        """Also take out these exact words (the run's host, user, e-mail) wherever no letter
        touches them: inside names too (``icu-gpu-07-rank0``, ``loss/icu-gpu-07_0``,
        ``ckpt_alice_best``, ``alice@icu-gpu-07``, ``alice1``). A short or generic word is taken
        only as a whole word (see ``_loose_word``)."""
        # A host's fully qualified name brings its short name (``icu-gpu-07.hospital.local``:
        # ``icu-gpu-07`` is what prompts and logs print).
        words = {w for w in words if w}
        words |= {w.split(".", 1)[0] for w in words if "." in w and "@" not in w and "/" not in w}
        ws = sorted({w for w in words if len(w) >= 2}, key=len, reverse=True)
        if not ws:
            return self
        loose = [re.escape(w) for w in ws if _loose_word(w)]
        strict = [re.escape(w) for w in ws if not _loose_word(w)]
        # Host names and e-mail addresses are case-insensitive (``ICU-GPU-07`` is the same host);
        # a loose word is taken in any case, a short or generic one only as written.
        alts = ([r"(?i:(?<![^\W_\d])(?:" + "|".join(loose) + r")(?![^\W_\d]))"] if loose else []) + \
            ([r"(?<![\w.@-])(?:" + "|".join(strict) + r")(?![\w-])"] if strict else [])
        # The words' first characters looked at first: most positions fail there, before any
        # lookbehind is tried (this is searched in every outgoing string).
        first = "".join(sorted({re.escape(c) for w in ws
                                for c in ({w[0], w[0].lower(), w[0].upper()} if _loose_word(w) else {w[0]})}))
        rx = re.compile(f"(?=[{first}])(?:" + "|".join(alts) + ")")
        return Scrubber(((rule, rx), *self.patterns), self.tag, self.paths, self.context, rx)


# Account names that identify no one and are common parts of ordinary names (``root_mean``,
# ``user_embeddings``): a container's ``root``, a cloud image's default user.
_GENERIC_WORDS = frozenset({"root", "user", "admin", "ubuntu", "jovyan", "guest", "nobody", "runner",
                            "ec2-user", "centos", "debian", "vagrant", "docker", "test"})


def _is_words_rule(scrubber: "Scrubber", rule: str) -> bool:
    """Whether ``rule`` is the run's words (``with_words``), whose case does not matter."""
    return scrubber.words is not None and any(n == rule and rx is scrubber.words for n, rx in scrubber.patterns)


def _loose_word(w: str) -> bool:
    """Whether a run's word is taken where ``-``, ``_``, ``.``, ``@`` or ``/`` touches it, not
    only as a whole word. Not a word shorter than 4 characters: it is a piece of too many
    ordinary names (a user ``ml`` would take ``ml_loss``, a host ``gpu`` every ``gpu_util``); nor
    a generic account name (a run as ``root`` would lose ``root_mean_squared_error``)."""
    return len(w) >= 4 and w.lower() not in _GENERIC_WORDS


@functools.lru_cache(maxsize=1)
def message_scrubber() -> Scrubber:
    """The token and context rules, for the agent's own messages (a config error, a status
    detail): a secret shows as ``[redacted:<rule>:hidden]``; paths stay (they are the message)."""
    return Scrubber(compile_patterns(), lambda kind, value: "hidden", paths=False)


def scrub_args(args: list[str], scrub: Callable[[str], str], secret_value: Callable[[str], str]) -> list[str]:
    """A command line: every argument scrubbed, and one that what stands before it makes a
    credential (``--password X``, ``curl -u ml:X``; ``json_neighbours.secret_positions``)
    replaced whole."""
    return [secret_value(a) if goes else scrub(a) for a, goes in zip(args, secret_positions(args))]
