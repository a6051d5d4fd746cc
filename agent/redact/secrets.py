"""Secret patterns and the text scrubber used on config values, metadata and console lines.

The scrubber replaces a match with ``[redacted:<name>:<tag>]``: the tag is a keyed hash
(see ``placeholders.text_tag``), so the same secret shows as the same marker everywhere on the
site without revealing it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

# name -> regex. Each match is replaced whole. Order matters only for overlaps: the first
# pattern that claims a span wins (see ``scrub``), so the specific token formats come first.
BUILTIN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("pem_private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[\s\S]*)"),
    ("wandb_api_key", r"(?i)\bwandb[_-]?api[_-]?key\b\s*[=:]\s*[\"']?[0-9a-f]{40}\b"),
    ("wandb_local_key", r"\blocal-[0-9a-f]{40}\b"),
    ("wandb_v1_key", r"\bwandb_v1_[A-Za-z0-9_]{20,}"),
    ("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}\b"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    ("aws_secret_access_key", r"(?i)\baws_secret_access_key\b\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
    ("github_pat", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    ("gitlab_token", r"\bgl(?:pat|dt|rt|ptt|soat|ft|cbt|imt|agent|oas)-[A-Za-z0-9_\-]{20,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),
    # "password=...", "token: ..." in config dumps and command lines: the value goes.
    ("config_assignment", r"(?i)\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[\w.-]*\s*[=:]\s*[\"']?[^\s\"',;]{4,}"),
    # URLs with credentials: scheme://user:pass@host
    ("url_credentials", r"\b[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@"),
)

# Absolute POSIX paths of two components or more, and home-relative ones. A URL's path is
# left alone (the lookbehind refuses a slash that follows ':' or '/' or a word character).
PATH_PATTERN = r"(?<![\w:/.~-])(?:~|/[^\s/\"'<>|:;,()\[\]{}=]+)(?:/[^\s/\"'<>|:;,()\[\]{}=]+)+/?"


@dataclass(frozen=True)
class Scrubber:
    """Compiled patterns plus the tagger; ``scrub(text)`` returns (new_text, {name: count})."""

    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    tag: Callable[[str, str], str]  # (kind, value) -> short keyed tag
    paths: bool = True

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        spans: list[tuple[int, int, str]] = []
        for name, rx in self.patterns:
            for m in rx.finditer(text):
                if m.end() > m.start() and not any(s < m.end() and m.start() < e for s, e, _ in spans):
                    spans.append((m.start(), m.end(), name))
        if self.paths:
            for m in _PATH_RX.finditer(text):
                if not any(s < m.end() and m.start() < e for s, e, _ in spans):
                    spans.append((m.start(), m.end(), "local_path"))
        if not spans:
            return text, counts
        spans.sort()
        out, pos = [], 0
        for s, e, name in spans:
            out.append(text[pos:s])
            kind = "path" if name == "local_path" else "secret"
            out.append(f"[redacted:{name}:{self.tag(kind, text[s:e])}]")
            counts[name] = counts.get(name, 0) + 1
            pos = e
        out.append(text[pos:])
        return "".join(out), counts


_PATH_RX = re.compile(PATH_PATTERN)


def compile_patterns(extra: Iterable[str] = ()) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The built-in patterns followed by the site's own (named ``site_0``, ``site_1`` ...)."""
    out = [(name, re.compile(rx)) for name, rx in BUILTIN_PATTERNS]
    out += [(f"site_{i}", re.compile(rx)) for i, rx in enumerate(extra)]
    return tuple(out)
