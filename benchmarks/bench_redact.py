"""Redaction throughput on a run with 10,000 logged images, beside `cp -r` of the same run.

    python benchmarks/bench_redact.py [--images 10000] [--size 64] [--work DIR] [--repeat 3] [--before REV] [--fresh-fs]

The redactor runs in a child process per measurement. Its secret-detection rules are loaded
first and timed apart: the per-run figure is ``redact_run`` with them loaded (a daemon loads
them once), and the figure "with loading the rules" adds them (a one-off ``tfwb-agent redact``).
Each redactor is timed on two paths: "one-off", where ``redact_run`` folds the log itself (as
``tfwb-agent redact`` does), and "daemon", where the fold is made first, timed apart, and
handed over (the daemon's classification made it already).

With ``--before REV`` the redactor as it was at git revision REV (checked out in a temporary
worktree) is timed in the same rounds, so before and after are compared side by side. The
secret-detection recall and false positives (``secret_recall.py``) are printed at the end.

The run is written by real wandb (offline) the first time and kept in --work for later runs.
Each measurement is wall time, with the page cache warm for both (cp runs first); the median of
--repeat runs is reported (the VM's disk is shared and noisy). MB/s counts the bytes of the source run directory.
Every step starts with the writes of the step before flushed (``sync``, untimed): ext4 allocates
a written file's blocks when it flushes it, so a step that follows ``cp -r`` (118 MB written)
would otherwise pay for cp's allocation and writeback on the same two cores, and cp for
none of the redactor's. Neither side's own writeback is timed, as ``cp`` alone would show it.
On this VM's disk (ext4 without a journal: before reusing a freed inode the kernel looks at
when it was freed, ``recently_deleted`` in a profile) creating files is slow for minutes after
many were deleted, and this benchmark deletes its outputs when it ends: run it again some
minutes later, not at once (``cp`` shows it: seconds instead of about 0.5 s), or with
``--fresh-fs`` (as root): the copies then go into a new ext4 file system in a loop-mounted image.
"""
from __future__ import annotations

import argparse
import functools
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


# The child loads the secret-detection rules first (detect-secrets imports requests and more,
# and the rules are compiled into one pattern: a fixed cost of a few tenths of a second that a
# daemon pays once, not per run) and says how long that took, so the per-run time and the cold
# time (rules + run) are both reported.
CHILD = r'''
import os, resource, sys, time
from pathlib import Path
from tfwb_agent.redact.policy import DEFAULT_POLICY
from tfwb_agent.redact.run import redact_run
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
t = time.monotonic()
try:
    from tfwb_agent.redact.secrets import detect_secrets_rules
    detect_secrets_rules()
except ImportError:          # an older redactor: its rules load inside redact_run
    pass
try:                         # and compiled, as a daemon has them after its first run
    from tfwb_agent.redact.secrets import Scrubber, compile_patterns
    getattr(Scrubber(compile_patterns(), lambda kind, value: "0" * 16, True), "routing_rules", None)
except (ImportError, TypeError):
    pass
rules = time.monotonic() - t
t = time.monotonic()
kw, folded = {}, 0.0
try:                         # the daemon's path: the log's fold made first, timed apart
    from tfwb_agent import runlog
    from tfwb_agent.redact.run import _find_log
    import inspect
    if sys.argv[3] == "fold" and "fold" in inspect.signature(redact_run).parameters:
        kw["fold"] = runlog.read(_find_log(src), runlog.Fold(values=False))
        folded = time.monotonic() - t
        t = time.monotonic()
except ImportError:
    pass
tail = [0.0]                 # waiting for the helper's last files after the records were done
try:
    from tfwb_agent.redact.media_files import MediaFiles
    _finish = MediaFiles.finish_helper
    def _timed(self):
        t0 = time.monotonic()
        try:
            return _finish(self)
        finally:
            tail[0] += time.monotonic() - t0
    MediaFiles.finish_helper = _timed
except (ImportError, AttributeError):  # an older redactor: no helper to wait for
    pass
c0 = time.process_time()
report = redact_run(src, dst / src.name, DEFAULT_POLICY, os.urandom(32), lambda p: Path(p), **kw)
w = time.monotonic() - t
cpu = time.process_time() - c0                  # this process, all its threads
ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # the hashing helper (waited for)
print(tail[0], rules, folded, w, report.files["hashed"], cpu, ch.ru_utime + ch.ru_stime)
'''


def before_tree(rev: str, work: Path) -> Path:
    """A directory to put first on PYTHONPATH so that ``tfwb_agent`` is the code at ``rev``."""
    tree = work / f"before-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "worktree", "add", "--detach",
                        str(tree), rev], check=True, capture_output=True)
    shim = work / f"shim-{rev}"
    shim.mkdir(exist_ok=True)
    if not (shim / "tfwb_agent").exists():
        (shim / "tfwb_agent").symlink_to(tree / "agent")
    return shim


def redact_child(src: Path, dst: Path, pythonpath: Path | None, path: str) -> tuple[float, ...]:
    """(seconds loading the rules, seconds folding the log, seconds redacting, images hashed,
    CPU seconds of the redacting process during ``redact_run``, CPU seconds of its helper,
    seconds waiting for the helper's last files once the records were done). ``path``: "fold"
    (the daemon's: the fold made first and handed over, its seconds apart) or "one-off" (as
    ``tfwb-agent redact``: ``redact_run`` folds the log itself; folding is then 0)."""
    env = dict(os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), path], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return (float(out[-6]), float(out[-5]), float(out[-4]), int(out[-3]), float(out[-2]), float(out[-1]),
            float(out[-7]))


def mount_fresh_fs(image: Path, at: Path, size: int) -> Path:
    """A new ext4 file system in ``image`` (sparse), mounted at ``at``: every inode is new, as on
    a disk nothing was deleted from. cp and the redactor write there alike."""
    if image.exists():
        subprocess.run(["umount", str(at)], capture_output=True)
        image.unlink()
    with open(image, "wb") as f:
        f.truncate(max(size, 4 << 30))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    at.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(at)], check=True)
    return at


def pressure() -> str:
    """The kernel's CPU and I/O pressure (share of the last 10 s that tasks waited), if it says."""
    parts = []
    for what in ("cpu", "io"):
        try:
            some = Path(f"/proc/pressure/{what}").read_text().split()[1]
            parts.append(f"{what} {float(some.split('=')[1]):.0f} %")
        except (OSError, IndexError, ValueError):
            pass
    return ", ".join(parts) or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tfwb-bench-redact")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", metavar="REV", help="also time the redactor at this git revision")
    ap.add_argument("--fresh-fs", action="store_true",
                    help="write the copies into a fresh ext4 file system (a loop-mounted image, needs root): "
                         "on this VM's disk creating files is slow for minutes after many were deleted")
    args = ap.parse_args()

    src = make_run(args.work, args.images, args.size)
    images = sum(1 for _ in (src / "files" / "media" / "images").rglob("*.png"))
    size = dir_bytes(src)
    print(f"run: {src}\n  {images} images, {size / 1e6:.1f} MB in the run directory")
    shim = before_tree(args.before, args.work) if args.before else None
    # Per redactor ("red": this one, "old": at --before) and path ("one-off": redact_run folds
    # the log itself, as `tfwb-agent redact` does; "daemon": the fold is handed over, as the
    # daemon's classification made it): seconds, seconds with loading the rules, and the CPU
    # seconds of the redacting process and of its hashing helper.
    cp_times: list[float] = []
    times: dict[tuple[str, str], list[float]] = {}
    cold: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
    tails: dict[tuple[str, str], list[float]] = {}   # waiting for the helper's last files
    copies = 1 + args.repeat * (1 + 2 * (2 if shim else 1))    # every copy is kept to the end
    fresh = mount_fresh_fs(args.work / "fs.img", args.work / "fs", copies * size * 3 // 2) if args.fresh_fs else None
    out = (fresh or args.work) / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(src), str(out / "warm")], check=True)  # warm the page cache
    redactors = [("red", None)] + ([("old", shim)] if shim else [])
    # Fresh output directories and nothing deleted between measurements (deleting 10,000s of
    # files makes the next creations slower on this disk), alternating which goes first.
    for i in range(args.repeat):
        def cp() -> None:
            t = time.monotonic()
            subprocess.run(["cp", "-r", str(src), str(out / f"cp{i}")], check=True)
            cp_times.append(time.monotonic() - t)

        def redact(which: str, pythonpath: Path | None, path: str) -> None:
            rules, folded, t, hashed, c, hc, tail = redact_child(
                src, out / f"{which}-{path}{i}", pythonpath, "fold" if path == "daemon" else path)
            assert hashed == images, hashed
            times.setdefault((which, path), []).append(t)   # (the daemon's: without its fold)
            cold.setdefault((which, path), []).append(rules + folded + t)
            cpu.setdefault((which, path), []).append((c, hc))
            tails.setdefault((which, path), []).append(tail)
        steps = [cp] + [functools.partial(redact, which, pp, path)
                        for which, pp in redactors for path in ("one-off", "daemon")]
        for step in (steps if i % 2 == 0 else steps[::-1]):
            os.sync()  # the step before's writes flushed first (see the top)
            step()
    import statistics
    med = statistics.median
    cp_t = med(cp_times)
    print(f"cp -r       : {cp_t:6.2f} s  {images / cp_t:8.0f} images/s  {size / 1e6 / cp_t:7.1f} MB/s;"
          f" all runs {[round(x, 2) for x in cp_times]}")
    for which, _ in redactors:
        label = "redact_run" if which == "red" else f"redact_run at {args.before}"
        for path, how in (("one-off", "folding the log itself, as `tfwb-agent redact`"),
                          ("daemon", "the fold handed over, as the daemon's classification made it")):
            t, c = med(times[(which, path)]), med(cold[(which, path)])
            goal = " (goal >= 0.5)" if which == "red" else ""
            # Each round's own pair too: cp's time drifts over a long run (a loop-mounted file
            # system slows as it fills), and a ratio of medians mixes rounds.
            paired = [cp / x for cp, x in zip(cp_times, times[(which, path)])]
            print(f"{label}, {path} ({how}): {t:.2f} s, speed / cp {cp_t / t:.2f}{goal},"
                  f" median of each round's {med(paired):.2f} (rounds {[round(x, 2) for x in paired]});"
                  f" with loading the rules {c:.2f} s ({cp_t / c:.2f}); all runs {[round(x, 2) for x in times[(which, path)]]}")
            cs = cpu[(which, path)]
            print(f"    CPU seconds: redacting process {med(x for x, _ in cs):.2f} (all runs {[round(x, 2) for x, _ in cs]}),"
                  f" hashing helper {med(h for _, h in cs):.2f} (all runs {[round(h, 2) for _, h in cs]});"
                  f" waited for the helper's last files after the records {med(tails[(which, path)]):.2f} s")
    if shim:
        for path in ("one-off", "daemon"):
            print(f"after / before time, {path}: {med(times[('red', path)]) / med(times[('old', path)]):.2f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; pressure (avg10): {pressure()}")
    if fresh is not None:
        subprocess.run(["umount", str(fresh)], check=True)
        (args.work / "fs.img").unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)
    from secret_recall import measure
    res = measure(corpus=Path(__file__).resolve().parent.parent.parent / "shared" / "corpus")
    print(f"secret detection: recall {res['caught']}/{res['planted']} = {res['recall']:.3f};"
          f" false positives: {len(res['names_changed'])} of {res['names_checked']} metric names,"
          f" {len(res['lines_changed'])} of {res['lines_checked']} console lines")


if __name__ == "__main__":
    main()
