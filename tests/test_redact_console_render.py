"""Console text is judged as it is drawn, not only as it was written.

wandb-core runs each console stream through a terminal emulator before the server (and a later
`wandb sync`'s output.log) sees it: a carriage return goes back to column 0 and what follows
overwrites. Readers then drop colour codes and apply a backspace or a cursor-left. Two leaks a
security tester found under the default policy, with real wandb 0.31 offline runs:

1. ``write("x" + key[1:] + "\\r"); write(key[0] + "\\n")``: released at the ``\\r``, each piece was
   scrubbed alone and neither matched; the server draws the whole key. Likewise a key with a
   backspace, ``ESC[2D`` or a colour code inside it.
2. ``print("db password:", end="\\r\\n"); print(pw, end="\\r\\n")``: the key line's ``\\r\\n`` was read
   as an empty last line, so it left without waiting for its value, and ``pw`` left alone.

Here, through ``TextStream`` directly: what it releases, drawn by a small terminal of this test's
own, never shows the key (nor does either half of it stand in the released text), and the
password never leaves; a log cut after any piece redacts to a prefix of the whole log's
redaction; a progress bar (carriage returns, a nested bar's ``ESC[A``, Keras' backspaces) with
no secret comes out exactly as written. End to end: a real wandb 0.31 offline run printing the
same, through ``redact_run`` under the default policy: no byte of the copy holds a key, either
half of one, or the password, and its console, drawn, shows none either.
"""
from __future__ import annotations

import json
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

from tfwb_agent.redact.console import TextStream
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.redaction import Redaction
from tfwb_agent.redact.run import redact_run
from tfwb_agent.wandb_log import read_records

SECRET = b"console-render-test-secret-0123456789"
MIDDLES = {"sgr": "\x1b[31m", "bold": "\x1b[1m", "backspace": "Z\b", "cursor_left": "ZZ\x1b[2D"}


def _key() -> str:
    return secrets.token_hex(20)


def _password() -> str:
    rng = secrets.SystemRandom()
    return "Pw" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(22)) + "7"


def _scrub():
    r = Redaction(Path("/nonexistent"), None, DEFAULT_POLICY, SECRET, Path)
    return lambda s: r.out.text(s, "console")


def _releases(pieces: list[str], close: bool = True) -> list[str]:
    stream = TextStream(_scrub())
    out = [stream.feed(p) for p in pieces]
    return out + [stream.close()] if close else out


def drawn(text: str) -> str:
    """The rows a terminal shows for ``text`` (the test's own, much smaller than the module's):
    \\r, \\n, \\b, ESC[nA / ESC[nB / ESC[nC / ESC[nD; any other escape sequence drawn as nothing."""
    rows, y, x = [""], 0, 0
    for m in re.finditer(r"\x1b\[(\d*)([@-~])|\x1b.?|[\r\n\b]|[^\x1b\r\n\b]+", text, re.S):
        tok = m.group()
        n = int(m.group(1) or 1) if m.group(2) else 0
        if tok == "\r":
            x = 0
        elif tok == "\n":
            y, x = y + 1, 0
        elif tok == "\b":
            x = max(0, x - 1)
        elif m.group(2) == "A":
            y = max(0, y - n)
        elif m.group(2) == "B":
            y += n
        elif m.group(2) == "C":
            x += n
        elif m.group(2) == "D":
            x = max(0, x - n)
        elif not tok.startswith("\x1b"):
            rows += [""] * (y + 1 - len(rows))
            row = rows[y].ljust(x)
            rows[y] = row[:x] + tok + row[x + len(tok):]
            x += len(tok)
    return "\n".join(rows)


def _assert_no_key(out: str, key: str) -> None:
    assert key not in drawn(out), f"the released text, drawn, shows the key: {out!r}"
    for half in (key[:20], key[20:]):
        assert half not in out, f"half of the key left: {out!r}"


# --------------------------------------------------------------------------------------------
# 1. a key assembled by the terminal
# --------------------------------------------------------------------------------------------

def test_a_carriage_return_that_overwrites_into_a_key_does_not_show_it():
    key = _key()
    pieces = ["epoch 1 done\n", "x" + key[1:] + "\r", key[0] + "\n", "epoch 2 done\n"]
    assert key in drawn("".join(pieces))                  # what the server would have shown
    out = "".join(_releases(pieces))
    _assert_no_key(out, key)
    assert out.startswith("epoch 1 done\n") and out.endswith("epoch 2 done\n"), out


@pytest.mark.parametrize("middle", sorted(MIDDLES))
def test_a_key_with_a_colour_code_backspace_or_cursor_left_inside_does_not_show_it(middle):
    key = _key()
    line = key[:20] + MIDDLES[middle] + key[20:] + "\n"
    assert key in drawn(line) and key not in line
    out = "".join(_releases(["step 3\n", line[:9], line[9:], "step 4\n"]))
    _assert_no_key(out, key)
    assert out.startswith("step 3\n") and out.endswith("step 4\n"), out


def test_a_cursor_up_into_a_row_above_does_not_show_a_key():
    """wandb-core's emulator moves up a row on ESC[A: a later line can finish an earlier one."""
    key = _key()
    pieces = ["x" + key[1:] + "\n", "loss 0.5\n", "\x1b[A\x1b[A" + key[0] + "\n", "after\n"]
    assert key in drawn("".join(pieces))
    out = "".join(_releases(pieces))
    assert key not in drawn(out), out
    assert out.endswith("after\n"), out


# --------------------------------------------------------------------------------------------
# 2. a key line ended by \r\n waits for its value
# --------------------------------------------------------------------------------------------

def test_a_password_after_a_key_line_ended_by_crlf_does_not_leave():
    pw = _password()
    # print("db password:", end="\r\n"); print(pw, end="\r\n"): one record per write
    out = "".join(_releases(["db password:", "\r\n", pw, "\r\n", "done", "\r\n"]))
    assert pw not in out, out
    assert out.startswith("db password:") and out.endswith("done\r\n"), out


def test_a_password_after_a_coloured_key_line_does_not_leave():
    pw = _password()
    out = "".join(_releases(["\x1b[1mdb password:\x1b[0m", "\n", pw, "\n", "done\n"]))
    assert pw not in out and pw not in drawn(out), out


# --------------------------------------------------------------------------------------------
# the prefix property, and progress bars
# --------------------------------------------------------------------------------------------

def _bar(n: int, width: int = 20) -> list[str]:
    """tqdm's writes: each update a carriage return and the bar, padded over the last one."""
    return [f"\r{i * 100 // n:3d}%|{'#' * (i * width // n):<{width}}| {i}/{n} [00:0{i % 10}<00:00]" for i in range(n + 1)]


def _nested(outer: int, inner: int) -> list[str]:
    """Two tqdm bars (position 0 and 1): the inner one one row down, then ESC[A back up."""
    out = []
    for i in range(outer):
        out.append(f"\r outer {i}/{outer}")
        for j in range(inner):
            out += ["\n", f"\r inner {j:2d}/{inner} |{'#' * j:<{inner}}|", "\x1b[A"]
    return out + ["\n"]


def _keras(n: int) -> list[str]:
    """Keras' Progbar on a terminal: backspaces over the last line, a carriage return, the line."""
    out, last = [], 0
    for i in range(1, n + 1):
        s = f"{i}/{n} [{'=' * (i * 20 // n):<20}] - ETA: 0s - loss: {1 / i:.4f}"
        out += ["\b" * last, "\r", s]
        last = len(s)
    return out + ["\n"]


def test_a_progress_bar_with_no_secret_comes_out_as_written():
    for pieces in (_bar(300) + ["\n"], _nested(6, 12), _keras(120), ["Epoch 1/3\r\n", *_bar(40), "\r\n"]):
        assert "".join(_releases(pieces)) == "".join(pieces)


def test_the_redaction_of_a_cut_log_is_a_prefix_of_the_whole_logs():
    key, key2, pw = _key(), _key(), _password()
    pieces = ["start\n", *_bar(25), "\n", "x" + key[1:] + "\r", key[0] + "\n", "db password:", "\r\n", pw, "\r\n",
              *_nested(2, 3), key2[:20] + "\x1b[31m", key2[20:] + "\n", *_keras(5), "tail without end"]
    whole = "".join(_releases(pieces))
    for k in (key, key2):
        _assert_no_key(whole, k)
    assert pw not in whole
    assert whole.startswith("start\n") and whole.endswith("tail without end"), whole
    for cut in range(len(pieces) + 1):
        # A live segment: the log so far, its held text kept for the next segment (no close).
        part = "".join(_releases(pieces[:cut], close=False))
        assert whole.startswith(part), (cut, part[-200:])


# --------------------------------------------------------------------------------------------
# end to end: a real wandb 0.31 offline run
# --------------------------------------------------------------------------------------------

WRITER = r'''
import json, os, sys
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
root = sys.argv[1]
for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[k] = os.path.join(root, k.lower())
import wandb
c = json.loads(sys.stdin.read())     # not in argv: wandb keeps a run's arguments
run = wandb.init(project="ct-console-render", dir=root)
out = sys.stdout
out.write("x" + c["cr"][1:] + "\r"); out.flush()
out.write(c["cr"][0] + "\n"); out.flush()
for name, middle in c["middles"].items():
    out.write(c[name][:20] + middle + c[name][20:] + "\n"); out.flush()
print("db password:", end="\r\n", flush=True)
print(c["pw"], end="\r\n", flush=True)
for i in range(31):
    out.write("\r%3d%%|%-10s| %d/30" % (i * 100 // 30, "#" * (i // 3), i)); out.flush()
out.write("\n")
print("console-render done", flush=True)
print("RUN", os.path.dirname(run.dir), flush=True)
run.finish()
'''


def test_a_real_wandb_run_leaves_no_key_drawn_or_written(tmp_path):
    keys = {"cr": _key(), **{name: _key() for name in MIDDLES}}
    pw = _password()
    args = {**keys, "pw": pw, "middles": MIDDLES}
    p = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "volume")], input=json.dumps(args),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    src = Path(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("RUN ")))
    source = b"".join(f.read_bytes() for f in src.rglob("*") if f.is_file())
    assert all(k[20:].encode() in source for k in keys.values()) and pw.encode() in source  # wandb wrote them

    dst = tmp_path / "out" / src.name
    report = redact_run(src, dst, DEFAULT_POLICY, SECRET, lambda p: Path(p))
    files = [f for f in dst.rglob("*") if f.is_file()]
    blob = b"".join(f.read_bytes() for f in files) + json.dumps(report.to_dict()).encode()
    for name, k in keys.items():
        for form in (k, k[:20], k[20:]):
            assert form.encode() not in blob, f"{name}: {form} left"
    assert pw.encode() not in blob

    streams: dict[int, list[str]] = {}
    for _, rec in read_records(next(dst.glob("*.wandb"))):
        if rec.WhichOneof("record_type") == "output_raw":
            streams.setdefault(rec.output_raw.output_type, []).append(rec.output_raw.line)
    console = {t: drawn("".join(lines)) for t, lines in streams.items()}
    for name, k in keys.items():
        assert not any(k in text for text in console.values()), f"{name}: the console, drawn, shows the key"
    # The rest of the console is there: the progress bar at its last update, the last line.
    shown = "\n".join(console.values())
    assert "100%|##########| 30/30" in shown and "console-render done" in shown, shown



def test_a_line_that_never_ends_is_released_at_the_hold_limit_and_a_key_across_that_cut_is_not_drawn(monkeypatch):
    """Bounded memory: a progress line with no line feed is let go at HOLD_LIMIT (made small here:
    the mechanism, not the constant). A key whose first half came before that cut and its rest
    after it is drawn by the emulator on one row: the rest must not complete it (the half
    already released is not the key)."""
    from tfwb_agent.redact import console

    limit = 1 << 16
    monkeypatch.setattr(console, "HOLD_LIMIT", limit)
    key = _key()
    filler = "\r" + "loading " * 6
    n = (limit - 40) // len(filler)
    pad = "\r" + "." * (limit - 10 - n * len(filler) - 1)   # held: limit - 10, then the key's half
    pieces = [filler] * n + [pad, key[:20], key[20:] + " done\n", "next line\n"]
    stream = TextStream(_scrub())
    out, held_most = [], 0
    for p in pieces:
        out.append(stream.feed(p))
        held_most = max(held_most, sum(map(len, stream.parts)))
    out.append(stream.close())
    assert held_most < limit + 20, held_most
    assert out[n] == "" and out[n + 1], "the held line is let go at the piece that passes the limit"
    text = "".join(out)
    assert key not in drawn(text) and key[20:] not in text, text[-300:]
    assert text.endswith("next line\n")
