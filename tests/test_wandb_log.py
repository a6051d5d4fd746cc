"""The `.wandb` reader and writer on real files written by wandb 0.15.12 and 0.31.0."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from tfwb_agent.wandb_log import (BLOCK_LEN, FILE_HEADER_LEN, CorruptLog, LogReader, LogWriter, NotAWandbLog,
                                  read_records)

from conftest import CORPUS


def corpus_logs() -> list[Path]:
    return sorted(p for p in CORPUS.glob("wandb-*/wandb/offline-run-*/run-*.wandb"))


def read_all(path: Path, start: int = FILE_HEADER_LEN):
    out = []
    gen = read_records(path, start)
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return out, stop.value


def test_corpus_logs_are_read_whole():
    logs = corpus_logs()
    assert len(logs) == 4
    for p in logs:
        records, tail = read_all(p)
        kinds = [r.WhichOneof("record_type") for _, r in records]
        assert kinds[0] == "header" and "run" in kinds[:3]
        if "s900mviu" in p.name:  # 0.31 crashed run: ends inside a record
            assert tail.torn_at is not None and tail.torn_at == tail.end < tail.size
            assert "exit" not in kinds
        else:
            assert tail.torn_at is None and tail.end == tail.size == p.stat().st_size


def test_torn_tail_returns_every_whole_record_before_it(tmp_path):
    src = next(p for p in corpus_logs() if "3salp52t" in p.name)
    whole, _ = read_all(src)
    data = src.read_bytes()
    # Cut at every 997th byte: every whole record before the cut comes back, nothing after.
    for cut in range(FILE_HEADER_LEN + 1, len(data), 997):
        p = tmp_path / "cut.wandb"
        p.write_bytes(data[:cut])
        got, tail = read_all(p)
        assert [o for o, _ in got] == [o for o, _ in whole[: len(got)]]
        assert tail.end <= cut
        if tail.end < cut:
            # torn at the start of the record the cut broke (or pure padding after the last one)
            assert tail.torn_at is None or tail.torn_at == tail.end
        nxt = len(got)
        if nxt < len(whole):
            assert whole[nxt][0] >= tail.end


def test_resume_from_saved_offset_reads_only_new_records(tmp_path):
    src = next(p for p in corpus_logs() if "itokze55" in p.name)
    data = src.read_bytes()
    whole, _ = read_all(src)
    p = tmp_path / "grow.wandb"
    p.write_bytes(data[: len(data) // 2])
    first, tail = read_all(p)
    with open(p, "ab") as f:
        f.write(data[len(data) // 2:])
    rest, tail2 = read_all(p, tail.end)
    assert [o for o, _ in first + rest] == [o for o, _ in whole]
    assert tail2.end == len(data) and tail2.torn_at is None


def test_bad_crc_mid_file_is_an_error_with_its_offset(tmp_path):
    src = next(p for p in corpus_logs() if "3salp52t" in p.name)
    data = bytearray(src.read_bytes())
    assert len(data) > 3 * BLOCK_LEN
    at = BLOCK_LEN + 100
    data[at] ^= 0xFF
    p = tmp_path / "bad.wandb"
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as err:
        read_all(p)
    assert err.value.offset <= at and err.value.offset >= BLOCK_LEN
    assert "offset" in str(err.value)


def _flipped(tmp_path, back: int):
    """The finished corpus log with one byte flipped ``back`` bytes from its end."""
    data = bytearray(next(p for p in corpus_logs() if "3salp52t" in p.name).read_bytes())
    at = len(data) - back
    data[at] ^= 0xFF
    p = tmp_path / "flipped.wandb"
    p.write_bytes(bytes(data))
    return p, at


def test_bad_crc_in_the_last_chunk_is_a_torn_tail(tmp_path):
    # A writer that died mid-flush leaves a bad last chunk: nothing whole follows it.
    p, at = _flipped(tmp_path, 5)
    records, tail = read_all(p)
    assert tail.torn_at is not None and tail.torn_at <= at
    assert "CRC" in tail.reason
    assert len(records) > 900


def test_bad_crc_followed_by_a_whole_chunk_is_damage(tmp_path):
    # In the last block too: a tear cannot be followed by valid chunks, so the records after
    # the flip (here the exit record) are not dropped as a "torn tail" without a word.
    p, at = _flipped(tmp_path, 50)
    with pytest.raises(CorruptLog) as exc:
        read_all(p)
    assert exc.value.offset <= at


def test_not_a_wandb_file(tmp_path):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b"this is not a wandb file at all, just text\n" * 10)
    with pytest.raises(NotAWandbLog):
        read_all(p)


def test_writer_round_trips_records_across_blocks(tmp_path):
    # Records of many sizes, some spanning several blocks, must come back byte for byte.
    payloads = [os.urandom(n) for n in (0, 1, 6, 7, 100, BLOCK_LEN - 14, BLOCK_LEN, 3 * BLOCK_LEN + 5, 50)]
    buf = io.BytesIO()
    w = LogWriter(buf)
    offsets = [w.write(pl) for pl in payloads]
    p = tmp_path / "w.wandb"
    p.write_bytes(buf.getvalue())
    with open(p, "rb") as f:
        r = LogReader(f)
        got = list(r)
    assert [pl for _, pl in got] == payloads
    assert [o for o, _ in got] == offsets
    assert r.tail.torn_at is None


def test_writer_reproduces_wandb_files_exactly():
    # Written by real wandb: re-framing the same records gives the same bytes.
    for src in corpus_logs():
        with open(src, "rb") as f:
            reader = LogReader(f)
            payloads = [pl for _, pl in reader]
        buf = io.BytesIO()
        w = LogWriter(buf)
        for pl in payloads:
            w.write(pl)
        assert buf.getvalue() == src.read_bytes()[: reader.tail.end], src.name


def test_memory_stays_bounded_on_a_large_file(tmp_path):
    # 200 MB of history records; the reader's peak RSS must not grow with the file.
    p = tmp_path / "big.wandb"
    rec = pb.Record()
    item = rec.history.item.add()
    item.key, item.value_json = "x", "1.5" * 2000
    payload = rec.SerializeToString()
    with open(p, "wb") as f:
        w = LogWriter(f)
        while w.offset < 200 * 1024 * 1024:
            w.write(payload)
    # VmHWM, the peak of this process's own memory: ru_maxrss would carry over the peak of the
    # process that forked it (pytest, which may have grown large by then).
    code = (
        "import sys\n"
        "from tfwb_agent.wandb_log import read_records\n"
        "n=0\n"
        "for _ in read_records(sys.argv[1]): n+=1\n"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(n, hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True).stdout
    n, maxrss_kb = map(int, out.split())
    assert n > 30000
    assert maxrss_kb < 200 * 1024, f"peak RSS {maxrss_kb} KiB while reading a 200 MB file"


def test_writer_appends_to_an_existing_log(tmp_path):
    src = next(p for p in corpus_logs() if "5okzpcus" in p.name)
    p = tmp_path / "a.wandb"
    p.write_bytes(src.read_bytes())
    before, tail = read_all(p)
    extra = [os.urandom(n) for n in (10, BLOCK_LEN, 5)]
    with open(p, "r+b") as f:
        w = LogWriter(f, append_at=tail.end)
        offsets = [w.write(pl) for pl in extra]
    with open(p, "rb") as f:
        r = LogReader(f)
        got = list(r)
    assert [pl for _, pl in got[len(before):]] == extra and [o for o, _ in got[len(before):]] == offsets
    assert r.tail.torn_at is None and len(got) == len(before) + 3
