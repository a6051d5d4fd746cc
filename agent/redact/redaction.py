"""One redaction of one run: its settings, the plan's facts, the scrubber, the report, and
where the output goes (``dst`` None: a dry run, nothing is written). The record rules
(``records.py``), the media files (``media_files.py``) and the ``files/`` copy
(``files_copy.py``) all work on it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import placeholders
from .background_writer import BackgroundWriter, write_new
from .media_files import MediaFiles
from .outgoing import Outgoing
from .policy import Decision, Policy, is_sensitive
from .report import RedactionReport
from .secrets import Scrubber, compile_patterns
from .source_files import SourceFiles

_CACHE_LIMIT = 100_000


@dataclass
class Redaction:
    src: Path
    dst: Path | None
    policy: Policy
    secret: bytes
    map_path: Callable[[str], Path]
    report: RedactionReport = field(default_factory=RedactionReport)
    sensitive: tuple[str, ...] = ()
    planned: dict[str, tuple[str, str]] = field(default_factory=dict)   # file -> (kind, key)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)     # file -> wandb's width, height
    written: set[str] = field(default_factory=set)
    # A console stream of a run with no exit record ended inside a line
    # (``console_records.Console.close``): ``output.log`` holds that line, maybe cut, somewhere
    # (wandb keeps the line being printed in place, other lines after it).
    console_cut: bool = False

    def __post_init__(self) -> None:
        self.dst_str = str(self.dst) if self.dst is not None else ""
        self.dirs: set[str] = set()
        self._sensitive_keys: dict[str, bool] = {}
        self._decisions: dict[tuple[str, str], Decision] = {}
        self.media_memo: dict[Any, Any] = {}   # see items.redact_scrub_items
        self._text_tag = placeholders.text_tagger(self.secret)
        self.writer: BackgroundWriter | None = None
        self.scrubber = Scrubber(compile_patterns(self.policy.patterns), self.text_tag, self.policy.scrub_paths)
        self.out = Outgoing(self.scrubber, self.policy, self.report)
        self.report.rename = self.out.name
        self.source = SourceFiles(str(self.src))
        self.media = MediaFiles(self)

    def set_plan(self, planned: dict[str, tuple[str, str]], sizes: dict[str, tuple[int, int]],
                 sensitive: tuple[str, ...]) -> None:
        """The plan's facts (read only from here on); decisions made before it are forgotten."""
        self.planned, self.sizes, self.sensitive = planned, sizes, sensitive
        self._decisions.clear()
        self._sensitive_keys.clear()
        self.report.sensitive_keys = sensitive

    def add_identity(self, words: set[str]) -> None:
        """The run's own host, user and e-mail are scrubbed wherever they occur as a word."""
        self.scrubber = self.scrubber.with_words("identity", words)
        self.out.scrubber = self.scrubber

    def text_tag(self, kind: str, value: str) -> str:
        return self._text_tag(kind, value)

    def decide(self, key: str, kind: str) -> Decision:
        # Asked for every media object of every row (a handful of distinct keys): remembered.
        hit = self._decisions.get((key, kind))
        if hit is None:
            hit = self.policy.decide(key, kind, self.sensitive)
            if len(self._decisions) < _CACHE_LIMIT:
                self._decisions[(key, kind)] = hit
        return hit

    def count(self, d: Decision, kind: str, key: str) -> None:
        self.report.count_media(d.rule, kind, d.action, key)

    def is_sensitive(self, key: str) -> bool:
        if not self.sensitive:
            return False
        hit = self._sensitive_keys.get(key)
        if hit is None:
            hit = is_sensitive(key, self.sensitive)
            if len(self._sensitive_keys) < _CACHE_LIMIT:
                self._sensitive_keys[key] = hit
        return hit

    # -- output ----------------------------------------------------------------------------
    def make_parent(self, out: str) -> None:
        parent = os.path.dirname(out)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)

    def out_path(self, rel: str) -> str | None:
        """Where ``rel`` of the copy is written (None in a dry run); its directory exists."""
        if self.dst is None:
            return None
        out = os.path.join(self.dst_str, rel)
        self.make_parent(out)
        self.written.add(rel)
        return out

    def write(self, rel: str, data: bytes) -> None:
        """``data`` as ``rel`` of the copy, once (the background writer creates it, if any)."""
        self.report.bytes_out += len(data)
        if self.dst is None or rel in self.written:
            return
        out = self.out_path(rel)
        if self.writer is not None:
            self.writer.put(out, data, rel)
        else:
            write_new(out, data, rel)
