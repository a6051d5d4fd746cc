"""What a redaction did, in counts and names, never an original value.

The report goes into the bundle's manifest (``to_dict()`` is JSON-able) and is what
``tfwb-agent redact --dry-run`` prints: every file dropped or scrubbed, every record type
dropped, strings scrubbed per place. Rule labels and file kinds are policy-level facts; key,
column and file names appear as the scrubber renamed them; values, captions, local paths and
host names never appear here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class RedactionReport:
    run_id: str = ""
    records_in: int = 0
    records_out: int = 0
    torn_tail: bool = False
    # (rule label, kind, action) -> media items
    media: Counter = field(default_factory=Counter)
    # (history key, action) -> media items
    keys: Counter = field(default_factory=Counter)
    # files under files/: action -> count; bytes in/out
    files: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    # table columns: (key, column, action) -> cells
    columns: Counter = field(default_factory=Counter)
    config_keys: set[str] = field(default_factory=set)        # names of redacted config keys
    metadata_fields: set[str] = field(default_factory=set)    # names of redacted metadata fields
    secrets: Counter = field(default_factory=Counter)         # pattern name -> matches scrubbed
    console: Counter = field(default_factory=Counter)         # lines: kept / scrubbed / dropped
    artifacts: Counter = field(default_factory=Counter)       # rewritten / dropped / kept
    dropped_paths: Counter = field(default_factory=Counter)   # logs/, debug logs, unknown: count
    sensitive_keys: tuple[str, ...] = ()
    strings: Counter = field(default_factory=Counter)         # place -> strings changed by the scrubber
    records_dropped: Counter = field(default_factory=Counter) # record type -> records left out
    unknown_fields: Counter = field(default_factory=Counter)  # record type -> records that lost unknown fields
    console_joined: int = 0                                   # console records merged into whole lines
    file_list: list[tuple[str, str]] = field(default_factory=list)  # (new path, dropped: why | scrubbed)
    # Key and column names leave in the manifest: as the scrubber renamed them (set by the run).
    rename: Callable[[str], str] = field(default=lambda s: s, repr=False, compare=False)

    def count_media(self, rule: str, kind: str, action: str, key: str, n: int = 1) -> None:
        self.media[(rule, kind, action)] += n
        self.keys[(key, action)] += n

    def add_scrub(self, counts: dict[str, int]) -> None:
        self.secrets.update(counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "records": {"in": self.records_in, "out": self.records_out, "torn_tail_cut": self.torn_tail,
                        "dropped_by_type": dict(sorted(self.records_dropped.items())),
                        "unknown_fields_dropped": dict(sorted(self.unknown_fields.items())),
                        "console_pieces_joined": self.console_joined},
            "media_by_rule": [{"rule": r, "kind": k, "action": a, "items": n}
                              for (r, k, a), n in sorted(self.media.items())],
            "media_by_key": [{"key": self.rename(k), "action": a, "items": n} for (k, a), n in sorted(self.keys.items())],
            "files": dict(sorted(self.files.items())),
            "files_dropped_or_scrubbed": [{"path": p, "action": a} for p, a in sorted(self.file_list)],
            "strings_scrubbed": dict(sorted(self.strings.items())),
            "bytes": {"in": self.bytes_in, "out": self.bytes_out},
            "table_columns": [{"key": self.rename(k), "column": self.rename(c), "action": a, "cells": n}
                              for (k, c, a), n in sorted(self.columns.items())],
            "config_keys_redacted": sorted(map(self.rename, self.config_keys)),
            "metadata_fields_redacted": sorted(self.metadata_fields),
            "secrets_scrubbed": dict(sorted(self.secrets.items())),
            "console_lines": dict(sorted(self.console.items())),
            "artifacts": dict(sorted(self.artifacts.items())),
            "not_copied": dict(sorted(self.dropped_paths.items())),
            "sensitive_key_globs": list(map(self.rename, self.sensitive_keys)),
        }
