"""Redaction throughput on a run with 10,000 logged images, beside `cp -r` of the same run.

    python benchmarks/bench_redact.py [--images 10000] [--size 64] [--work DIR] [--repeat 3]

The run is written by real wandb (offline) the first time and kept in --work for later runs.
Each measurement is wall time, with the page cache warm for both (cp runs first); the median of
--repeat runs is reported (the VM's disk is shared and noisy). MB/s counts the bytes of the source run directory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = r'''
import os, sys
os.environ["WANDB_MODE"] = "offline"; os.environ["WANDB_SILENT"] = "true"
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in ("wandb-data", "wandb-cache", "wandb-config"):
    os.environ["WANDB_" + d.split("-")[1].upper() + "_DIR"] = os.path.join(root, d)
import numpy as np, wandb
rng = np.random.default_rng(0)
run = wandb.init(project="bench", dir=root, config={"lr": 0.1})
step = 0
logged = 0
while logged < n:
    k = min(8, n - logged)
    ct = [wandb.Image((rng.random((size, size, 3)) * 255).astype("uint8"), caption=f"c{logged + i}") for i in range(k)]
    row = {"loss": 1.0 / (step + 1), "samples/ct": ct}
    logged += k
    if logged < n:
        row["samples/mask"] = wandb.Image((rng.random((size, size)) * 255).astype("uint8"))
        logged += 1
    run.log(row, step=step)
    step += 1
run.finish()
'''


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def make_run(work: Path, n: int, size: int) -> Path:
    root = work / f"run-{n}-{size}"
    done = root / "DONE"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", WRITER, str(root), str(n), str(size)], check=True)
        print(f"wrote the run with wandb in {time.monotonic() - t:.1f}s", flush=True)
        done.touch()
    runs = [p for p in (root / "wandb").glob("offline-run-*") if not p.is_symlink()]
    assert len(runs) == 1, runs
    return runs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tfwb-bench-redact")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from tfwb_agent.redact.policy import DEFAULT_POLICY
    from tfwb_agent.redact.run import redact_run

    src = make_run(args.work, args.images, args.size)
    images = sum(1 for _ in (src / "files" / "media" / "images").rglob("*.png"))
    size = dir_bytes(src)
    print(f"run: {src}\n  {images} images, {size / 1e6:.1f} MB in the run directory")
    secret = os.urandom(32)
    cp_times, red_times, cp_cpu, red_cpu = [], [], [], []
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(src), str(out / "warm")], check=True)  # warm the page cache
    # Fresh output directories and nothing deleted between measurements (deleting 10,000s of
    # files makes the next creations slower on this disk), alternating which goes first.
    for i in range(args.repeat):
        def cp() -> None:
            t, c = time.monotonic(), _child_cpu()
            subprocess.run(["cp", "-r", str(src), str(out / f"cp{i}")], check=True)
            cp_times.append(time.monotonic() - t)
            cp_cpu.append(_child_cpu() - c)

        def red() -> None:
            t, c = time.monotonic(), time.process_time()
            report = redact_run(src, out / f"red{i}" / src.name, DEFAULT_POLICY, secret, lambda p: Path(p))
            red_times.append(time.monotonic() - t)
            red_cpu.append(time.process_time() - c)
            assert report.files["hashed"] == images, report.files
        for step in ((cp, red) if i % 2 == 0 else (red, cp)):
            step()
    import statistics
    cp_t, red_t = statistics.median(cp_times), statistics.median(red_times)
    print(f"cp -r       : {cp_t:6.2f} s  {images / cp_t:8.0f} images/s  {size / 1e6 / cp_t:7.1f} MB/s")
    print(f"redact_run  : {red_t:6.2f} s  {images / red_t:8.0f} images/s  {size / 1e6 / red_t:7.1f} MB/s")
    print(f"redact / cp speed: {cp_t / red_t:.2f} (goal >= 0.5); all runs: cp {[round(x, 2) for x in cp_times]}"
          f" redact {[round(x, 2) for x in red_times]}")
    print(f"CPU seconds (user+sys, median): cp {statistics.median(cp_cpu):.2f}, redact {statistics.median(red_cpu):.2f}")
    shutil.rmtree(args.work / "out", ignore_errors=True)


def _child_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


if __name__ == "__main__":
    main()
