"""The files records rewritten from their bytes (``files_records.rewrite_bytes``) leave exactly as
the generic path writes them, and nothing else is rewritten that way.

A record of wandb 0.31's shape (num, _info with a stream id, one item with a path) is taken by the
fast path: its bytes are those the generic path gives (parse, ``records.rewrite``, serialize),
and a secret planted in the path's key is scrubbed like anywhere else. A record that differs in
any way (a secret in an unknown field of the item, in a second item, in a field of the record
the shape lacks, an extra field of ``_info``, another field order, a number or length protobuf
would not write, bytes that are not UTF-8, a cut or a tail) is declined, and the generic path
redacts it. Random damage to a record of the shape is either declined or gives the generic bytes.
Each fails if the fast path copies the path, or takes a record it does not fully understand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path

import pytest
from redact_helpers import protobuf_field, protobuf_varint
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.redact import files_records, placeholders
from tfwb_agent.redact.console_records import Console
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.records import rewrite
from tfwb_agent.redact.redaction import Redaction
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import LogWriter

SECRET = b"files-records-test-secret-0123456789"
TOKEN = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"     # a GitHub token's shape
PLAIN = "media/images/samples/ct_0_" + "0" * 20 + ".png"
SECRET_KEY = f"media/images/{TOKEN}_3_" + "a" * 20 + ".png"
# Its key's parts are site patterns: scrubbed into markers, its new name's lengths take two bytes.
LONG = "media/images/" + "P1234/" * 10 + "k_2_" + "d" * 20 + ".png"
POLICY = dataclasses.replace(DEFAULT_POLICY, patterns=(r"\bP\d{4}\b",))
PATHS = [PLAIN, SECRET_KEY, "media/images/samples/mask_7_" + "b" * 20 + ".png", LONG,
         "media/images/gone_1_" + "c" * 20 + ".png", f"{TOKEN}.txt", "requirements.txt"]


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return protobuf_field(number, payload, wire)


def wandb_shape(num: int, path: str, stream: str = "y3gnkxwr") -> bytes:
    """A files record as wandb 0.31 writes it: num, _info, files (not protobuf's field order)."""
    return (_field(1, 0, protobuf_varint(num)) + _field(200, 2, _field(1, 2, stream.encode()))
            + _field(6, 2, _field(1, 2, _field(1, 2, path.encode()))))


def make_run(base: Path) -> Path:
    run = base / "offline-run-20260101_000000-filesrec"
    images = run / "files" / "media" / "images"
    (images / "samples").mkdir(parents=True)
    (run / "files" / LONG).parent.mkdir(parents=True)
    for p in PATHS[:4]:
        (run / "files" / p).write_bytes(placeholders.image_png(4, 4, hashlib.sha256(p.encode()).hexdigest()))
    (run / "files" / f"{TOKEN}.txt").write_text("notes\n")
    (run / "files" / "requirements.txt").write_text("numpy\n")
    return run


def redaction(run: Path) -> Redaction:
    return Redaction(run, None, POLICY, SECRET, Path)


def generic(r: Redaction, payload: bytes) -> bytes | None:
    out = rewrite(r, pb.Record.FromString(payload), Console(r))
    return out[0].SerializeToString() if out else None


# A field of another record type after the files record's: protobuf then reads an alert.
ALERT = pb.Record(alert=pb.AlertRecord(title="job failed", text=TOKEN)).SerializeToString()


def _parses(payload: bytes) -> bool:
    try:
        pb.Record.FromString(payload)
    except Exception:  # protobuf's DecodeError
        return False
    return True


def declined(payload: bytes) -> list[bytes]:
    """Records near the shape that the fast path must leave to the generic path."""
    item = _field(1, 2, PLAIN.encode())
    info = _field(200, 2, _field(1, 2, b"y3gnkxwr"))
    files = lambda *items: _field(6, 2, b"".join(_field(1, 2, i) for i in items))  # noqa: E731
    return [
        b"\x08\x05" + info + files(item + _field(15, 2, TOKEN.encode())),           # unknown field of the item
        b"\x08\x05" + info + files(item, _field(1, 2, SECRET_KEY.encode())),         # a second item
        b"\x08\x05" + info + files(item) + ALERT,                                     # another record type too
        b"\x08\x05" + info + files(item) + _field(9000, 2, TOKEN.encode()),          # unknown record field
        b"\x08\x05" + info + files(item + _field(3, 0, b"\x01")),                    # the item's type set
        # (_info is structural whole on the generic path too: an extra field of it, not a secret)
        b"\x08\x05" + _field(200, 2, _field(1, 2, b"y3gnkxwr") + _field(100, 2, b"trace-1")) + files(item),
        b"\x08\x05" + files(item) + info,                                            # protobuf's own order
        info + files(item),                                                          # no num
        b"\x08\x00" + info + files(item),                                            # num 0 written
        b"\x08\x85\x00" + info + files(item),                                        # num not minimal
        b"\x08\x05" + info + files(_field(1, 2, b"media/images/\xff_0_" + b"0" * 20 + b".png")),
        b"\x08\x05" + _field(200, 2, _field(1, 2, b"\xc3")) + files(item),           # stream id not UTF-8
        b"\x08\x05" + info + files(_field(1, 2, b"")),                               # empty path
        payload[:-1], payload + b"\x00", payload + ALERT,
    ]


def test_the_wandb_shape_leaves_as_the_generic_path_writes_it(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    fast_r, slow_r = redaction(run), redaction(run)
    for num, path in enumerate(PATHS, start=1):
        payload = wandb_shape(num * 1000, path)
        fast = files_records.rewrite_bytes(fast_r, payload)
        assert fast is not False, path                      # the shape: taken by the fast path
        assert fast == generic(slow_r, payload), path
        assert fast is None or TOKEN.encode() not in fast, path
        assert (fast is not None and len(fast) > 130) == (path == LONG), path
    assert fast_r.report.to_dict() == slow_r.report.to_dict()
    # The planted key was scrubbed (a marker in the new name), and the token's own file dropped.
    new = files_records.rewrite_bytes(redaction(run), wandb_shape(9, SECRET_KEY))
    assert new and TOKEN.encode() not in new and b"redacted-" in new
    assert files_records.rewrite_bytes(redaction(run), wandb_shape(9, f"{TOKEN}.txt")) is None


def test_any_other_shape_is_declined_and_redacted_by_the_generic_path(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for i, payload in enumerate(declined(wandb_shape(5, PLAIN))):
        assert files_records.rewrite_bytes(redaction(run), payload) is False, i


def test_a_run_redacts_to_the_same_bytes_with_and_without_the_fast_path(tmp_path: Path, monkeypatch) -> None:
    run = make_run(tmp_path / "src")
    payloads = [wandb_shape(n + 1, p) for n, p in enumerate(PATHS)] + [
        p for p in declined(wandb_shape(50, PLAIN)) if _parses(p)]   # (one that does not fails the run)
    with open(run / "run-filesrec.wandb", "wb") as f:
        w = LogWriter(f)
        for p in payloads:
            w.write(p)
    outs = {}
    for enabled in (True, False):
        monkeypatch.setattr(files_records, "ENABLED", enabled)
        dst = tmp_path / f"out-{enabled}" / run.name
        report = redact_run(run, dst, POLICY, SECRET, Path)
        log = (dst / "run-filesrec.wandb").read_bytes()
        assert TOKEN.encode() not in log
        assert not any(TOKEN in p.name for p in dst.rglob("*"))
        outs[enabled] = (log, report.to_dict())
    assert outs[True] == outs[False]
    assert outs[True][1]["records"]["out"] < len(payloads)      # the token's file is dropped


@pytest.mark.parametrize("seed", range(4))
def test_damage_to_the_shape_is_declined_or_redacted_alike(tmp_path: Path, seed: int) -> None:
    run = make_run(tmp_path)
    rng = random.Random(seed)
    base = wandb_shape(rng.randrange(1, 1 << 40), rng.choice(PATHS[:4]))
    for _ in range(400):
        p = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            op, at = rng.randrange(3), rng.randrange(len(p))
            if op == 0:
                p[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                p.insert(at, rng.randrange(256))
            else:
                del p[at]
        p = bytes(p)
        fast = _outcome(files_records.rewrite_bytes, p, run)
        if fast is False:
            continue
        # Taken: then protobuf reads it as a files record, and the generic path agrees (a path
        # with a NUL in it fails both alike: the run is malformed).
        assert fast == _outcome(generic, p, run), p


def _outcome(f, p: bytes, run: Path):
    try:
        return f(redaction(run), p)
    except ValueError as exc:
        return type(exc)
