"""Sealing: throughput against the native pipeline, and peak memory on a large run.

    python benchmarks/bench_seal.py [--mb 300] [--big-mb 2048] [--checkpoint-mb 2048] [--reps 3] [--workdir DIR]

1. Throughput. A run directory of about ``--mb`` MB, half already-compressed images (real PNG
   files of noise), half text (metric and console lines), is sealed by ``seal_run`` and, in the
   same benchmark run and on the same directory, by ``tar -cf - DIR | zstd -3 | age -r R > out``.
   Runs alternate, ``--reps`` each; the medians give the ratio ours/native in throughput
   (goal >= 1.0). Also measured: ours with images recompressed instead of stored.
2. Peak memory. A child process seals a ``--big-mb`` MB run and reports its own peak resident
   size (``VmHWM``; ``ru_maxrss`` would include the peak of the process that forked it) (goal < 200 MB), with its resident size before sealing for scale.
3. Peak memory of the whole command (issue 17): a wandb offline run whose ``files/`` holds one
   ``--checkpoint-mb`` MB ``wandb.save``d checkpoint (random bytes: incompressible, as weights
   are) is redacted and sealed by the real ``tfwb-agent scan --seal`` in a child process, its
   peak RSS taken from ``getrusage(RUSAGE_CHILDREN)`` (the bench's own process forks nothing
   bigger first: the anchors above run in their own children or in this process, whose peak
   is measured separately) and, where present, ``/usr/bin/time -v``. Twice: with
   ``[redact] keep_files = ["*.ckpt"]`` (the checkpoint is copied into the bundle: redaction
   streams 2 GB through) and with the default policy (a binary file not named is dropped
   unread). Goal < 200 MB in both; time reported beside the anchors.

Prints one JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def png(rng: random.Random, width: int, height: int) -> bytes:
    """A valid RGB PNG of noise: what a sample image is to a compressor (incompressible)."""
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def make_run(root: Path, total_mb: int, seed: int = 1) -> Path:
    """offline-run-*/ with ~total_mb/2 MB of PNGs under files/media/images and the rest text."""
    rng = random.Random(seed)
    run = root / f"offline-run-20260101_000000-bench{total_mb}"
    images = run / "files" / "media" / "images" / "samples"
    images.mkdir(parents=True)
    half = total_mb * (1 << 20) // 2
    made, n = 0, 0
    while made < half:
        data = png(rng, 256, 256)  # ~197 KB each
        (images / f"ct_{n}_{n:08x}.png").write_bytes(data)
        made += len(data)
        n += 1
    # Text: metric history as JSON lines and a console log, written in 8 MB pieces.
    text_files = [run / "files" / "wandb-history.jsonl", run / "files" / "output.log", run / "logs" / "debug-internal.log"]
    (run / "logs").mkdir()
    made, step = 0, 0
    handles = [open(p, "w") for p in text_files]
    try:
        while made < half:
            lines = []
            for _ in range(40_000):
                step += 1
                loss, acc = 1 / (1 + step * 1e-4) + rng.random() * 0.01, 1 - 1 / (2 + step * 1e-4)
                lines.append(f'{{"_step": {step}, "train/loss": {loss:.6f}, "train/acc": {acc:.6f}, '
                             f'"lr": {0.001 * 0.999 ** (step // 1000):.8f}, "_runtime": {step * 0.0421:.4f}}}\n')
            block = "".join(lines)
            h = handles[step // 40_000 % len(handles)]
            h.write(block if h is handles[0] else block.replace('{"_step": ', "step ").replace('"', ""))
            made += len(block)
    finally:
        for h in handles:
            h.close()
    return run


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def setup_keys(work: Path) -> tuple[Path, str]:
    ident = work / "gw.agekey"
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    rcp = subprocess.run(["age-keygen", "-y", str(ident)], check=True, capture_output=True, text=True).stdout.strip()
    from tfwb_agent.seal import minisign
    from tfwb_agent.seal.keystore import write_file
    sk = minisign.generate()
    write_file(work / "node.key", sk.to_file(), 0o600)
    write_file(work / "node.key.pub", sk.public().to_file(), 0o644)
    return work / "node.key", rcp


def seal_once(work: Path, run: Path, node_key: Path, rcp: str, tag: str, store_compressed: bool = True) -> tuple[float, int]:
    from tfwb_agent import config as config_mod
    from tfwb_agent.ledger import Ledger
    from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run
    state = work / f"state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    cfg = config_mod.parse({"state_dir": str(state), "node_name": "bench",
                            "keys": {"node_key": str(node_key), "recipients": [rcp]}})
    keys, ledger = seal_keys(keys_config(cfg)), Ledger(cfg.ledger_path)
    t = time.perf_counter()
    sb = seal_run(cfg, keys, ledger, run, RunIdentity(run.name.rsplit("-", 1)[1]), 0, {},
                  store_compressed=store_compressed)
    dt = time.perf_counter() - t
    ledger.close()
    size = sb.path.stat().st_size
    shutil.rmtree(state)
    return dt, size


def native_once(work: Path, run: Path, rcp: str) -> tuple[float, int]:
    out = work / "native.tar.zst.age"
    cmd = f"tar -cf - -C '{run.parent}' '{run.name}' | zstd -3 -q | age -r {rcp} > '{out}'"
    t = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    # Same durability as the outbox gives: the bytes are on disk when it is done.
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    dt = time.perf_counter() - t
    size = out.stat().st_size
    out.unlink()
    return dt, size


CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])


def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))


before = hwm()
from tfwb_agent import config as config_mod
from tfwb_agent.ledger import Ledger
from tfwb_agent.seal import RunIdentity, keys_config, seal_keys, seal_run
work, run, node_key, rcp = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = config_mod.parse({"state_dir": str(work / "state-big"), "node_name": "bench",
                        "keys": {"node_key": node_key, "recipients": [rcp]}})
keys, ledger = seal_keys(keys_config(cfg)), Ledger(cfg.ledger_path)
with open("/proc/self/status") as f:
    rss_ready = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
t = time.perf_counter()
sb = seal_run(cfg, keys, ledger, run, RunIdentity("bigrun"), 0, {})
dt = time.perf_counter() - t
print(json.dumps({"peak_rss_kb": hwm(),
                  "rss_before_sealing_kb": rss_ready, "seconds": dt, "bundle_bytes": sb.path.stat().st_size}))
"""


def make_checkpoint_run(root: Path, ckpt_mb: int, run_id: str = "ckpt2gb") -> Path:
    """A finished wandb offline run (run record, 50 history rows, exit 0) whose ``files/`` holds
    ``model.ckpt`` of ``ckpt_mb`` MB of random bytes, as ``wandb.save`` leaves a checkpoint;
    every mtime an hour back, so the run counts as ended."""
    import tfwb_agent  # noqa: F401  (loads wandb's record types without the SDK)
    from wandb.proto import wandb_internal_pb2 as pb

    from tfwb_agent.wandb_log import LogWriter

    run = root / f"offline-run-20260101_000000-{run_id}"
    (run / "files").mkdir(parents=True)
    with open(run / f"run-{run_id}.wandb", "wb") as f:
        w = LogWriter(f)
        rec = pb.Record()
        rec.run.run_id, rec.run.project = run_id, "bench"
        w.write(rec)
        for step in range(50):
            rec = pb.Record()
            for k, v in (("_step", step), ("train/loss", 1 / (step + 1))):
                item = rec.history.item.add()
                item.key, item.value_json = k, json.dumps(v)
            w.write(rec)
        rec = pb.Record()
        rec.exit.exit_code = 0
        w.write(rec)
    (run / "files" / "wandb-metadata.json").write_text(json.dumps({"program": "train.py", "host": "gpu01"}))
    with open(run / "files" / "model.ckpt", "wb") as f:
        for _ in range(ckpt_mb):  # 1 MiB pieces of random bytes: incompressible, never whole in memory
            f.write(os.urandom(1 << 20))
    old = time.time() - 3600
    for p in [run, *run.rglob("*")]:
        os.utime(p, (old, old))
    return run


def scan_seal_rss(work: Path, runs_root: Path, node_key: Path, rcp: str, tag: str, extra: str = "") -> dict:
    """``tfwb-agent scan --seal`` in a child process on ``runs_root``: its peak RSS and time."""
    state = work / f"state-scan-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    secret = work / "redact.key"
    if not secret.exists():
        secret.write_bytes(os.urandom(32))
        secret.chmod(0o600)
    cfg = work / f"scan-{tag}.toml"
    cfg.write_text(f'state_dir = "{state}"\nnode_name = "bench"\n[watch]\nroots = ["{runs_root}"]\nquiet_seconds = 1\n'
                   f'[redact]\nsecret_file = "{secret}"\n{extra}'
                   f'[keys]\nnode_key = "{node_key}"\nrecipients = ["{rcp}"]\n')
    env = dict(os.environ, TFWB_AGENT_CONFIG=str(cfg), PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "tfwb_agent", "scan", "--seal", "--json"]
    timed = Path("/usr/bin/time").exists()
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"scan --seal failed ({out.returncode}):\n{out.stderr[-3000:]}")
    counts = json.loads(out.stdout[out.stdout.index("{"):])["counts"]
    bundles = list((state / "outbox").glob("*.tar.zst.age"))
    if counts != {"sealed": 1} or len(bundles) != 1:
        raise SystemExit(f"scan --seal did not seal the run once: {counts}, {bundles}")
    time_v = None
    if timed:
        line = next((x for x in out.stderr.splitlines() if "Maximum resident set size" in x), None)
        time_v = int(line.rsplit(":", 1)[1]) if line else None
    res = {"seconds": round(dt, 2), "cpu_seconds": round(after.ru_utime + after.ru_stime
                                                         - before.ru_utime - before.ru_stime, 2),
           # ru_maxrss of the children is the largest of any child waited for so far: this
           # bench forks only small tools (age-keygen, tar|zstd|age) before, so it is ours.
           "peak_rss_MB_rusage": round(after.ru_maxrss / 1024, 1),
           "peak_rss_MB_time_v": round(time_v / 1024, 1) if time_v else None,
           "bundle_MB": round(bundles[0].stat().st_size / 1e6, 1)}
    shutil.rmtree(state, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--big-mb", type=int, default=2048)
    ap.add_argument("--checkpoint-mb", type=int, default=2048,
                    help="size of the checkpoint under files/ sealed by `scan --seal` (0: skip)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-seal-", dir=args.workdir))
    try:
        node_key, rcp = setup_keys(work)
        run = make_run(work / "runs", args.mb)
        size = dir_bytes(run)
        print(f"run: {size / 1e6:.0f} MB in {sum(1 for _ in run.rglob('*'))} entries", file=sys.stderr)
        ours, native, ours_nostore = [], [], []
        seal_once(work, run, node_key, rcp, "warm")  # page cache and imports warm for both sides
        for i in range(args.reps):
            ours.append(seal_once(work, run, node_key, rcp, f"r{i}"))
            native.append(native_once(work, run, rcp))
            ours_nostore.append(seal_once(work, run, node_key, rcp, f"n{i}", store_compressed=False))
            print(f"rep {i}: ours {ours[-1][0]:.2f}s  native {native[-1][0]:.2f}s  "
                  f"ours(recompress images) {ours_nostore[-1][0]:.2f}s", file=sys.stderr)
        med = lambda xs: statistics.median(x[0] for x in xs)  # noqa: E731
        result = {
            "run_mb": round(size / 1e6, 1),
            "ours_seconds": round(med(ours), 3), "native_seconds": round(med(native), 3),
            "ours_MBps": round(size / 1e6 / med(ours), 1), "native_MBps": round(size / 1e6 / med(native), 1),
            "throughput_ratio_ours_over_native": round(med(native) / med(ours), 3),
            "ours_recompressing_images_MBps": round(size / 1e6 / med(ours_nostore), 1),
            "ours_bundle_MB": round(ours[0][1] / 1e6, 1), "native_bundle_MB": round(native[0][1] / 1e6, 1),
            "ours_recompressing_bundle_MB": round(ours_nostore[0][1] / 1e6, 1),
        }
        shutil.rmtree(run.parent)
        if args.checkpoint_mb:
            # Before the --big-mb child: RUSAGE_CHILDREN keeps the largest child ever waited for
            # (/usr/bin/time -v is per process whatever the order). The default policy first:
            # a larger figure after it is the kept checkpoint's own.
            ck_root = work / "ckpt-runs"
            ck = make_checkpoint_run(ck_root, args.checkpoint_mb)
            ck_size = dir_bytes(ck)
            dropped = scan_seal_rss(work, ck_root, node_key, rcp, "default")
            print(f"scan --seal, default policy: {dropped}", file=sys.stderr)
            kept = scan_seal_rss(work, ck_root, node_key, rcp, "keep", 'keep_files = ["*.ckpt"]\n')
            print(f"scan --seal, checkpoint kept: {kept}", file=sys.stderr)
            result.update({"checkpoint_run_mb": round(ck_size / 1e6, 1),
                           "scan_seal_checkpoint_kept": kept, "scan_seal_checkpoint_default_policy": dropped})
            shutil.rmtree(ck_root)
        if args.big_mb:
            big = make_run(work / "big", args.big_mb, seed=2)
            big_size = dir_bytes(big)
            out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(big), str(node_key), rcp,
                                  str(HERE.parent)], capture_output=True, text=True, check=True)
            mem = json.loads(out.stdout)
            result.update({
                "big_run_mb": round(big_size / 1e6, 1),
                "big_peak_rss_MB": round(mem["peak_rss_kb"] / 1024, 1),
                "big_rss_before_sealing_MB": round(mem["rss_before_sealing_kb"] / 1024, 1),
                "big_seconds": round(mem["seconds"], 2),
                "big_MBps": round(big_size / 1e6 / mem["seconds"], 1),
            })
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
