"""Shared pieces of the redaction tests: the corpus copy, the corpus policy, leak strings."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterator

from tfwb_agent.redact.policy import Policy, parse_policy

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")

# The policy the corpus README describes: hash samples/* images, hash patient_id and drop
# email in the predictions table, scrub secrets and local paths from config, metadata, console.
CORPUS_POLICY_TOML = {
    "secret_env": "TFWB_TEST_UNUSED",
    "console": "scrub",
    "metadata": "redact",
    "config_keys": ["*token*", "*secret*", "*password*", "*api_key*", "data_dir"],
    "patterns": ["hf_[A-Za-z0-9]{30,}"],
    "rule": [
        {"key": "samples/*", "media": ["image"], "action": "hash"},
        {"key": "predictions", "media": ["table"], "columns": {"patient_id": "hash", "email": "drop"}},
    ],
}

# Strings that must never appear in a redacted run (from the corpus README).
LEAK_STRINGS = [
    b"hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
    b"/home/alice/secret",
    b"/data/patients/ct-scans",
    b"/home/alice",
]
LEAK_PATTERNS = [
    re.compile(rb"P\d{4}"),                         # patient ids
    re.compile(rb"person\d*@hospital\.example"),    # e-mail addresses
    re.compile(rb"patient-\d+-\d+"),                # image captions
]


def corpus_policy() -> Policy:
    return parse_policy("test", CORPUS_POLICY_TOML)


def copy_corpus(dst: Path) -> Path:
    """A writable copy of the read-only corpus (symlinks kept as links)."""
    shutil.copytree(CORPUS, dst, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(dst):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
    return dst


def corpus_runs(root: Path) -> list[Path]:
    """The four run directories (not through the latest-run links)."""
    runs = sorted(p for p in root.glob("wandb-*/wandb/offline-run-*") if p.is_dir() and not p.is_symlink())
    assert len(runs) == 4, runs
    return runs


def map_path_for(root: Path) -> Callable[[str], Path]:
    """path_map "/runs" -> the corpus copy, as the agent config would say."""
    def map_path(p: str) -> Path:
        if p == "/runs" or p.startswith("/runs/"):
            return root / p[len("/runs/"):]
        return Path(p)
    return map_path


def all_files(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                yield p


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in all_files(root)}


def png_tag(data: bytes) -> str | None:
    """The tfwb-redacted tag in a placeholder PNG's tEXt chunk."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and body.startswith(b"tfwb-redacted\x00"):
            return body.split(b"\x00", 1)[1].decode()
        pos += 12 + length
    return None


def leaks(data: bytes, extra: list[bytes] = ()) -> list[str]:
    """Which forbidden strings occur in ``data`` (names only, for an assertion message)."""
    found = [s.decode() for s in LEAK_STRINGS + list(extra) if s in data]
    found += [rx.pattern.decode() for rx in LEAK_PATTERNS if rx.search(data)]
    return found


def site_tag(kind: str, value: str) -> str:
    """A stand-in for the site's keyed tag: stable, and different per kind and value."""
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:16]


def default_outgoing(report):
    """The choke point every outgoing string passes through, as the default policy builds it
    (built-in rules, paths scrubbed), counting into ``report``."""
    from tfwb_agent.redact.outgoing import Outgoing
    from tfwb_agent.redact.policy import DEFAULT_POLICY
    from tfwb_agent.redact.secrets import Scrubber, compile_patterns

    return Outgoing(Scrubber(compile_patterns(), site_tag, True), DEFAULT_POLICY, report)


def protobuf_varint(n: int) -> bytes:
    """``n`` as protobuf writes a varint (tests that build records by hand)."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def protobuf_field(number: int, payload: bytes, wire: int = 2) -> bytes:
    """Field ``number``: length-delimited (wire 2, the default) or a varint (wire 0, ``payload``
    its bytes already)."""
    head = protobuf_varint(number << 3 | wire)
    return head + (payload if wire == 0 else protobuf_varint(len(payload)) + payload)


def history_items(run_dir: Path) -> dict[tuple[str, ...], str]:
    """Each history item of a run's log: its key (``(key,)``, or its nested key) -> its
    ``value_json`` (of the last row that has it)."""
    from tfwb_agent.wandb_log import read_records

    items: dict[tuple[str, ...], str] = {}
    for _, rec in read_records(next(run_dir.glob("*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            for it in rec.history.item:
                items[(it.key,) if it.key else tuple(it.nested_key)] = it.value_json
    return items


# The start of a test's run writer (run as ``python -c``): wandb offline and quiet, its own
# directories under ``CANARY_ROOT``; ``root`` and the canaries ``c`` (``CANARY_VALUES``, JSON) set.
WRITER_PREAMBLE = r'''
import json, os, socket, sys
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
root, c = os.environ["CANARY_ROOT"], json.loads(os.environ["CANARY_VALUES"])
for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[k] = os.path.join(root, k.lower())
'''


def write_canary_run(writer: str, root: Path, canaries: dict[str, str]) -> Path:
    """Run ``writer`` (a script that starts with ``WRITER_PREAMBLE``) with real wandb, offline,
    its directories under ``root`` and the ``canaries`` given; the run directory it wrote."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(CANARY_ROOT=str(root), CANARY_VALUES=json.dumps(canaries))
    p = subprocess.run([sys.executable, "-c", writer], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(root))
    assert p.returncode == 0, p.stderr[-3000:]
    return next((root / "wandb").glob("offline-run-*"))
