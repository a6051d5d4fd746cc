"""Issue 2's measurements: reader throughput, daemon idle CPU, finish-to-status latency.

usage: python benchmarks/bench_watch.py [--gb 1.0] [--runs 10000] [--idle-seconds 60] [--samples 20]

Prints a table and writes benchmarks/results/watch.json. Each figure sits beside its anchor
from the same run (plain byte reads for the reader; the poll interval for polling latency).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tfwb_agent.wandb_log import LogReader, LogWriter, read_records

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("TFWB_CORPUS", REPO.parent / "shared" / "corpus"))
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
FINISHED = next(CORPUS.glob("wandb-0.31.0/wandb/offline-run-*-3salp52t"))


def corpus_payloads() -> list[bytes]:
    with open(next(FINISHED.glob("*.wandb")), "rb") as f:
        return [pl for _, pl in LogReader(f)]


def bench_reader(work: Path, gb: float) -> dict:
    payloads = corpus_payloads()
    body = payloads[2:-1]  # everything between the run record and the exit record
    big = work / "big.wandb"
    with open(big, "wb") as f:
        w = LogWriter(f)
        for pl in payloads[:2]:
            w.write(pl)
        target = int(gb * 1024**3)
        while w.offset < target:
            for pl in body:
                w.write(pl)
    size = big.stat().st_size

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def plain():
        with open(big, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass

    def frames():
        with open(big, "rb") as f:
            for _ in LogReader(f):
                pass

    n = [0]

    def records():
        for _ in read_records(big):
            n[0] += 1

    plain()  # warm the page cache so every variant reads from memory
    res = {"file_bytes": size, "plain_read_s": timed(plain), "frames_s": timed(frames), "records_s": timed(records),
           "records": n[0]}
    # Peak memory of a process that only streams the records of the whole file.
    # VmHWM is this process's own peak; ru_maxrss would carry over the peak of its parent.
    hwm = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    code = ("import sys\nfrom tfwb_agent.wandb_log import read_records\n"
            "for _ in read_records(sys.argv[1]): pass\n" + hwm)
    base = "import tfwb_agent.wandb_log\nfrom wandb.proto import wandb_internal_pb2\n" + hwm
    res["peak_rss_MiB"] = int(subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True,
                                             check=True).stdout) / 1024
    res["baseline_rss_MiB"] = int(subprocess.run([sys.executable, "-c", base], capture_output=True, text=True,
                                                 check=True).stdout) / 1024
    for k in ("plain_read", "frames", "records"):
        res[f"{k}_MBps"] = size / 1e6 / res[f"{k}_s"]
    big.unlink()
    return res


def write_config(path: Path, state: Path, root: Path, **watch) -> Path:
    lines = [f'state_dir = "{state}"', "[watch]", f'roots = ["{root}"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in watch.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_daemon(cfg: Path, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "tfwb_agent", "daemon"], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                         env=dict(os.environ, TFWB_AGENT_CONFIG=str(cfg)))
    deadline = time.time() + 60
    while b"watching" not in log.read_bytes():
        if time.time() > deadline or p.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    return p


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ledger_count(state: Path, where: str = "1") -> int:
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(f"SELECT COUNT(*) FROM runs WHERE {where}").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def bench_idle(work: Path, n_runs: int, seconds: float) -> dict:
    root = work / "idle-root"
    old = time.time() - 3600
    for i in range(n_runs):
        d = root / f"team{i % 50}" / "wandb" / f"offline-run-20260101_000000-idle{i:06d}"
        (d / "files").mkdir(parents=True)
        (d / "logs").mkdir()
        shutil.copyfile(next(FINISHED.glob("*.wandb")), d / f"run-idle{i:06d}.wandb")
        os.utime(d / f"run-idle{i:06d}.wandb", (old, old))
    state = work / "idle-state"
    cfg = write_config(work / "idle.toml", state, root, quiet_seconds=120, reconcile_seconds=60)
    p = start_daemon(cfg, work / "idle.log")
    t0 = time.time()
    while ledger_count(state) < n_runs:
        time.sleep(0.5)
        if p.poll() is not None:
            raise RuntimeError((work / "idle.log").read_text())
    first_pass = time.time() - t0
    c0, w0 = cpu_seconds(p.pid), time.time()
    time.sleep(seconds)  # the measurement window itself
    c1, w1 = cpu_seconds(p.pid), time.time()
    rss_kb = int([ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("VmRSS")][0].split()[1])
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    shutil.rmtree(root)
    return {"runs": n_runs, "first_pass_s": first_pass, "window_s": w1 - w0,
            "idle_cpu_percent_of_core": 100 * (c1 - c0) / (w1 - w0), "rss_MiB": rss_kb / 1024}


def bench_latency(work: Path, mode: str, samples: int, poll_seconds: float = 1.0) -> dict:
    payloads = corpus_payloads()
    root = work / f"lat-{mode}"
    root.mkdir()
    state = work / f"lat-{mode}-state"
    cfg = write_config(work / f"lat-{mode}.toml", state, root, mode=mode, poll_seconds=poll_seconds,
                       quiet_seconds=300, reconcile_seconds=60)
    p = start_daemon(cfg, work / f"lat-{mode}.log")
    exit_at = next(i for i, pl in enumerate(payloads) if _kind(pl) == "exit")
    lat = []
    try:
        for i in range(samples):
            d = root / f"offline-run-20260101_000000-lat{i:05d}"
            d.mkdir()
            log = d / f"run-lat{i:05d}.wandb"
            f = open(log, "wb")
            w = LogWriter(f)
            for pl in payloads[:exit_at]:
                w.write(pl)
            f.flush()
            os.fsync(f.fileno())
            while ledger_count(state, f"key = '{d}' AND state = 'live'") == 0:
                time.sleep(0.02)
            t0 = time.time()  # from the write of the exit record (the fsync is part of "reaching disk")
            w.write(payloads[exit_at])
            f.flush()
            os.fsync(f.fileno())
            f.close()
            while ledger_count(state, f"key = '{d}' AND ended = 'finished'") == 0:
                time.sleep(0.01)
            db = sqlite3.connect(f"file:{state / 'ledger.sqlite3'}?mode=ro", uri=True)
            updated = db.execute("SELECT updated FROM runs WHERE key = ?", (str(d),)).fetchone()[0]
            db.close()
            lat.append(updated - t0)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    lat.sort()
    return {"mode": mode, "samples": samples, "poll_seconds": poll_seconds if mode == "poll" else None,
            "p50_s": statistics.median(lat), "p95_s": lat[max(0, int(round(0.95 * len(lat))) - 1)], "max_s": lat[-1]}


def _kind(payload: bytes) -> str:
    from wandb.proto import wandb_internal_pb2 as pb
    r = pb.Record()
    r.ParseFromString(payload)
    return r.WhichOneof("record_type")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--idle-seconds", type=float, default=180)  # three full reconcile passes
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--only", choices=["reader", "idle", "latency"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["reader", "idle", "latency"])
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="tfwb-bench-") as tmp:
        work = Path(tmp)
        if "reader" in only:
            out["reader"] = r = bench_reader(work, args.gb)
            print(f"reader, {r['file_bytes'] / 1e9:.2f} GB: plain read {r['plain_read_MBps']:.0f} MB/s | "
                  f"framing only {r['frames_MBps']:.0f} MB/s | records parsed {r['records_MBps']:.0f} MB/s "
                  f"({r['records']} records); ratio parsed/plain {r['records_MBps'] / r['plain_read_MBps']:.3f}; "
                  f"peak RSS {r['peak_rss_MiB']:.0f} MiB (interpreter + wandb protos alone: {r['baseline_rss_MiB']:.0f} MiB)")
        if "latency" in only:
            out["latency_inotify"] = a = bench_latency(work, "inotify", args.samples)
            out["latency_poll"] = b = bench_latency(work, "poll", args.samples)
            for x in (a, b):
                print(f"exit record on disk -> status finished ({x['mode']}"
                      f"{', poll ' + str(x['poll_seconds']) + 's' if x['poll_seconds'] else ''}): "
                      f"p50 {x['p50_s'] * 1000:.0f} ms, p95 {x['p95_s'] * 1000:.0f} ms, max {x['max_s'] * 1000:.0f} ms")
        if "idle" in only:
            out["idle"] = i = bench_idle(work, args.runs, args.idle_seconds)
            print(f"daemon idle with {i['runs']} runs: {i['idle_cpu_percent_of_core']:.2f}% of a core over "
                  f"{i['window_s']:.0f} s (first pass {i['first_pass_s']:.1f} s, RSS {i['rss_MiB']:.0f} MiB)")
    res_dir = REPO / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "watch.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
