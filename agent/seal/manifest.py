"""The bundle manifest: what a bundle holds, as plain data. Pure functions only.

``MANIFEST.json`` is the first tar member. Its ``content_id`` is a SHA-256 over what the
bundle carries (run identity, segment and byte range, every member's name, size and SHA-256),
and over nothing that changes from one sealing to the next (bundle id, time, node, redaction
report), so sealing the same content again gives the same content id and delivery can tell.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .. import ids

FORMAT = "tfwb-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_MAX = 16 << 20  # a manifest larger than this is refused before parsing
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(Exception):
    pass


class BadIdentifier(ManifestError):
    """An id in the manifest that is not a plain name (``ids``): it would be used as a path."""


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    project: str | None = None
    entity: str | None = None
    wandb_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "project": self.project, "entity": self.entity,
                "wandb_version": self.wandb_version}


@dataclass(frozen=True)
class Member:
    name: str      # the path inside the tar
    size: int
    sha256: str    # hex
    stored: bool = False  # already compressed: stored, not recompressed

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Segment:
    number: int = 0
    byte_start: int = 0
    byte_end: int | None = None  # None: to the end of the .wandb file as sealed

    def as_dict(self, log_size: int | None) -> dict[str, Any]:
        end = self.byte_end if self.byte_end is not None else log_size
        return {"number": self.number, "byte_start": self.byte_start, "byte_end": end}


def check_member_name(name: str) -> str | None:
    """Why ``name`` may not be extracted, or None if it is a plain relative path."""
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    if "\\" in name or "\0" in name:
        return "backslash or NUL in name"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in path"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def content_id(run: RunIdentity, segment: Mapping[str, Any], members: Sequence[Member]) -> str:
    body = {
        "format_version": FORMAT_VERSION,
        "run": run.as_dict(),
        "segment": dict(segment),
        "members": sorted((m.name, m.size, m.sha256) for m in members),
    }
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build(*, bundle_id: str, run: RunIdentity, run_dir_name: str, segment: Segment, log_name: str | None,
          log_size: int | None, members: Sequence[Member], skipped: Sequence[Mapping[str, str]],
          redaction: Mapping[str, Any], source_node: str, node_key_id: str, created: str,
          agent_version: str, log_facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest. ``log_facts``: what delivery needs to know of the log before sending it
    (``segments.sealed_facts``), kept so that it need not fold the log again; outside the
    content id (they follow from the log it covers)."""
    seg = segment.as_dict(log_size)
    cid = content_id(run, seg, members)  # before "log": the id covers the range, not a file name
    seg["log"] = log_name
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "content_id": cid,
        "run": run.as_dict(),
        "run_dir": run_dir_name,
        "segment": seg,
        "members": [m.as_dict() for m in members],
        "skipped": [dict(s) for s in skipped],
        "redaction": dict(redaction),
        "source_node": source_node,
        "node_key_id": node_key_id,
        "created": created,
        "agent_version": agent_version,
        **({"log_facts": dict(log_facts)} if log_facts is not None else {}),
    }


def encode(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"


def parse(data: bytes) -> dict[str, Any]:
    """Parse and check a manifest read from a bundle; raise ``ManifestError`` saying why not."""
    try:
        m = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"MANIFEST.json is not JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ManifestError("MANIFEST.json is not a tfwb bundle manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"manifest format version {m.get('format_version')!r} is not {FORMAT_VERSION}")
    for key in ("bundle_id", "content_id", "run_dir"):
        if not isinstance(m.get(key), str):
            raise ManifestError(f"manifest: {key} missing")
    run = m.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
        raise ManifestError("manifest: run.run_id missing")
    try:
        ids.check("bundle id", m["bundle_id"])
        ids.check("run id", run["run_id"])
        ids.check("run directory", m["run_dir"])
        ids.check_content_id(m["content_id"])
    except ids.BadId as exc:
        raise BadIdentifier(f"manifest: {exc}") from None
    seg = m.get("segment")
    if not isinstance(seg, dict) or not isinstance(seg.get("number"), int) or seg["number"] < 0:
        raise ManifestError("manifest: segment.number missing")
    members = m.get("members")
    if not isinstance(members, list):
        raise ManifestError("manifest: members missing")
    seen: set[str] = set()
    for e in members:
        if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("size"), int)
                and e["size"] >= 0 and isinstance(e.get("sha256"), str) and _HEX64.match(e["sha256"])):
            raise ManifestError(f"manifest: malformed member entry {str(e)[:200]}")
        why = check_member_name(e["name"])
        if why or e["name"] == MANIFEST_NAME:
            raise ManifestError(f"manifest: member {e['name']!r} is not allowed ({why or 'reserved name'})")
        if e["name"] in seen:
            raise ManifestError(f"manifest: member {e['name']!r} listed twice")
        seen.add(e["name"])
    ident = RunIdentity(run["run_id"], run.get("project"), run.get("entity"), run.get("wandb_version"))
    recomputed = content_id(ident, {k: v for k, v in seg.items() if k != "log"},
                            [Member(e["name"], e["size"], e["sha256"]) for e in members])
    if recomputed != m["content_id"]:
        raise ManifestError("manifest: content_id does not match its members")
    return m


@dataclass(frozen=True)
class SignedFacts:
    """What the signature's trusted comment says about the bundle (signed, readable without
    the age identity): lets the outbox adopt a whole bundle after a crash, and binds the
    outer signature to the inner manifest."""
    bundle_id: str
    content_id: str
    run_id: str
    segment: int
    extra: dict[str, Any] = field(default_factory=dict)

    PREFIX = "tfwb:"

    def trusted_comment(self, timestamp: int, file_name: str) -> str:
        body = canonical({"bundle_id": self.bundle_id, "content_id": self.content_id,
                          "run_id": self.run_id, "segment": self.segment, **self.extra}).decode()
        return f"timestamp:{timestamp} file:{file_name} {self.PREFIX}{body}"

    @classmethod
    def from_comment(cls, comment: str) -> "SignedFacts | None":
        i = comment.find(" " + cls.PREFIX)
        if i < 0:
            return None
        try:
            d = json.loads(comment[i + 1 + len(cls.PREFIX):])
            facts = cls(d.pop("bundle_id"), d.pop("content_id"), d.pop("run_id"), int(d.pop("segment")), d)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return facts
