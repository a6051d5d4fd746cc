"""Receipts: the gateway's signed word on what it imported, delivered or refused, carried back
across the gap so a node learns which of its bundles arrived (format: README, "Receipts").

A receipt is two files: ``tfwb-receipt-<gateway>-<sequence>.json`` and its minisign signature
``.minisig`` (the prehashed Ed25519 form, so the stock ``minisign -V`` checks it too), made with
the gateway's ``keys.receipt_key``. Its trusted comment repeats the gateway, the sequence and the
file name, so neither can be changed without breaking the signature. Each receipt lists every
bundle the gateway knows (receipts are cumulative): a lost receipt costs nothing, the newest
says it all. A node takes only a receipt whose sequence is greater than the last it took from
that gateway key, so an old receipt cannot be replayed to undo what a newer one said.

``build`` and ``check`` are pure; ``write`` and ``read_dir`` are the file edges.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import durable, ids
from .ledger import receipts as lr
from .seal import minisign

FORMAT = "tfwb-receipt"
FORMAT_VERSION = 1
PREFIX = "tfwb-receipt-"
SUFFIX = ".json"
SIG_SUFFIX = ".minisig"
MAX_BYTES = 64 << 20  # a receipt bigger than this is not read (a million bundles fit)
STATUSES = ("imported", "delivered", "refused")
_COMMENT = re.compile(r"^tfwb-receipt v(\d+) gateway=(\S+) sequence=(\d+) file=(\S+)$")


class ReceiptError(Exception):
    """A receipt that is not taken; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


REASONS = {
    "untrusted": "signed by a key that is not among keys.trusted_gateways",
    "bad_signature": "the signature does not match the receipt (altered, or damaged)",
    "malformed": "not a receipt this agent can read",
    "replay": "not newer than the last receipt taken from this gateway",
}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def file_name(gateway: str, sequence: int) -> str:
    return f"{PREFIX}{ids.check('gateway name', gateway)}-{int(sequence):012d}{SUFFIX}"


def trusted_comment(gateway: str, sequence: int, name: str) -> str:
    return f"tfwb-receipt v{FORMAT_VERSION} gateway={gateway} sequence={sequence} file={name}"


# --- the gateway ----------------------------------------------------------------------------

def build(gateway: str, key_id: str, sequence: int, now: float, facts: dict[str, list[dict[str, Any]]]) -> dict:
    """The receipt document from the gateway ledger's facts (``ledger.receipts.gateway_facts``).
    One entry per bundle id: delivered (some target confirmed its content) over imported over
    refused."""
    entries: dict[str, dict[str, Any]] = {}
    for r in facts["refused"]:
        unverified = r["bundle_id"].startswith("unverified-")  # its signature was never good: ids unknown
        reason, _, detail = (r["reason"] or "").partition(": ")
        entries[r["bundle_id"]] = {
            "bundle_id": None if unverified else r["bundle_id"], "name": r["name"],
            "content_id": r["content_id"] or None, "run_id": r["run_id"] or None,
            "segment": r["segment"] if r["segment"] is not None and r["segment"] >= 0 else None,
            "status": "refused", "reason": reason or None, "detail": detail or None,
            "at": _iso(r["created"]), "targets": []}
    confirmed: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for d in facts["confirmed"]:
        confirmed.setdefault((d["run_id"], d["segment"], d["content_id"]), []).append(
            {"target": d["target"], "confirmed_at": _iso(d["confirmed_at"]) if d["confirmed_at"] else None})
    for i in facts["imports"]:
        targets = confirmed.get((i["run_id"], i["segment"], i["content_id"]), [])
        entries[i["bundle_id"]] = {
            "bundle_id": i["bundle_id"], "name": None, "content_id": i["content_id"], "run_id": i["run_id"],
            "segment": i["segment"], "status": "delivered" if targets else "imported", "reason": None,
            "detail": None, "signer": i["signer"], "at": _iso(i["imported_at"]), "targets": targets}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "gateway": gateway, "gateway_key_id": key_id,
            "sequence": sequence, "created": _iso(now),
            "bundles": sorted(entries.values(), key=lambda e: (e["bundle_id"] or "", e["name"] or ""))}


def write(dest: Path, doc: dict[str, Any], key: minisign.SecretKey) -> Path:
    """Write the receipt and its signature into ``dest``: each under a temporary name, fsynced,
    the signature renamed into place first, so a receipt name never stands without it."""
    name = file_name(doc["gateway"], doc["sequence"])
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    sig = minisign.sign_digest(key, _digest(data), trusted_comment(doc["gateway"], doc["sequence"], name),
                               untrusted_comment="signature from tfwb-agent receipt key")
    final = dest / name
    durable.write_bytes(Path(f"{final}{SIG_SUFFIX}"), sig.to_file().encode())  # durable before the receipt's name
    durable.write_bytes(final, data)
    return final


def _digest(data: bytes) -> bytes:
    h = minisign.new_hash()
    h.update(data)
    return h.digest()


# --- the node -------------------------------------------------------------------------------

@dataclass
class Mark:
    bundle_id: str
    content_id: str
    status: str
    reason: str | None


@dataclass
class Receipt:
    gateway: str
    key_id: str
    sequence: int
    file: str
    entries: list[dict[str, Any]] = field(default_factory=list)


def check(name: str, data: bytes, sig_text: str, trusted: dict[str, minisign.PublicKey]) -> Receipt:
    """Verify one receipt: signed by a trusted gateway key (``trusted``: key id -> key), its
    trusted comment naming this very file, the document agreeing with the comment. Raises
    ``ReceiptError``."""
    try:
        sig = minisign.parse_signature(sig_text)
    except minisign.MinisignError as exc:
        raise ReceiptError("malformed", f"its signature file cannot be read ({exc})") from None
    pub = trusted.get(minisign.format_key_id(sig.key_id))
    if pub is None:
        raise ReceiptError("untrusted", f"signed by key {minisign.format_key_id(sig.key_id)}, which is not among "
                                        "keys.trusted_gateways")
    try:
        minisign.verify_digest(pub, sig, _digest(data))
    except minisign.BadSignature as exc:
        raise ReceiptError("bad_signature", str(exc)) from None
    m = _COMMENT.match(sig.trusted_comment)
    if not m or int(m.group(1)) != FORMAT_VERSION:
        raise ReceiptError("malformed", f"its signed comment is not a receipt's: {sig.trusted_comment!r}")
    gateway, sequence, signed_name = m.group(2), int(m.group(3)), m.group(4)
    if signed_name != name:
        raise ReceiptError("malformed", f"it was signed as {signed_name}, not {name}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ReceiptError("malformed", "not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ReceiptError("malformed", f"not a {FORMAT} v{FORMAT_VERSION} document")
    if doc.get("gateway") != gateway or doc.get("sequence") != sequence:
        raise ReceiptError("malformed", "its gateway or sequence differs from what its signature says")
    if not isinstance(doc.get("bundles"), list):
        raise ReceiptError("malformed", "no bundles list")
    return Receipt(gateway, pub.key_id_hex, sequence, name, [e for e in doc["bundles"] if isinstance(e, dict)])


def marks(receipt: Receipt, own: dict[str, str]) -> tuple[list[Mark], dict[str, int]]:
    """The entries that speak of this node's bundles (``own``: bundle id -> content id) as
    marks, and counts of those ignored: ``foreign`` (a bundle id this node never sealed, or
    not a plain id), ``mismatch`` (this node's bundle id with other content), ``unknown_status``."""
    out: list[Mark] = []
    ignored = {"foreign": 0, "mismatch": 0, "unknown_status": 0}
    for e in receipt.entries:
        bid, cid, status = e.get("bundle_id"), e.get("content_id"), e.get("status")
        if not isinstance(bid, str) or ids.why_not(bid) or bid not in own:
            ignored["foreign"] += 1
        elif cid != own[bid]:
            ignored["mismatch"] += 1
        elif status not in STATUSES:
            ignored["unknown_status"] += 1
        else:
            reason = e.get("reason") if isinstance(e.get("reason"), str) else None
            detail = e.get("detail") if isinstance(e.get("detail"), str) else None
            out.append(Mark(bid, cid, status, f"{reason}: {detail}" if reason and detail else reason))
    return out, ignored


@dataclass
class Found:
    """One receipt file in a directory: its name, bytes and signature text (or why not read)."""
    name: str
    data: bytes = b""
    sig_text: str = ""
    problem: str | None = None


def read_dir(directory: Path) -> list[Found]:
    """Every ``tfwb-receipt-*.json`` in ``directory`` (not following links), with its signature."""
    out = []
    for p in sorted(directory.iterdir()):
        if not (p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)):
            continue
        f = Found(p.name)
        try:
            if p.is_symlink() or not p.is_file():
                raise OSError(0, "not a regular file")
            if p.stat().st_size > MAX_BYTES:
                raise OSError(0, f"larger than {MAX_BYTES} bytes")
            f.data = p.read_bytes()
            f.sig_text = Path(f"{p}{SIG_SUFFIX}").read_text(errors="replace")
        except OSError as exc:
            f.problem = f"cannot read it or its {SIG_SUFFIX} ({exc.strerror or exc})"
        out.append(f)
    return out


@dataclass
class ImportOutcome:
    file: str
    status: str  # applied | refused | superseded
    reason: str | None = None
    detail: str | None = None
    gateway: str | None = None
    sequence: int | None = None
    marked: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    runs_delivered: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


# --- the shell: issuing and taking receipts against a ledger --------------------------------

def issue(cfg: Any, ledger: Any, dest: Path, key: minisign.SecretKey) -> tuple[Path, dict[str, Any]]:
    """Write the gateway's next receipt into ``dest``; returns its path and document."""
    if not dest.is_dir():
        raise ReceiptError("malformed", f"{dest} is not a directory (is the medium mounted?)")
    lr.ensure_receipt_tables(ledger)
    now = time.time()
    seq = lr.reserve_sequence(ledger, now)
    doc = build(cfg.node_name, key.public().key_id_hex, seq, now, lr.gateway_facts(ledger))
    path = write(dest, doc, key)
    lr.record_issued(ledger, seq, path.name, len(doc["bundles"]))
    return path, doc


def take(ledger: Any, directory: Path, trusted: dict[str, minisign.PublicKey]) -> list[ImportOutcome]:
    """Verify every receipt in ``directory``; of each gateway's, apply the newest if it is newer
    than the last taken (older ones beside it are ``superseded``: the newest says it all)."""
    lr.ensure_receipt_tables(ledger)
    outcomes: list[ImportOutcome] = []
    good: list[tuple[Receipt, ImportOutcome]] = []
    for f in read_dir(directory):
        o = ImportOutcome(f.name, "refused")
        outcomes.append(o)
        try:
            if f.problem:
                raise ReceiptError("malformed", f.problem)
            r = check(f.name, f.data, f.sig_text, trusted)
        except ReceiptError as exc:
            o.status, o.reason, o.detail = "refused", exc.reason, exc.detail
            continue
        o.gateway, o.sequence = r.gateway, r.sequence
        good.append((r, o))
    newest: dict[str, int] = {}
    for r, _ in good:
        newest[r.key_id] = max(newest.get(r.key_id, r.sequence), r.sequence)
    for r, o in good:
        if r.sequence < newest[r.key_id]:
            o.status, o.detail = "superseded", f"sequence {newest[r.key_id]} of the same gateway is beside it"
            continue
        last = lr.last_sequence(ledger, r.key_id)
        if last is not None and r.sequence <= last:
            o.status, o.reason = "refused", "replay"
            o.detail = f"sequence {r.sequence}; the last receipt taken from {r.gateway} ({r.key_id}) was {last}"
            continue
        own = lr.own_bundles(ledger, [e["bundle_id"] for e in r.entries if isinstance(e.get("bundle_id"), str)])
        ms, o.ignored = marks(r, own)
        try:
            o.runs_delivered = lr.apply_receipt(
                ledger, gateway=r.gateway, gateway_key_id=r.key_id, sequence=r.sequence, file=r.file,
                marks=[(m.bundle_id, m.content_id, m.status, m.reason) for m in ms], now=time.time())
        except lr.StaleReceipt as exc:
            o.status, o.reason, o.detail = "refused", "replay", f"sequence {r.sequence}; {exc}"
            continue
        o.status = "applied"
        for m in ms:
            o.marked[m.status] = o.marked.get(m.status, 0) + 1
    return outcomes
