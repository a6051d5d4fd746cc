"""How ``Outgoing`` reads each string field of a protobuf message: never (a structural
identifier), as a name, a path, JSON or text; and which fields lead to more strings. Decided
once per message type from its descriptor, so a field a new wandb adds is read as text without
anyone listing it.
"""
from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

# JSON with no string in it: numbers, true/false/null, NaN and Infinity (as wandb writes them),
# and lists of them. A value_json with no '"' that is anything else (``[P7126 ghp_…``, not JSON
# at all) is text, and is scrubbed as text.
NO_TEXT_JSON = re.compile(r"[-+0-9.eE]++|(?:[-+0-9.eE,\[\] \t\r\n]|true|false|null|NaN|Infinity)*")

# (message name, string field) -> never scrubbed: identifiers and wandb's own bookkeeping. Only
# string fields, by name: a message-typed field listed here would let every string a later wandb
# adds to that message leave unread (tests/test_redact_fail_closed.py checks).
STRUCTURAL = frozenset({
    ("Record", "uuid"), ("_RecordInfo", "stream_id"), ("_RecordInfo", "_tracelog_id"),
    ("Control", "relay_id"), ("Control", "mailbox_slot"), ("Control", "connection_id"),
    ("RunRecord", "run_id"), ("RunRecord", "entity"), ("RunRecord", "project"),
    ("RunRecord", "storage_id"), ("RunRecord", "sweep_id"),
    ("ArtifactRecord", "run_id"), ("ArtifactRecord", "project"), ("ArtifactRecord", "entity"),
    ("ArtifactRecord", "digest"), ("ArtifactRecord", "distributed_id"), ("ArtifactRecord", "client_id"),
    ("ArtifactRecord", "sequence_client_id"), ("ArtifactRecord", "base_id"),
    ("ArtifactRecord", "digest_algorithm"), ("ArtifactRecord", "type"),
    ("ArtifactManifest", "storage_policy"), ("ArtifactManifestEntry", "digest"),
    ("ArtifactManifestEntry", "birth_artifact_id"), ("ArtifactManifestEntry", "local_path"),
    ("ArtifactManifestEntry", "mimetype"),
    ("VersionInfo", "producer"), ("VersionInfo", "min_consumer"),
    ("TelemetryRecord", "python_version"), ("TelemetryRecord", "cli_version"),
    ("TelemetryRecord", "core_version"), ("TelemetryRecord", "platform"),
    ("EnvironmentRecord", "writer_id"),
})
# A git commit id: what the dashboard links to. To the token rules it looks like a W&B API key.
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# (message name, string field) -> (the one shape its value has, what stands in for another):
# not scrubbed as text, but not taken on trust either. A value of that shape leaves as it is; any
# other (a CI job's token exported as WANDB_GIT_COMMIT) is replaced whole and counted.
SHAPED: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("GitRepoRecord", "commit"): (COMMIT, ""), ("GitInfo", "commit"): (COMMIT, ""),
    ("AlertRecord", "level"): (re.compile(r"INFO|WARN|ERROR"), "INFO"),   # wandb.AlertLevel's values
}
# (message name, field) -> how the string is read. Anything not listed is text.
NAMES = frozenset({
    ("HistoryItem", "key"), ("HistoryItem", "nested_key"), ("SummaryItem", "key"), ("SummaryItem", "nested_key"),
    ("ConfigItem", "key"), ("ConfigItem", "nested_key"), ("StatsItem", "key"), ("SettingsItem", "key"),
    ("ExtraItem", "key"), ("StoragePolicyConfigItem", "key"), ("FilesItem", "path"),
    ("MetricRecord", "name"), ("MetricRecord", "glob_name"), ("MetricRecord", "step_metric"),
    ("ArtifactManifestEntry", "path"),
    # W&B takes no ":" or "/" in an artifact's alias, nor "/" in its name: a secret in them leaves
    # as a marker that is itself a name (``redacted-…``), not as text's ``[redacted:…]``.
    ("ArtifactRecord", "name"), ("ArtifactRecord", "aliases"), ("ArtifactRecord", "tags"),
    ("UseArtifactRecord", "name"), ("LinkArtifactRequest", "portfolio_name"),
    ("LinkArtifactRequest", "portfolio_aliases"),
})
JSON_FIELDS = frozenset({
    ("HistoryItem", "value_json"), ("HistoryItem", "json"), ("SummaryItem", "value_json"),
    ("ConfigItem", "value_json"), ("StatsItem", "value_json"), ("SettingsItem", "value_json"),
    ("ExtraItem", "value_json"), ("StoragePolicyConfigItem", "value_json"), ("ArtifactRecord", "metadata"),
    ("JobInputRequest", "input_schema"),
})


def _has_strings(d: Any, seen: frozenset = frozenset()) -> bool:
    """Whether a message type can hold a string at any depth (a step number, a timestamp
    cannot: the walk skips them)."""
    hit = _STRINGS.get(d.full_name)
    if hit is None:
        hit = any(f.type == FieldDescriptor.TYPE_STRING or
                  (f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name not in seen
                   and _has_strings(f.message_type, seen | {d.full_name}))
                  for f in d.fields)
        _STRINGS[d.full_name] = hit
    return hit


_STRINGS: dict[str, bool] = {}


def repeated(fd: Any) -> bool:
    # protobuf >= 5.28 has ``is_repeated``; 7 removed ``label``.
    rep = getattr(fd, "is_repeated", None)
    return rep if rep is not None else fd.label == FieldDescriptor.LABEL_REPEATED


# How the walk treats each field of a message type, decided once per type from its
# descriptor (the same decision the walk made field by field): skipped (structural, or a
# type that cannot hold a string), a message, repeated messages, a map, or a string read as
# a name, a path, JSON or text, or held to its shape.
SKIP, MSG, MSGS, MAP, NAME, PATH, JSON, TEXT, SHAPE = (object() for _ in range(9))
_PATHS = frozenset({("FilesItem", "path"), ("ArtifactManifestEntry", "path")})
_PLANS: dict[Any, "_Plan"] = {}


def _field_plan(mname: str, fd: Any) -> object:
    f = (mname, fd.name)
    if f in STRUCTURAL:
        return SKIP
    if f in SHAPED:
        return SHAPE
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if not _has_strings(fd.message_type):
            return SKIP
        if fd.message_type.GetOptions().map_entry:
            return MAP
        return MSGS if repeated(fd) else MSG
    if fd.type == FieldDescriptor.TYPE_STRING:
        if f in NAMES:
            return PATH if f in _PATHS else NAME
        return JSON if f in JSON_FIELDS else TEXT
    return SKIP


class _Plan(dict):
    """Field descriptor -> treatment. A field the descriptor did not list when the plan was
    made (an extension) is planned when first met, the same way."""

    def __init__(self, d: Any) -> None:
        super().__init__((fd, _field_plan(d.name, fd)) for fd in d.fields)
        self.mname = d.name

    def __missing__(self, fd: Any) -> object:
        how = self[fd] = _field_plan(self.mname, fd)
        return how


def field_plan(d: Any) -> _Plan:
    """The plan of message type ``d``, made once."""
    plan = _PLANS.get(d)
    if plan is None:
        plan = _PLANS[d] = _Plan(d)
    return plan


def item_parts(fields: Any) -> tuple[str, Any, str] | None:
    """(key, nested_key or None, value_json) of an item's set fields (``ListFields()``); None if
    it holds anything else: then only the generic walk may handle it."""
    key, nested, raw = "", None, ""
    for fd, value in fields:
        n = fd.name
        if n == "key":
            key = value
        elif n == "nested_key":
            nested = value
        elif n == "value_json":
            raw = value
        else:
            return None
    return key, nested, raw
