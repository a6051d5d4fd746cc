"""Console text as it is shown, not as it was written: what ``console.TextStream`` releases is
checked once more as wandb's service and a reader render it.

wandb-core (0.31, ``core/internal/terminalemulator``) does not keep a stream's console records as
written. It runs each stream's records, in order, through a small terminal emulator, and the
server and ``output.log`` get its rows: a carriage return goes back to column 0 and what
follows overwrites; ``ESC[A`` / ``ESC[B`` move a row up / down; a line feed goes to column 0 of the
next row; any other character, escape sequences and backspaces included, is put into the row as
it is. A row holds at most 4096 characters; only the newest 32 rows can still change. A browser
or a terminal showing a row then drops its colour codes and applies a backspace or a cursor-left.
So text with no secret in it as written can show one: ``"x" + key[1:] + "\\r" + key[0]`` is the
whole key on the server, so is ``key[:20] + "\\x1b[1m" + key[20:]`` in a browser.

``Screen`` follows the emulator over the text released so far (two of them: stdout's view is 32
rows high, stderr's 4096) and checks every row a release changes: each state of a row before
the cursor comes back over it, and the final rows together (a ``password:`` row above its
value), each also as shown. A release whose rows all pass leaves as it is; otherwise what leaves
instead is the rows it makes, as shown and scrubbed, on rows of their own (below any row the
cursor could still reach): the animation of that progress bar is lost, the secret is not.
"""
from __future__ import annotations

import re
from typing import Callable

ROW_LIMIT = 4096            # wandb-core's maxTerminalLineLength: a row's characters past it are dropped
LIVE_ROWS = 32              # wandb-core's maxTerminalLines: a row older than the newest 32 never changes
HEIGHTS = (32, 4096)        # its stdout terminal's height; its stderr's (it passes the line length)
FILE_ROW = 1 << 20          # a file's line is checked up to this many characters (console.HOLD_LIMIT)
WITHHELD = "[redacted:console_line]"
_STEP_LIMIT = 4096          # a cursor move's count, at most (a terminal is not wider)
_COLUMN_LIMIT = 1 << 16     # how far right ``render`` lets the cursor go
_CHECK_BUDGET = 1 << 16     # characters of rows checked on the way, beyond twice the release's

# Characters a terminal or a browser does not show as themselves: C0 controls but tab and line
# feed, DEL, C1 controls, and invisible format characters (soft hyphen, zero-width, bidi).
_HIDDEN = "\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
SHOWN_DIFFERENTLY = re.compile(f"[{_HIDDEN}]")
# wandb-core's parser: ESC [ A / ESC [ B move; ESC, or ESC [, followed by anything else is put as
# written, that character too (even a line feed); ESC or ESC [ at the end waits for what follows.
_CORE_TOKEN = re.compile(r"\x1b\[[AB]|\x1b\[?[\s\S]?|\r|\n|[^\x1b\r\n]+")
_SHOWN_TOKEN = re.compile(
    r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"      # CSI
    r"|(?P<osc>\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?)"       # OSC (a title, a hyperlink's target)
    r"|\x1b(?P<esc>[\s\S]?)"                              # any other escape
    rf"|(?P<ctl>[{_HIDDEN}\t\n])"
    rf"|(?P<text>[^{_HIDDEN}\t\n]+)")
_VERTICAL_CSI = set("ABEFHfdsuSTLMr")
_VERTICAL_ESC = set("78MDE")
_MARKER = re.compile(r"(\[redacted:[\w-]+:[0-9a-f]{16}\])")     # the scrubber's (``secrets._MARKER``)


def render(text: str, vertical: bool = True) -> list[str] | None:
    """The rows a terminal (or a browser) shows for ``text``, from column 0 of an empty screen:
    carriage return, backspace, tab, cursor left/right/column, erase and delete in a row, and
    (``vertical``) cursor up/down, clamped to the rows there are; colours and other sequences
    dropped. ``vertical=False``: None if the text moves the cursor to another row (a row whose
    rendering would change rows above it cannot be judged alone)."""
    rows = [""]
    y = x = 0
    saved = (0, 0)

    def put(s: str) -> None:
        nonlocal x
        while len(rows) <= y:
            rows.append("")
        row = rows[y]
        if len(row) < x:
            row += " " * (x - len(row))
        rows[y] = row[:x] + s + row[x + len(s):]
        x += len(s)

    for m in _SHOWN_TOKEN.finditer(text):
        if m.group("text") is not None:
            put(m.group("text"))
            continue
        ctl = m.group("ctl")
        if ctl is not None:
            if ctl == "\r":
                x = 0
            elif ctl == "\n":
                y, x = y + 1, 0
            elif ctl == "\b":
                x = max(0, x - 1)
            elif ctl == "\t":
                x = min((x // 8 + 1) * 8, _COLUMN_LIMIT)
            continue
        final = m.group("final")
        esc = m.group("esc")
        if final is None and (esc is None or esc not in _VERTICAL_ESC):
            continue                                    # OSC, a two-character escape: not shown
        if final is not None:
            digits = re.match(r"\d*", m.group("params").lstrip("?<=>")).group()
            n = min(int(digits), _STEP_LIMIT) if digits else None
        else:
            final, n = {"M": "A", "D": "B", "E": "E", "7": "s", "8": "u"}[esc], None
        if final in _VERTICAL_CSI:
            if not vertical:
                return None
            if final in "AF":
                y = max(0, y - (n or 1))
            elif final in "BE":
                y = max(y, min(y + (n or 1), len(rows) - 1))
            elif final == "s":
                saved = (y, x)
            elif final == "u":
                y, x = saved
            if final in "EF":
                x = 0
            continue
        while len(rows) <= y:
            rows.append("")
        row = rows[y]
        if final == "D":
            x = max(0, x - (n or 1))
        elif final == "C":
            x = min(x + (n or 1), _COLUMN_LIMIT)
        elif final == "G":
            x = max(0, (n or 1) - 1)
        elif final == "K":
            rows[y] = row[:x] if not n else (" " * (x + 1) + row[x + 1:] if n == 1 else "")
        elif final == "P":
            rows[y] = row[:x] + row[x + (n or 1):]
        elif final == "@":
            rows[y] = row[:x] + " " * (n or 1) + row[x:] if x < len(row) else row
        elif final == "X":
            rows[y] = row[:x] + " " * min(n or 1, max(0, len(row) - x)) + row[x + (n or 1):]
    while len(rows) <= y:
        rows.append("")
    return rows


def shown(text: str) -> str:
    """``render`` as one string, rows joined by line feeds."""
    return "\n".join(render(text) or ())


class _Emulator:
    """wandb-core's terminal emulator for one view height, keeping the rows that can still
    change: row number -> (text, written as one piece with nothing hidden in it)."""

    __slots__ = ("height", "width", "view", "y", "x", "created", "rows")

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width          # a row's characters past it are dropped
        self.view = 0               # rows in the emulator's view: the newest ones
        self.y = self.x = 0         # the cursor, in the view
        self.created = 0
        self.rows: dict[int, tuple[str, bool]] = {}

    def copy(self) -> "_Emulator":
        e = _Emulator(self.height, self.width)
        e.view, e.y, e.x, e.created, e.rows = self.view, self.y, self.x, self.created, dict(self.rows)
        return e

    def fresh(self) -> bool:
        """The cursor at column 0 below every row: nothing written next lands on a row there is."""
        return self.y >= self.view and self.x == 0

    def at(self) -> int:
        return self.created - self.view + self.y

    def _new_row(self, seen: "_Seen | None") -> None:
        self.created += 1
        self.view += 1
        self.rows[self.created - 1] = ("", True)
        old = self.created - 1 - LIVE_ROWS
        if old in self.rows:
            if seen is not None:
                seen.final(old, self.rows[old][0])
            del self.rows[old]

    def line_feed(self) -> None:
        self.x = 0
        self.down()

    def down(self) -> None:
        self.y += 1
        if self.y >= self.height:
            if self.view > 0:
                self.view -= 1
            self.y -= 1

    def up(self) -> None:
        if self.y > 0:
            self.y -= 1

    def put(self, run: str, seen: "_Seen | None") -> None:
        while self.y >= self.view:
            self._new_row(seen)
        a = self.at()
        row = self.rows.get(a)
        if row is not None and self.x < self.width:
            old, x = row[0], self.x
            part = run[:self.width - x]
            base = old + " " * (x - len(old)) if len(old) < x else old
            new = base[:x] + part + base[x + len(part):]
            whole = (not old or (x == 0 and len(part) >= len(old))) and len(part) == len(run)
            self.rows[a] = (new, whole and not SHOWN_DIFFERENTLY.search(new))
            if seen is not None:
                seen.changed(a)
        self.x += len(run)

    def plain_lines(self, text: str) -> None:
        """``text``: whole lines of at most ``width`` characters, nothing hidden (``Screen``)."""
        for line in text.split("\n")[:-1]:
            if line.endswith("\r"):
                line = line[:-1]
            if line:
                while self.y >= self.view:
                    self._new_row(None)
                self.rows[self.at()] = (line, True)
            self.line_feed()


class _Seen:
    """The rows one release changed in one emulator: their order, which changed since the
    cursor last went back, and the final text of those that left the emulator's reach."""

    def __init__(self) -> None:
        self.touched: dict[int, None] = {}
        self.dirty: set[int] = set()
        self.gone: list[tuple[int, str]] = []

    def changed(self, a: int) -> None:
        self.touched[a] = None
        self.dirty.add(a)

    def final(self, a: int, text: str) -> None:
        if a in self.touched:
            del self.touched[a]
            self.dirty.discard(a)
            self.gone.append((a, text))

    def rows(self, e: _Emulator) -> list[str]:
        return [t for _, t in sorted(self.gone + [(a, e.rows[a][0]) for a in self.touched])]


Found = tuple[tuple[str, str], ...]    # (value, its marker): what the scrubber found in the raw text drawn


class Screen:
    """Checks text about to leave against the rows it makes; see the module."""

    def __init__(self, scrub: Callable[[str], str], file: bool = False) -> None:
        """``file``: the text of a file (``output.log``, a text file), not a console stream: no
        emulator runs it on the server, its lines are not cut at ROW_LIMIT (up to ``FILE_ROW``
        characters are checked), and one view height does."""
        self.scrub = scrub
        self.width = FILE_ROW if file else ROW_LIMIT
        self.ems = [_Emulator(h, self.width) for h in (HEIGHTS[:1] if file else HEIGHTS)]
        self.pending = ""           # ESC or ESC [ at the end of the last release: the parser waits

    def release(self, raw: str, text: str) -> str:
        """What leaves in place of ``text`` (``raw`` scrubbed): ``text`` itself, or the rows it
        makes, as shown and scrubbed."""
        if not text:
            return text
        if self._plain(raw, text):
            for e in self.ems:
                e.plain_lines(text)
            return text
        # The scrubber's own output has nothing more for it (its markers are left as they are):
        # rows that are the released lines themselves need no second look.
        memo: dict[str, bool] = {text[:-1] if text.endswith("\n") else text: True}
        # What the scrubber finds in the rows the raw text makes, as shown: the scrubber may have
        # taken the raw text's colour code for a value ("password:\x1b[0m" + value).
        found = self._found(raw) if raw != text else ()
        run = self._run(self.ems, self.pending, text, memo, found)
        if run is not None:
            self.ems, self.pending, _ = run
            return text
        return self._instead(text, memo, found)

    def _plain(self, raw: str, text: str) -> bool:
        """Whole lines the emulator keeps as written, onto rows of their own: nothing to check."""
        if self.pending or not text.endswith("\n") or not all(e.fresh() for e in self.ems):
            return False
        if SHOWN_DIFFERENTLY.search(raw) and SHOWN_DIFFERENTLY.search(raw.replace("\r\n", "\n")):
            return False
        return len(text) <= self.width or max(map(len, text.split("\n"))) <= self.width

    def _found(self, raw: str) -> Found:
        """(value, its marker) for what the scrubber finds in the rows ``raw`` would make, shown
        (values of four characters or more: a shorter one would be found everywhere)."""
        ems, _, seen = self._run(self.ems, self.pending, raw)
        found: dict[str, str] = {}
        for x in {"\n".join(shown(r) for r in s.rows(e)) for e, s in zip(ems, seen)}:
            scrubbed = self.scrub(x)
            if scrubbed == x:
                continue
            # The scrubber keeps all but what it found as it was: the rest lines the two up.
            parts = _MARKER.split(scrubbed)
            m = re.fullmatch("(.+?)".join(map(re.escape, parts[0::2])), x, re.S)
            for value, marker in zip(m.groups() if m else (), parts[1::2]):
                if len(value) >= 4 and value != marker:
                    found[value] = marker
        return tuple(found.items())

    def _clean(self, s: str, memo: dict[str, bool]) -> bool:
        ok = memo.get(s)
        if ok is None:
            ok = memo[s] = self.scrub(s) == s
        return ok

    def _clean_shown(self, rows: list[str], memo: dict[str, bool], found: Found) -> bool:
        """The rows, and the rows as shown, hold nothing the scrubber finds, nor a value of ``found``."""
        joined = "\n".join(rows)
        if not self._clean(joined, memo) or any(v in joined for v, _ in found):
            return False
        if not any(SHOWN_DIFFERENTLY.search(r) for r in rows):
            return True
        out = []
        for r in rows:
            s = render(r, vertical=False)
            if s is None:
                return False
            out += s
        joined = "\n".join(out)
        return self._clean(joined, memo) and not any(v in joined for v, _ in found)

    def _run(self, ems: list[_Emulator], pending: str, text: str, memo: dict[str, bool] | None = None,
             found: Found = ()) -> tuple[list[_Emulator], str, list[_Seen]] | None:
        """The emulators after ``text`` (copies), the parser's wait and the rows changed; None if
        a row it changes fails a check (``memo`` None: no checks)."""
        ems = [e.copy() for e in ems]
        seen = [_Seen() for _ in ems]
        src = pending + text
        pending = ""
        # Checking each state of a row costs a scrub of the row: a short counter redrawn over a
        # long line would cost one per character. Past this much, the rows' final state leaves.
        budget = 2 * len(src) + _CHECK_BUDGET
        for m in _CORE_TOKEN.finditer(src):
            tok = m.group()
            if tok in ("\x1b", "\x1b[") and m.end() == len(src):
                pending = tok
                break
            back = tok == "\r" or tok == "\x1b[A"
            for e, s in zip(ems, seen):
                if back and memo is not None:
                    # The cursor goes back over what is there: each row changed since it last
                    # did is checked as it is now, unless it is one piece of the released text.
                    for a in s.dirty:
                        t, whole = e.rows[a]
                        if not whole:
                            budget -= len(t)
                            if budget < 0 or not self._clean_shown([t], memo, found):
                                return None
                    s.dirty.clear()
                if tok == "\n":
                    e.line_feed()
                elif tok == "\r":
                    e.x = 0
                elif tok == "\x1b[A":
                    e.up()
                elif tok == "\x1b[B":
                    e.down()
                else:
                    e.put(tok, s)
        if memo is not None:
            for e, s in zip(ems, seen):
                if (s.touched or s.gone) and not self._clean_shown(s.rows(e), memo, found):
                    return None
        return ems, pending, seen

    def _instead(self, text: str, memo: dict[str, bool], found: Found) -> str:
        """The rows ``text`` makes (as stdout's emulator keeps them), shown and scrubbed, on rows
        of their own: past every row the cursor can still write into."""
        ems, _, seen = self._run(self.ems, self.pending, text)
        end = "\n" if text.endswith("\n") else ""
        body = self.scrub("\n".join(shown(r) for r in seen[0].rows(ems[0])))
        for value, marker in found:
            body = body.replace(value, marker)
        lead = " " if self.pending else ""          # the escape the parser waits for ends on a blank
        after, _, _ = self._run(self.ems, self.pending, lead)
        lead += "\n" * max(0, *(e.view - e.y for e in after))
        out = lead + body + end
        run = self._run(self.ems, self.pending, out, memo, found)
        if run is None:     # still a find (a row cut at its width): the line does not leave at all
            out = lead + WITHHELD + end
            run = self._run(self.ems, self.pending, out)
        self.ems, self.pending, _ = run
        return out
