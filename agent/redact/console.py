"""Console text that arrives in pieces, scrubbed as whole lines.

wandb writes one console record per ``write()``: ``print("db password:", pw)`` is four
records, a token can be written in two, a PEM key one line at a time. Scrubbing each piece
alone misses all of these; the server would join them again. ``TextStream`` holds text back
until it can be scrubbed whole: up to the last line feed (a carriage return does not end a
line: what follows it is drawn over the same row, ``console_render``), longer while a PEM block
is open or a line ends on a secret-looking key whose value comes on the next line (``_DANGLING``; ``\r\n``
ends a line as ``\n`` does). What it releases is then checked as wandb's terminal emulator and
a reader render it (``console_render.Screen``). What it releases at a given piece depends only
on the pieces so far, so the redaction of a log's prefix is a prefix of the redaction of the
whole log (live segments rely on it).
"""
from __future__ import annotations

import re
from typing import Callable

from .console_render import SHOWN_DIFFERENTLY, Screen, shown
from .secret_rules import SECRET_KEYWORDS, is_secret_flag

# Beyond this much held text, release it anyway (scrubbed): a progress bar that never ends a
# line must not grow memory without bound. A PEM block that long is not a key. (A line cut
# there is checked with its start when its rest comes: ``console_render.Screen``.)
HOLD_LIMIT = 1 << 20
# A line whose secret comes on the next one: it ends on a secret-looking key (``password:``, a
# YAML block scalar's ``password: |``, TOML's ``password = '''``, a Kubernetes env entry's
# ``- name: DB_PASSWORD``), on
# ``Bearer``, or on a .netrc entry's ``machine H`` / ``login U`` (its password may follow), or
# is such a key alone (a validation error names the field, then the value it was given).
_KEY = rf"[\w.-]{{0,100}}(?:{SECRET_KEYWORDS}|token|authorization|-key)[\w.-]{{0,100}}"
_DANGLING = re.compile(rf"(?i)(?:\b{_KEY}[\"']?\s*[:=：＝](?:\s*[|>][-+0-9]*|\s*(?:\'\'\'|\"\"\"))?|\bbearer|\bname[\"']?\s*[:=]\s*[\"']?{_KEY}[\"']?,?"
                       rf"|(?<![\w-])(?:machine|login|account)\s+\S+|^\s*[\w.-]*{_KEY})\s*$")
# The last word of a line the log ends inside: six characters or more, a letter among them.
_CUT_WORD = re.compile(r"(?<!\S)(?=\S{0,4096}[A-Za-z])\S{6,4096}$")
CUT_OFF = "[redacted:cut_off]"
_WAITING_LINES = 4       # a .netrc entry's machine, login, account lines before its password
# A line this long may go on in the next one: a wrapper folded it (rich's log handler at 80
# columns, textwrap), or pprint split a string literal (``'… --db-password '`` then
# `` '<pw> …'``). It waits for that line, and the two are searched unfolded too
# (``Outgoing.text``, ``unfold``).
FOLD_MIN = 60
_FOLD_LINES = 64
_PEM_BEGIN = "-----BEGIN"
_PEM_END = "-----END"


class TextStream:
    def __init__(self, scrub: Callable[[str], str], file: bool = False) -> None:
        """``file``: the text of a file, not a console stream (``console_render.Screen``)."""
        self.scrub = scrub
        self.screen = Screen(scrub, file)
        self.parts: list[str] = []      # the held text, in pieces (a progress bar's many)
        self.size = 0
        self.tail = ""                  # its last characters: a PEM marker may end in the next piece
        self.pieces_held = 0
        self.pem_open = False           # the held text opens a PEM block it has not closed yet

    def feed(self, piece: str) -> str:
        """Take one piece; return the scrubbed text that may be released now ("" if none)."""
        self.parts.append(piece)
        self.size += len(piece)
        self.pieces_held += 1
        tail = self.tail + piece
        self.tail = tail[-len(_PEM_BEGIN) + 1:]
        # Held text never has a cut (see below): a piece with no line feed and no PEM marker
        # makes none either, so a progress bar's pieces are not searched again and again.
        if self.size < HOLD_LIMIT and "\n" not in piece and _PEM_BEGIN not in tail and _PEM_END not in tail:
            return ""
        # Nor does one while an open PEM block waits for its end (a certificate cut short, then
        # line after line): until a piece brings "-----END" or the hold is full, the held text is
        # not joined and searched again for each new line.
        if self.pem_open and self.size < HOLD_LIMIT and _PEM_END not in tail:
            return ""
        text = "".join(self.parts)
        cut = _cut(text)
        if cut == 0:
            self.parts = [text]
            self.pem_open = _pem_open(text)
            return ""
        out, rest = text[:cut], text[cut:]
        self.parts, self.size, self.tail = ([rest] if rest else []), len(rest), rest[-len(_PEM_BEGIN) + 1:]
        self.pieces_held = 1 if rest else 0
        self.pem_open = _pem_open(rest)
        return self.screen.release(out, self.scrub(out))

    @property
    def mid_line(self) -> bool:
        """The held text ends inside a line (its rest was never written, or not yet)."""
        return bool(self.parts) and not self.parts[-1].endswith("\n")

    def close(self, finished: bool = True) -> str:
        """The rest, scrubbed: the log ended (a PEM block left open is taken out to its end).
        ``finished=False``: it ended with no exit record (a crash, a run taken for ended in the
        middle of a write): a line left unfinished then loses its last word, which may be the
        first part of a secret whose rest never came, and no rule can know it (``hf_Ab12…``,
        ``postgres://ml:Zq8…``). A finished run's last line is whole without its line feed."""
        out = "".join(self.parts)
        if self.mid_line and not finished:
            out = _CUT_WORD.sub(CUT_OFF, out)
        self.parts, self.size, self.tail, self.pieces_held, self.pem_open = [], 0, "", 0, False
        return self.screen.release(out, self.scrub(out)) if out else ""


def _pem_open(text: str) -> bool:
    begin = text.rfind(_PEM_BEGIN)
    return begin >= 0 and text.rfind(_PEM_END) < begin


def _cut(text: str) -> int:
    """Where the text may be cut: all before it leaves. The text after a cut has none itself."""
    if len(text) >= HOLD_LIMIT:
        return len(text)
    begin = text.rfind(_PEM_BEGIN)
    if begin >= 0 and text.rfind(_PEM_END) < begin:
        # An open block: release what comes before it, then wait for its end.
        return text.rfind("\n", 0, begin) + 1
    cut = text.rfind("\n") + 1
    if cut == 0:
        return 0
    # A line that ends on a key ("password:", "--token", "Authorization: Bearer") waits for the
    # next line, where its value may be; so does one that shows so (colour codes around it). The
    # lines before it that wait too stay with it (a .netrc entry's ``machine``, ``login``; a key
    # line whose value happens to look like a key itself), up to ``_WAITING_LINES``: a log of
    # nothing but such lines is released as it comes, not held and searched again and again.
    end = cut
    for _ in range(_WAITING_LINES):
        line_start = text.rfind("\n", 0, end - 1) + 1
        if not _waits(text[line_start:end - 1].rstrip("\r")):
            break
        end = line_start
        if end == 0:
            break
    # Never between a folded line and its continuation: the two are searched together (up to
    # ``_FOLD_LINES`` lines of one fold: a longer one is released as it comes).
    for _ in range(_FOLD_LINES):
        if not 0 < end < len(text):
            break
        prev_start = text.rfind("\n", 0, end - 1) + 1
        next_end = text.find("\n", end)
        if not _folds_into(text[prev_start:end - 1], text[end:next_end if next_end >= 0 else len(text)]):
            break
        end = prev_start
    return end


def _folds_into(prev: str, line: str) -> bool:
    """Whether ``line`` goes on with ``prev`` across a fold: ``unfold``'s own reading."""
    return len(prev) >= FOLD_MIN and len(unfold(f"{prev}\n{line}")[1]) > 1


def _waits(line: str) -> bool:
    if len(line) >= FOLD_MIN and not line.isspace():
        return True
    for shown_line in (line, shown(line)) if SHOWN_DIFFERENTLY.search(line) else (line,):
        words = shown_line.split()
        if _DANGLING.search(shown_line) or (words and is_secret_flag(words[-1])):
            return True
    return False


# Where a folded line goes on: after a line that ends inside a word (rich pads it with blanks to
# its column's width first), a line break and the deep indentation of a wrapped message's column
# (rich's is 11 or 20 blanks; a line that starts at its left edge, or a traceback's, is a line
# of its own); or a string literal closed at the end of a line and opened again on the next
# (``'ab'`` / `` 'cd'``: pprint's and black's split of a long string).
_FOLD = re.compile(r"""(?<=[^\s'"])[ \t]*\n[ \t]{8,}(?=\S)|(['"])[ \t]*\n[ \t]*\1""")


def unfold(text: str) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with the folds after lines of ``FOLD_MIN`` characters or more taken out, and
    the pieces of ``text`` it is made of, in order (``(start, end)``)."""
    pieces, pos = [], 0
    for m in _FOLD.finditer(text):
        if m.start() - (text.rfind("\n", 0, m.start()) + 1) < FOLD_MIN:
            continue
        pieces.append((pos, m.start()))
        pos = m.end()
    if not pieces:
        return text, [(0, len(text))]
    pieces.append((pos, len(text)))
    return "".join(text[a:b] for a, b in pieces), pieces
