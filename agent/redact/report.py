"""What a redaction did, in counts and names, never an original value.

The report goes into the bundle's manifest (``to_dict()`` is JSON-able) and is what
``tfwb-agent redact --dry-run`` prints. Keys, rule labels, config key names and file kinds
are policy-level facts; values, captions, paths and host names never appear here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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

    def count_media(self, rule: str, kind: str, action: str, key: str, n: int = 1) -> None:
        self.media[(rule, kind, action)] += n
        self.keys[(key, action)] += n

    def merge(self, other: "RedactionReport") -> None:
        """Add the file-level counts of a worker's report (see ``run._Run.prepare``)."""
        self.files.update(other.files)
        self.columns.update(other.columns)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out

    def add_scrub(self, counts: dict[str, int]) -> None:
        self.secrets.update(counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "records": {"in": self.records_in, "out": self.records_out, "torn_tail_cut": self.torn_tail},
            "media_by_rule": [{"rule": r, "kind": k, "action": a, "items": n}
                              for (r, k, a), n in sorted(self.media.items())],
            "media_by_key": [{"key": k, "action": a, "items": n} for (k, a), n in sorted(self.keys.items())],
            "files": dict(sorted(self.files.items())),
            "bytes": {"in": self.bytes_in, "out": self.bytes_out},
            "table_columns": [{"key": k, "column": c, "action": a, "cells": n}
                              for (k, c, a), n in sorted(self.columns.items())],
            "config_keys_redacted": sorted(self.config_keys),
            "metadata_fields_redacted": sorted(self.metadata_fields),
            "secrets_scrubbed": dict(sorted(self.secrets.items())),
            "console_lines": dict(sorted(self.console.items())),
            "artifacts": dict(sorted(self.artifacts.items())),
            "not_copied": dict(sorted(self.dropped_paths.items())),
            "sensitive_key_globs": list(self.sensitive_keys),
        }
