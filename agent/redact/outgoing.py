"""The one choke point every outgoing string passes through.

Whatever the record-specific rules did first (media, config keys, identity), ``Outgoing``
then walks the whole record — every string field of every message, generically, from the
protobuf descriptors — and every file's text, and scrubs each string by what it is:

- a **name** (history/summary/config/stats keys, metric names, file paths, table columns):
  scrubbed into a marker that is itself a valid name, the same way everywhere, so references
  stay consistent (``val/P7126/dice`` and ``media/images/val/P7126/dice_0_x.png`` change alike);
- **JSON** (``value_json``, artifact metadata): parsed, keys as names, strings as text, strings
  under a secret-looking key replaced whole, then written back;
- **text**: everything else.

Only the fields in ``string_fields.STRUCTURAL`` skip the scrubber: identifiers that route and
join the run (run id, entity, project, digests, the writer's version) and wandb's own
bookkeeping; a run whose own run id, project, entity or sweep id a rule matches is refused
before this walk (``meta.refuse_secret_routing``). The few fields with one fixed shape (a git
commit id, an alert's level: ``string_fields.SHAPED``) leave only with that shape, else are
replaced whole. A new wandb version's new string field is
therefore scrubbed as text without anyone listing it.
Counts of changed strings per place go into the report; places the policy names in
``keep_strings`` are left as they are (and counted as kept).
"""
from __future__ import annotations

import json
import re
from typing import Any

from .console import unfold
from .console_render import SHOWN_DIFFERENTLY, shown
from .policy import Policy, is_plain_text
from .report import RedactionReport
from .json_neighbours import ENTRY_VALUE_KEYS, entry_label, is_table, secret_positions
from .secret_rules import key_secrecy
from .secrets import Scrubber, scrub_args
from .outgoing_walk import MessageWalk
from .string_fields import COMMIT, NO_TEXT_JSON
# A digest (md5, sha256: what wandb writes beside every media file): random, no built-in rule's
# shape. But a hashed patient id (the md5 or sha256 of a record number) looks just the same, so
# the site's own ``patterns`` are still asked (``Scrubber.site_rules``).
# A tagged value ``hash:…`` that redaction wrote (group ``tag``) is a keyed tag: nothing to scrub.
_DIGEST = re.compile(r"(?P<tag>hash:[0-9a-f]{16,64})|[0-9a-f]{32}|[0-9a-f]{64}")
# wandb's media file names: <key>_<step>[_<index>]_<hash>.<ext>. The numbers and the content
# hash are wandb's own; the key (it repeats) and the extension (a user's file's, for some kinds)
# are names to scrub.
_MEDIA_NAME = re.compile(r"(?P<base>.+?)(?P<steps>(?:_\d+)+)_(?P<hash>[0-9a-f]{20})(?P<ext>(?:\.[A-Za-z0-9]+)+)")
_CACHE_LIMIT = 50_000
# A value the console's scrub took out is looked for in output.log when it is this long (a
# shorter one would take ordinary words with it), up to this many values.
_SEEN_MIN, _SEEN_LIMIT = 8, 10_000
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode   # as json.dumps(...) with these
_HOMES = frozenset({"home", "Users"})

def _holds_text(v: Any) -> bool:
    """Whether a JSON value holds a string at any depth (a key's name is none)."""
    if isinstance(v, str):
        return True
    if isinstance(v, dict):
        return any(_holds_text(x) for x in v.values())
    if isinstance(v, list):
        return any(_holds_text(x) for x in v)
    return False


class Outgoing(MessageWalk):
    """Scrubs every outgoing string (see the module docstring), remembering what it decided."""

    def __init__(self, scrubber: Scrubber, policy: Policy, report: RedactionReport) -> None:
        self.policy = policy
        self.report = report
        self.keep = frozenset(policy.keep_strings)
        self._names: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        # (raw JSON, place, key) that came out unchanged: nothing in it to scrub, and nothing
        # counted, so meeting it again can skip the parse (wandb repeats the same small values,
        # "png", a media type, in every record).
        self._same_json: set[tuple[str, str, str]] = set()
        self._secret_keys: dict[tuple[str, bool], bool] = {}   # (key, asked of a plain text) -> goes
        # (raw JSON, place, key) -> the JSON ``reencoded`` gave, when the scrub left it as it was.
        self._reencoded: dict[tuple[str, str, str], str] = {}
        self._path_names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._dir_names: dict[str, str] = {}   # a file path's directory -> its names, each + "/"
        self.produced: set[str] = set()     # file paths this redaction wrote: names already
        # The sha256 of every file this redaction wrote. wandb's ``"sha256"`` beside a media
        # file's name is one of these when it describes what leaves; any other 64-hex value
        # under that key (a site's hashed patient id) is asked like any string.
        self.file_digests: set[str] = set()
        # What the scrub took out of the console records (each stream joined on its own), to
        # be taken out of ``output.log`` too (``seen_elsewhere``).
        self.console_secrets: set[str] = set()
        self._seen_rx: tuple[int, re.Pattern[str] | None] = (0, None)
        self.scrubber = scrubber

    @property
    def scrubber(self) -> Scrubber:
        return self._scrubber

    @scrubber.setter
    def scrubber(self, scrubber: Scrubber) -> None:
        # New rules (the run's identity): what the old ones let through must be asked again.
        self._scrubber = scrubber
        self._texts.clear()
        self._same_json.clear()
        self._reencoded.clear()

    def _secret_key(self, key: str, text: str = "") -> bool:
        """Whether ``text`` (a string, or "" for what holds one) under ``key`` goes whole: the
        policy's ``config_value_redacted``, kept per key. A number or a literal written as a
        string (``"4096"``) is asked apart, and only under a key that takes text."""
        hit = self._asked(key, "")
        return self._asked(key, text) if hit and text and is_plain_text(text) else hit

    def _asked(self, key: str, text: str) -> bool:
        """The policy's answer for ``key`` and ``text``: "" (any string), or a plain text (the
        answer is the same for every plain text, so one is kept per key for each)."""
        plain = bool(text)
        hit = self._secret_keys.get((key, plain))
        if hit is None:
            hit = self.policy.config_value_redacted(key, text)
            if len(self._secret_keys) < _CACHE_LIMIT:
                self._secret_keys[key, plain] = hit
        return hit

    @staticmethod
    def number_goes(key: str) -> bool:
        """Whether a number under ``key`` goes too: the key names a credential (``{"password":
        1234}``); under any other key, even a secret-looking one, a number is a metric."""
        return bool(key) and key_secrecy(key) == "any"

    # -- strings ---------------------------------------------------------------------------
    def _counted(self, place: str, counts: dict[str, int]) -> None:
        self.report.strings[place] += 1
        self.report.add_scrub(counts)

    def text(self, s: str, place: str) -> str:
        if not s or place in self.keep:
            return s
        scrubber = self.scrubber
        digest = _DIGEST.fullmatch(s)
        if digest:      # no built-in rule for a digest; the site's patterns yes (never for a tag)
            scrubber = None if digest["tag"] else scrubber.site_rules
            if scrubber is None:
                return s
        hit = self._texts.get(s)
        if hit is not None:
            if hit != s:
                self.report.strings[place] += 1
            return hit
        unfolded, folded = self._unfolded(s, scrubber) if place == "console" and "\n" in s else (s, 0)
        new, counts = scrubber.scrub(unfolded)
        if folded:
            counts = dict(counts, folded=folded)
        if SHOWN_DIFFERENTLY.search(new):
            # Colour codes or invisible characters inside (a captured log line in a summary): the
            # scrubbed text as a terminal or a browser shows it is asked too, and if a rule finds
            # something there, it leaves as shown, scrubbed (``console_render``).
            shown_new, shown_counts = scrubber.scrub(shown(new))
            if shown_counts:
                new, counts = shown_new, {k: counts.get(k, 0) + shown_counts.get(k, 0)
                                          for k in counts.keys() | shown_counts.keys()}
        if counts:
            self._counted(place, counts)
            if place == "console":
                self._remember(s, scrubber)
        else:
            new = s
        if len(self._texts) < _CACHE_LIMIT and len(s) < 4096:
            self._texts[s] = new
        return new

    def _unfolded(self, text: str, scrubber: Scrubber) -> tuple[str, int]:
        """``text`` without the secrets the scrub finds in it unfolded (``console.unfold``):
        each piece of one, on either side of a fold, goes; the scrub of the text as it is
        follows. Returns (text, secrets found)."""
        view, pieces = unfold(text)
        if len(pieces) == 1:
            return text, 0
        cuts: list[tuple[int, int, str]] = []   # (start, end) in ``text``, and what goes there
        found = 0
        for vs, ve, name in scrubber.spans(view):
            marker = f"[redacted:{name}:{scrubber.tag('secret', view[vs:ve])}]"
            offset, parts = 0, []
            for a, b in pieces:
                lo, hi = max(vs, offset), min(ve, offset + b - a)
                if lo < hi:
                    parts.append((a + lo - offset, a + hi - offset, marker))
                offset += b - a
            cuts += parts           # (one piece of it, or its key, may lie across the fold)
            found += 1
        if not cuts:
            return text, 0
        out, pos = [], 0
        for a, b, marker in sorted(cuts):
            if a < pos:
                continue
            out += [text[pos:a], marker]
            pos = b
        out.append(text[pos:])
        return "".join(out), found

    def _remember(self, s: str, scrubber: Scrubber) -> None:
        for start, end, name in scrubber.spans(s):
            value = s[start:end].strip()
            # (A word of letters alone, ``Embedding`` after a key that looked like one, is no
            # secret to hunt for through the whole file.)
            if (len(value) >= _SEEN_MIN and name != "local_path" and not value.isalpha()
                    and len(self.console_secrets) < _SEEN_LIMIT):
                self.console_secrets.add(value)

    def seen_elsewhere(self, text: str) -> str:
        """``text`` (of ``output.log``, scrubbed) without any secret the scrub took out of the
        console records. The file holds both streams in one: a line of stderr may stand between
        a key and its value on stdout (``print("password:")``, a log line, ``print(pw)``), which
        the records, each stream joined on its own, see side by side."""
        if not self.console_secrets:
            return text
        n, rx = self._seen_rx
        if rx is None or n != len(self.console_secrets):
            values = sorted(self.console_secrets, key=len, reverse=True)
            # Whole: not inside a longer word (``hunter2x`` is not in ``hunter2xyz``).
            rx = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, values)) + r")(?![A-Za-z0-9_])")
            self._seen_rx = (len(values), rx)
        new = rx.sub(lambda m: f"[redacted:seen:{self.scrubber.tag('secret', m[0])}]", text)
        if new != text:
            self.report.strings["console"] += 1
        return new

    def replaced(self, instead: str, place: str) -> str:
        """A field not of the one shape it may have (``string_fields.SHAPED``) is replaced
        whole, in every place: its value is not understood."""
        self._counted(place, {"unexpected_shape": 1})
        return instead

    def name(self, s: str, place: str = "key_names") -> str:
        if not s or place in self.keep:
            return s
        hit = self._names.get(s)
        if hit is None:
            hit, counts = self.scrubber.scrub_name(s)
            if counts:
                self._counted(place, counts)
            else:
                hit = s
            self._names[s] = hit
        return hit

    def path_names(self, path: tuple[str, ...]) -> tuple[str, ...]:
        """Each component of a (nested) key as a name; remembered per key path (``name``
        counts a name once, when first scrubbed, so a remembered path counts nothing new)."""
        hit = self._path_names.get(path)
        if hit is None:
            hit = tuple([self.name(k) for k in path])
            if len(self._path_names) < _CACHE_LIMIT:
                self._path_names[path] = hit
        return hit

    def path(self, rel: str) -> str:
        """A run-relative file path: each component a name (a marker never adds a slash).
        Paths this redaction produced (a placeholder's name) are remembered and stay."""
        if rel in self.produced:
            return rel
        head, slash, last = rel.rpartition("/")
        m = _MEDIA_NAME.fullmatch(last)
        if m:  # the extension too: wandb keeps the one the user's file had (a 3-D object, a molecule)
            last = (self.name(m["base"], "file_names") + m["steps"] + "_" + m["hash"]
                    + self.name(m["ext"], "file_names"))
        else:
            last = self.name(last, "file_names")
        new = self._dir(head, slash) + last
        self.produced.add(new)
        return new

    def media_path(self, rel: str) -> tuple[str, str, str] | None:
        """``path(rel)`` split as (the part before the hash, the hash, the extension) for a
        wandb media file name (``<dir>/<key>_<step>_<hash>.<ext>``: ``path`` scrubs the
        directories, the key and the extension, and leaves wandb's numbers and hash as they are); None for
        any other name or one produced here (then ``path`` alone says what it becomes)."""
        if rel in self.produced:
            return None
        head, slash, last = rel.rpartition("/")
        m = _MEDIA_NAME.fullmatch(last)
        if m is None:
            return None
        base = self.name(m["base"], "file_names")
        if "/" in base:     # (a marker never adds a slash: were one to, ``path`` says it all)
            return None
        stem = self._dir(head, slash) + base + m["steps"] + "_"
        h, ext = m["hash"], self.name(m["ext"], "file_names")
        self.produced.add(stem + h + ext)
        return stem, h, ext

    def _dir(self, head: str, slash: str) -> str:
        """A path's directories as names, each followed by "/"; made once per directory
        (10,000s of media files share a few: ``name`` remembers each name and counts it once,
        so asking it again would change nothing)."""
        d = self._dir_names.get(head)
        if d is None:
            parts = head.split("/") if slash else []
            # A home's directories (``media/images/val/home/alice/x/``, from a key holding an
            # absolute path) are one local path, not names one by one: from "home" on, one marker.
            home = next((i for i, p in enumerate(parts[:-1]) if p in _HOMES), None)
            if home is not None:
                parts[home:] = ["/" + "/".join(parts[home:])]
            d = "".join([self.name(p, "file_names") + "/" for p in parts])
            if len(self._dir_names) < _CACHE_LIMIT:
                self._dir_names[head] = d
        return d

    def secret_value(self, value: Any, place: str) -> str:
        """A value under a secret-looking key or after a secret-looking flag: it goes whole."""
        self.report.strings[place] += 1
        self.report.secrets["secret_key_value"] += 1
        raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return f"[redacted:value:{self.scrubber.tag('secret', raw)}]"

    def args(self, args: list[str], place: str) -> list[str]:
        if place in self.keep:
            return list(args)
        return scrub_args(list(args), lambda a: self.text(a, place), lambda a: self.secret_value(a, place))

    # -- JSON ------------------------------------------------------------------------------
    def value(self, v: Any, place: str, key: str = "") -> Any:
        """A JSON value at any depth: dict keys as names, strings as text; strings (and objects
        and lists holding one) under a secret-looking key go whole; numbers stay (``tokens_per_sec`` is a metric) unless the
        key names a credential (``secret_rules.key_secrecy``: ``{"password": 1234}``)."""
        if isinstance(v, str):
            if v in self.produced:
                return v
            if key and self._secret_key(key, v):
                return self.secret_value(v, place)
            if key == "commit" and COMMIT.fullmatch(v):
                return v     # a git commit id: understood, and what the dashboard links to
            if key == "sha256" and v in self.file_digests:
                return v     # the digest of a file that leaves beside this record
            return self.text(v, place)
        if isinstance(v, (dict, list)) and key and self._secret_key(key) and _holds_text(v):
            return self.secret_value(v, place)   # {"password": {"value": "…"}}: whole
        if isinstance(v, dict):
            # ``{"name": "DB_PASSWORD", "value": X}`` (a Kubernetes env entry, a tag): the value
            # stands under the name its sibling gives.
            label = entry_label(v)
            # A table as columns and rows (pandas' ``to_dict("split")``): each cell stands under
            # its column's name.
            columns = v.get("columns") if isinstance(v.get("data"), list) else None
            return {self.name(str(k)) if isinstance(k, str) else k:
                    self._rows(columns, x, place, key) if k == "data" and isinstance(columns, list)
                    else self.value(x, place, label if label and k in ENTRY_VALUE_KEYS else str(k))
                    for k, x in v.items()}
        if isinstance(v, list):
            return self._list(v, place, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and self.number_goes(key):
            return self.secret_value(v, place)   # a numeric password is still one
        return v

    def _list(self, v: list, place: str, key: str) -> list:
        """A list's items; an item after a secret-looking flag (``[..., "--db-password", X]``, a
        command line kept in a config) goes whole, as does the second of a pair whose first
        names a credential (``["PGPASSWORD", X]``, ``["X-Api-Key", X]``)."""
        if is_table(v, self._secret_key):
            # A header row, then rows (``[["user", "password"], ["ml", X]]``, ``df.values``
            # under its columns): each cell stands under its column's name.
            return [self.value(v[0], place, key)] + self._rows(v[0], v[1:], place, key)
        return [self.secret_value(x, place) if goes else self.value(x, place, key)
                for x, goes in zip(v, secret_positions(v, self._secret_key))]

    def _rows(self, columns: list, rows: Any, place: str, key: str) -> Any:
        """``rows`` of a table whose header is ``columns``: a cell under a column that names a
        credential goes as a value under that key would; other cells (and whatever is no row)
        as anything under ``key``."""
        if not isinstance(rows, list):
            return self.value(rows, place, key)
        # (Only a column a credential's words name, ``password``, ``api_key``: a ``token`` or
        # ``pass_rate`` column holds words and numbers.)
        names = [c if isinstance(c, str) and key_secrecy(c) == "any" else "" for c in columns]
        if not any(names):
            return [self.value(row, place, key) for row in rows]
        return [[self.value(x, place, names[j] if j < len(names) and names[j] else key) for j, x in enumerate(row)]
                if isinstance(row, list) else self.value(row, place, key) for row in rows]

    def json_as_is(self, raw: str, key: str) -> bool:
        """Whether a value_json leaves as it is without being read: it holds no string (a
        number, true/false/null, a list of them) and ``key`` does not take numbers. The one
        rule the item walks ask before ``json_text`` (a hot path: most items are numbers)."""
        return '"' not in raw and not self.number_goes(key) and NO_TEXT_JSON.fullmatch(raw) is not None

    def json_text(self, raw: str, place: str, key: str = "") -> str:
        if self.json_as_is(raw, key):
            return raw
        ck = (raw, place, key)
        if ck in self._same_json:
            return raw
        try:
            v = json.loads(raw)
        except ValueError:
            return self.text(raw, place)
        nv = self.value(v, place, key)
        if nv == v:
            if len(raw) < 4096 and len(self._same_json) < _CACHE_LIMIT:
                self._same_json.add(ck)
            return raw
        return _ENCODE(nv)

    def reencoded(self, raw: str, value: Any, place: str, key: str = "") -> tuple[str, bool]:
        """``value`` (which is ``raw`` parsed) scrubbed as ``value`` does and encoded, and
        whether the scrub left it as it was. A value the scrub left alone is remembered by its
        JSON: nothing was counted, so meeting it again gives the same JSON and counts nothing."""
        ck = (raw, place, key)
        hit = self._reencoded.get(ck)
        if hit is not None:
            return hit, True
        nv = self.value(value, place, key)
        new = _ENCODE(nv)
        clean = nv == value
        if clean and len(raw) < 4096 and len(self._reencoded) < _CACHE_LIMIT:
            self._reencoded[ck] = new
        return new, clean
