"""Canary runs for the redaction tests: write them with real wandb, find canaries in any byte.

``tests/writers/canary_run.py`` plants a unique canary per placement and lists them in
``canaries.json``. Here:

- ``write_canary_runs`` runs it under both wandb clients (0.31 with this interpreter, 0.15.12
  in the TF 2.13 venv), each in its own UTS namespace with a canary host name when we are
  root, on a volume whose path holds a canary too; both at once, once per session
  (``session_runs`` shares them with every test module and xdist worker).
- ``Canaries`` turns the listed placements into what to look for: each secret as is, JSON- and
  URL-escaped, base64'd at every alignment, and any 12-character piece of a long one (a secret
  cut in two by the writer or the redactor still leaks by halves); patient ids as whole words.
- ``scan_tree`` looks through every file of a directory, its relative path included, and
  inside what it can open: the records of `.wandb` logs (a record that spans two 32 KiB blocks
  is split by a chunk header on disk), gzip, zstd, zip and tar members.

A hit names the placement, the file and the form it was found in; it never shows more of the
secret than the canary itself (they are random per run, not real secrets).
"""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import tarfile
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "tests" / "writers" / "canary_run.py"
# Patient ids and e-mail addresses. The e-mail pattern is anchored at the start of its word: the
# usual unanchored one ([A-Za-z0-9._%+-]+@...) costs Python's re time quadratic in the length of a
# run of word characters, and a 40 KB console line then takes the scrubber ~10 s.
SITE_PATTERNS = [r"P\d{4}", r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)+"]
FRAGMENT = 12          # a piece of a secret this long is a leak
_TOKEN_RUN = re.compile(rb"[A-Za-z0-9+/_=.-]{%d,}" % FRAGMENT)

# The placements of issue 12 each run must carry (else the test would pass for nothing).
REQUIRED = {
    "1": ["history_string", "history_nested_string", "summary_string_bearer", "summary_nested_url_credentials"],
    "2": ["file_in_run_dir_text", "file_in_run_dir_binary"],
    "3": ["console_print_args", "console_token_two_writes", "console_pem_line_by_line"],
    "4": ["args_password_two_arg", "args_api_key_two_arg"],
    "5": ["history_key_patient_id", "media_key_patient_id", "history_key_email", "history_key_secret"],
    "6": ["config_nested_bare_wandb_key", "config_list_bare_aws_secret", "summary_openai_key",
          "config_slack_token", "config_bearer_header"],
    "7": ["tb_text_summary", "tb_tag_name", "tb_logdir_path"],
    "8": ["artifact_description", "artifact_metadata_nested", "artifact_alias", "artifact_reference_uri_credentials"],
    "9": ["work_path"],
}


@dataclass(frozen=True)
class Hit:
    placement: str
    where: str          # file (relative) and, inside it, the member or record
    form: str           # raw, json, url, base64, fragment, name
    run: str = ""       # the writer that planted it

    def __str__(self) -> str:
        return f"{self.placement} ({self.run}): in {self.where} ({self.form})"


@dataclass
class Canary:
    placement: str
    shape: str
    issue: str
    policy: str               # default | site
    needles: list[str]
    run: str = ""             # which writer planted it ("" for the test's own)


@dataclass
class CanaryRun:
    label: str                # tf221-wandb031 | py38-tf213-wandb015
    root: Path                # the writer's volume root
    run_dir: Path
    run_id: str
    data: dict
    canaries: list[Canary] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, dict[int, float]]:
        return {k: {int(s): v for s, v in vals.items()} for k, vals in self.data["metrics"].items()}


# --------------------------------------------------------------------------------------------
# writing the runs
# --------------------------------------------------------------------------------------------

def _writer_env(home: Path, host: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "TFWB_RUN_ID"}
    user = "cnry" + rnd(10)         # getpass (what wandb records as the user name) reads LOGNAME first
    # wandb 0.15 writes ``debug-cli.<user>.log`` in the temporary directory: the canary user's
    # name would be left in the machine's /tmp, one file per suite run.
    (home / "tmp").mkdir(exist_ok=True)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", HOME=str(home),
               LOGNAME=user, USER=user, TMPDIR=str(home / "tmp"))
    if host:
        env["CANARY_HOST"] = host
    return env


def _can_set_hostname() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname cnrytest && hostname"], capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip() == "cnrytest"


def rnd(n: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def write_canary_runs(base: Path, pythons: list[tuple[str, str]], timeout: float = 240) -> list[CanaryRun]:
    """One canary run per (label, python), written at the same time; each on its own volume
    ``base/<label>/vol-<canary>``."""
    hostnames = _can_set_hostname()
    procs = []
    for label, python in pythons:
        vol = base / label / ("vol-" + rnd(22))
        vol.mkdir(parents=True)
        home = base / label / "home"
        home.mkdir()
        host = ("cnry" + rnd(12)) if hostnames else None
        cmd = [python, str(WRITER), str(vol)]
        if host:
            cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]
        procs.append((label, vol, subprocess.Popen(cmd, env=_writer_env(home, host), cwd=str(vol), text=True,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    runs = []
    for label, vol, p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise AssertionError(f"{label}: canary_run.py exited {p.returncode}\n{err[-4000:]}")
        data = json.loads((vol / "canaries.json").read_text())
        if not hostnames:
            data["skipped"]["hostname"] = "not root (or no unshare): the writer keeps this machine's host name"
        runs.append(_canary_run(label, vol, data))
    return runs


def _canary_run(label: str, vol: Path, data: dict) -> CanaryRun:
    run = CanaryRun(label, vol, Path(data["run_dir"]), data["run_id"], data)
    run.canaries = [Canary(**c, run=label) for c in data["canaries"]]
    run.canaries.append(Canary("volume_path", "path", "paths", "default", [vol.name], run=label))
    return run


def session_runs(tmp_path_factory, pythons: list[tuple[str, str]]) -> tuple[list[CanaryRun], Path]:
    """The canary runs, written once per pytest session whichever module (and xdist worker) asks
    first, plus a pristine copy of their volumes (tests that rename or delete the originals use
    theirs). Only tests/test_redact_canaries.py touches the originals, on one worker (its
    xdist group)."""
    from conftest import built_once

    def build(base: Path) -> dict:
        if not pythons:
            raise AssertionError("session_runs: the canary runs are not written yet and no interpreters were given")
        runs = write_canary_runs(base / "volumes", pythons)
        for r in runs:
            shutil.copytree(r.root, base / "pristine" / r.label / r.root.name, symlinks=True)
        return {"pristine": str(base / "pristine"),
                "runs": [{"label": r.label, "root": str(r.root), "data": r.data} for r in runs]}

    made = built_once(tmp_path_factory, "canary-runs", build)
    return [_canary_run(r["label"], Path(r["root"]), r["data"]) for r in made["runs"]], Path(made["pristine"])


# --------------------------------------------------------------------------------------------
# what to look for
# --------------------------------------------------------------------------------------------

def _b64_cores(s: bytes) -> list[bytes]:
    """The part of base64(s) that does not depend on the bytes around s, at each alignment."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + s + b"\0\0\0")
        skip = -(-4 * k // 3) + 1
        core = enc[skip: skip + (4 * len(s)) // 3 - 4]
        if len(core) >= 12:
            out += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return out


class Canaries:
    """The needles of some canaries, and a scanner over bytes."""

    def __init__(self, canaries: Iterable[Canary]) -> None:
        self.canaries = list(canaries)
        self.exact: list[tuple[bytes, Canary, str]] = []          # (bytes, canary, form)
        self.words: list[tuple[re.Pattern[bytes], Canary]] = []   # short site data, as whole words
        self.fragments: dict[bytes, Canary] = {}
        for c in self.canaries:
            for n in c.needles:
                nb = n.encode()
                if c.shape in ("pid",):
                    self.words.append((re.compile(rb"(?<![A-Za-z0-9])" + re.escape(nb)), c))
                    continue
                forms = {nb: "raw"}
                forms.setdefault(json.dumps(n)[1:-1].encode(), "json")
                forms.setdefault(n.replace("/", "\\/").encode(), "json")
                forms.setdefault(urllib.parse.quote(n, safe="").encode(), "url")
                forms.setdefault(urllib.parse.quote_plus(n).encode(), "url")
                for core in _b64_cores(nb):
                    forms.setdefault(core, "base64")
                for b, form in forms.items():
                    self.exact.append((b, c, form))
                if len(nb) >= 20 and _TOKEN_RUN.fullmatch(nb):
                    for i in range(len(nb) - FRAGMENT + 1):
                        self.fragments.setdefault(nb[i:i + FRAGMENT], c)

    def placements(self) -> list[str]:
        return [c.placement for c in self.canaries]

    def find(self, data: bytes, where: str) -> set[Hit]:
        hits: set[Hit] = set()
        found_exact: set[int] = set()
        for b, c, form in self.exact:
            if b in data:
                hits.add(Hit(c.placement, where, form, c.run))
                found_exact.add(id(c))
        for rx, c in self.words:
            if rx.search(data):
                hits.add(Hit(c.placement, where, "raw", c.run))
                found_exact.add(id(c))
        if self.fragments:
            for m in _TOKEN_RUN.finditer(data):
                token = m.group()
                for i in range(len(token) - FRAGMENT + 1):
                    c = self.fragments.get(token[i:i + FRAGMENT])
                    if c is not None and id(c) not in found_exact:
                        hits.add(Hit(c.placement, where, "fragment", c.run))
        return hits


# --------------------------------------------------------------------------------------------
# scanning a tree
# --------------------------------------------------------------------------------------------

def _expansions(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """What is inside ``data``, one level down: log records, decompressed bytes, members."""
    if data[:4] == b":W&B":
        from tfwb_agent.wandb_log import LogReader
        try:
            with open_bytes(data) as f:
                reader = LogReader(f)
                yield "records", b"\n".join(payload for _, payload in reader)
        except Exception:  # noqa: BLE001 - a torn or odd log: the raw bytes were searched already
            pass
    elif data[:2] == b"\x1f\x8b":
        try:
            yield "gunzip", gzip.decompress(data)
        except (OSError, EOFError):
            pass
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        try:
            yield "unzstd", zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError:
            pass
    elif data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for info in z.infolist():
                    yield f"zip:{info.filename}", info.filename.encode() + b"\n" + z.read(info)
        except (zipfile.BadZipFile, OSError):
            pass
    if len(data) > 512 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t.getmembers():
                    body = t.extractfile(m).read() if m.isfile() else b""
                    yield f"tar:{m.name}", m.name.encode() + b"\n" + (m.linkname or "").encode() + b"\n" + body
        except tarfile.TarError:
            pass


class open_bytes:
    """A real file for ``data`` (LogReader needs fileno)."""

    def __init__(self, data: bytes) -> None:
        import tempfile
        self.f = tempfile.TemporaryFile()
        self.f.write(data)
        self.f.flush()

    def __enter__(self):
        return self.f

    def __exit__(self, *exc) -> None:
        self.f.close()


def scan_bytes(needles: Canaries, data: bytes, where: str, depth: int = 0) -> set[Hit]:
    hits = needles.find(data, where)
    if depth < 3:
        for inner, body in _expansions(where, data):
            hits |= scan_bytes(needles, body, f"{where} > {inner}", depth + 1)
    return hits


def scan_tree(needles: Canaries, root: Path, follow_symlinks: bool = False, label: str = "") -> set[Hit]:
    """Every file under ``root`` (its path relative to ``root`` too) and what it contains."""
    hits: set[Hit] = set()
    root = Path(root)
    prefix = f"{label}:" if label else ""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            for h in needles.find(rel.encode(), f"{prefix}{rel}"):
                hits.add(Hit(h.placement, h.where, "name", h.run))
            if name in filenames and (follow_symlinks or not p.is_symlink()):
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                hits |= scan_bytes(needles, data, f"{prefix}{rel}")
                if p.is_symlink():
                    for h in needles.find(os.readlink(p).encode(), f"{prefix}{rel} (link target)"):
                        hits.add(h)
    return hits


def describe(hits: Iterable[Hit], canaries: Iterable[Canary], limit: int = 4) -> str:
    """One line per leaked placement and writer: its issue-12 path (or kind), where it was found."""
    issue = {c.placement: c.issue for c in canaries}
    grouped: dict[tuple[str, str], list[str]] = {}
    for h in sorted(hits, key=lambda h: (h.placement, h.run, h.where, h.form)):
        grouped.setdefault((h.placement, h.run), []).append(f"{h.where} ({h.form})")
    lines = []
    for (placement, run), wheres in grouped.items():
        more = f" … +{len(wheres) - limit}" if len(wheres) > limit else ""
        lines.append(f"  LEAKED {placement} [issue-12 path {issue.get(placement, '?')}; {run or 'test'}]: "
                     + "; ".join(wheres[:limit]) + more)
    return "\n".join(lines)


def present_in_source(run: CanaryRun) -> set[str]:
    """The placements whose canary the writer's wandb actually wrote where a redactor reads:
    the `.wandb` log and files/ (symlinks followed), and what the records point at outside the
    run (the TensorBoard log dir, the staged artifact files). Not logs/: wandb's debug logs
    never leave, so a canary only there proves nothing."""
    needles = Canaries(run.canaries)
    hits: set[Hit] = set()
    for log in run.run_dir.glob("*.wandb"):
        hits |= scan_bytes(needles, log.read_bytes(), log.name)
    if (run.run_dir / "files").is_dir():
        hits |= scan_tree(needles, run.run_dir / "files", follow_symlinks=True)
    tb = run.data.get("tb_logdir")
    if tb and Path(tb).is_dir():
        hits |= scan_tree(needles, Path(tb))
    staging = run.root / "wandb-data"
    if staging.is_dir():
        hits |= scan_tree(needles, staging)
    return {h.placement for h in hits}
