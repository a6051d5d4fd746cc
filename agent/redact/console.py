"""Console text that arrives in pieces, scrubbed as whole lines.

wandb writes one console record per ``write()``: ``print("db password:", pw)`` is four
records, a token can be written in two, a PEM key one line at a time. Scrubbing each piece
alone misses all of these; the server would join them again. ``TextStream`` holds text back
until it can be scrubbed whole: up to the last line end, longer while a PEM block is open or a
line ends on a secret-looking key whose value comes on the next line. What it releases at a
given piece depends only on the pieces so far, so the redaction of a log's prefix is a prefix
of the redaction of the whole log (live segments rely on it).
"""
from __future__ import annotations

import re
from typing import Callable

from .secrets import SECRET_FLAG, _KEYWORDS

# Beyond this much held text, release it anyway (scrubbed): a progress bar that never ends a
# line must not grow memory without bound. A PEM block that long is not a key.
HOLD_LIMIT = 1 << 20
_DANGLING = re.compile(rf"(?i)(?:\b[\w.-]*(?:{_KEYWORDS}|token|authorization)[\w.-]*[\"']?\s*[:=]|\bbearer)\s*$")
_PEM_BEGIN = "-----BEGIN"
_PEM_END = "-----END"


class TextStream:
    def __init__(self, scrub: Callable[[str], str]) -> None:
        self.scrub = scrub
        self.held = ""
        self.pieces_held = 0

    def feed(self, piece: str) -> str:
        """Take one piece; return the scrubbed text that may be released now ("" if none)."""
        self.held += piece
        self.pieces_held += 1
        cut = self._cut()
        if cut == 0:
            return ""
        out, self.held = self.held[:cut], self.held[cut:]
        self.pieces_held = 1 if self.held else 0
        return self.scrub(out)

    def close(self) -> str:
        """The rest, scrubbed: the log ended (a PEM block left open is taken out to its end)."""
        out, self.held, self.pieces_held = self.held, "", 0
        return self.scrub(out) if out else ""

    def _cut(self) -> int:
        text = self.held
        if len(text) >= HOLD_LIMIT:
            return len(text)
        begin = text.rfind(_PEM_BEGIN)
        if begin >= 0 and text.rfind(_PEM_END) < begin:
            # An open block: release what comes before it, then wait for its end.
            return text.rfind("\n", 0, begin) + 1
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1
        if cut == 0:
            return 0
        # A line that ends on a key ("password:", "--token", "Authorization: Bearer") waits
        # for the next line, where its value may be.
        line_start = max(text.rfind("\n", 0, cut - 1), text.rfind("\r", 0, cut - 1)) + 1
        last_line = text[line_start:cut].rstrip("\r\n")
        words = last_line.split()
        if _DANGLING.search(last_line) or (words and SECRET_FLAG.match(words[-1])):
            return line_start
        return cut
