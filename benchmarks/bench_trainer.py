"""Step-time overhead of logging a small CNN on the CPU, as ratios to training with no wandb.

    python benchmarks/bench_trainer.py [--steps 200] [--rounds 7]

model.fit:   (a) no wandb  (a+) no logging, but an offline wandb run open  (b) wandb's WandbMetricsLogger every batch
             (c) tfwb MetricsCallback at its defaults  (d) tfwb MetricsCallback every batch
custom loop: (a) no logging  (a+) likewise with a run open  (b) naive wandb.log(float(loss)) every step
             (c) tfwb StepLogger at its defaults  (d) tfwb StepLogger every step
Variants run interleaved, `--rounds` times, each in its own offline run. Three figures per variant:
  step ms      the median of the per-step times within each measurement (a clock callback for
               fit, the loop's own clock), then the median over rounds: robust to the scheduler's
               occasional doubled step on a shared machine;
  ratio to (a) the median over rounds of (variant / (a) of the same round), paired so that drift
               between rounds cancels;
  in-hook      the time spent inside the tfwb callback's or logger's own methods, per step, as a
               share of the step: the overhead of our code measured directly, free of the noise
               that an A/B comparison of two 6 ms steps carries.
Results: a table on stdout and a JSON file in benchmarks/results/.

    python benchmarks/bench_trainer.py --sweep 4 [--sweep-epochs 3]

instead times an offline sweep: N trials of examples/train_keras.py (a random search over lr,
`${args}`), run by `python -m tfwb_trainer.sweep`; per trial, the time the sweep spends outside
the trial's process (drawing its parameters with the engine, claiming it, reading its metric
back from the run and recording the outcome) against the trial process's own wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 64


def build(keras):
    m = keras.Sequential([
        keras.layers.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    m.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps per measurement")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sweep", type=int, default=0, metavar="N", help="time an offline sweep of N trials instead")
    ap.add_argument("--sweep-epochs", type=int, default=3)
    a = ap.parse_args()
    if a.sweep:
        return sweep_bench(a.sweep, a.sweep_epochs)

    import tensorflow as tf
    import wandb
    from tensorflow import keras
    from wandb.integration.keras import WandbMetricsLogger

    import tfwb_trainer

    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((2048, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 2048)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH).prefetch(2)
    model = build(keras)
    model.fit(ds, steps_per_epoch=20, epochs=1, verbose=0)  # trace and warm up once

    opt = model.optimizer
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    it = iter(ds)
    for _ in range(20):
        train_step(*next(it))
    float(train_step(*next(it)))

    tmp = Path(tempfile.mkdtemp(prefix="tfwb-bench-"))
    stats_off = {"x_disable_stats": True} if wandb.__version__ >= "0.17" else {"_disable_stats": True}

    def start_run() -> None:
        tfwb_trainer.init(project="bench", runs_dir=tmp, settings=wandb.Settings(**stats_off))

    class StepClock(keras.callbacks.Callback):
        """Marks the end of every batch (for every fit variant alike, (a) included)."""

        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True  # never asks Keras to turn logs into numbers
            self.marks: list[float] = []

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.marks.append(time.perf_counter())

    def per_step(marks: list[float]) -> float:
        return statistics.median(b - a for a, b in zip(marks, marks[1:]))

    def fit(callbacks) -> float:
        clock = StepClock()
        model.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0, callbacks=[clock, *callbacks])
        return per_step(clock.marks)

    def loop(on_step) -> float:
        marks = []
        for _ in range(a.steps):
            loss = train_step(*next(it))
            on_step(loss)
            marks.append(time.perf_counter())
        float(loss)  # wait for the last step: every variant ends synchronised
        return per_step(marks)

    hook_seconds: dict[str, list[float]] = {}

    def timed(obj, names: tuple[str, ...], key: str):
        """Wrap ``obj``'s methods ``names`` to add their time to ``hook_seconds[key]``."""
        box = hook_seconds.setdefault(key, [])
        box.append(0.0)
        for name in names:
            fn = getattr(obj, name)

            def wrapper(*args, _fn=fn, **kw):
                t = time.perf_counter()
                try:
                    return _fn(*args, **kw)
                finally:
                    box[-1] += time.perf_counter() - t
            setattr(obj, name, wrapper)
        return obj

    def tfwb_callback(n: int, key: str):
        cb = tfwb_trainer.MetricsCallback(n, BATCH, best_monitor=None)
        return timed(cb, ("on_train_batch_end", "on_epoch_end", "on_train_begin", "on_epoch_begin"), key)

    def with_run(fn):
        def run():
            start_run()
            try:
                return fn()
            finally:
                tfwb_trainer.finish()
        return run

    def naive():
        s = {"n": 0}

        def on(loss):
            s["n"] += 1
            wandb.log({"loss": float(loss)}, step=s["n"])
        return loop(on)

    def steplogger(n, key):
        def f():
            lg = timed(tfwb_trainer.StepLogger(every_n=n, batch_size=BATCH), ("log_step",), key)
            return loop(lambda loss: lg.log_step({"loss": loss}))
        return f

    variants = {
        ("fit", "a"): ("no wandb", lambda: fit([])),
        ("fit", "a+"): ("no logging, offline wandb run open", with_run(lambda: fit([]))),
        ("fit", "b"): ("WandbMetricsLogger every batch", with_run(lambda: fit([WandbMetricsLogger(log_freq=1)]))),
        ("fit", "c"): ("tfwb MetricsCallback defaults (100)", with_run(lambda: fit([tfwb_callback(100, "fit/c")]))),
        ("fit", "d"): ("tfwb MetricsCallback every batch", with_run(lambda: fit([tfwb_callback(1, "fit/d")]))),
        ("loop", "a"): ("no logging", lambda: loop(lambda loss: None)),
        ("loop", "a+"): ("no logging, offline wandb run open", with_run(lambda: loop(lambda loss: None))),
        ("loop", "b"): ("naive wandb.log(float(loss)) every step", with_run(naive)),
        ("loop", "c"): ("tfwb StepLogger defaults (100)", with_run(steplogger(100, "loop/c"))),
        ("loop", "d"): ("tfwb StepLogger every step", with_run(steplogger(1, "loop/d"))),
    }
    times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
    for k in variants:  # one unmeasured pass: first-call costs (fit's iterator, wandb start-up)
        variants[k][1]()
    hook_seconds.clear()
    for r in range(a.rounds):
        order = list(variants)
        if r % 2:
            order.reverse()  # alternate the order so drift does not favour one variant
        for k in order:
            times[k].append(variants[k][1]())
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)

    rows = []
    for (kind, v), (desc, _) in variants.items():
        mine, base = times[(kind, v)], times[(kind, "a")]
        med = statistics.median(mine)
        hooks = hook_seconds.get(f"{kind}/{v}")
        hook_ms = statistics.median(hooks) / a.steps * 1e3 if hooks else None
        rows.append({"kind": kind, "variant": v, "what": desc, "median_step_ms": med * 1e3,
                     "ratio_to_a": statistics.median(m / b for m, b in zip(mine, base)),
                     "in_hook_ms_per_step": hook_ms,
                     "in_hook_share_of_step": hook_ms / (med * 1e3) if hook_ms is not None else None,
                     "all_step_ms": [t * 1e3 for t in mine]})
    print(f"\n{'':5} {'variant':44} {'step ms':>8} {'ratio to (a)':>13} {'in-hook':>10}")
    for row in rows:
        share = f"{row['in_hook_share_of_step']:.3%}" if row["in_hook_share_of_step"] is not None else ""
        print(f"{row['kind']:5} {'(' + row['variant'] + ')':4} {row['what']:39} {row['median_step_ms']:8.3f} "
              f"{row['ratio_to_a']:13.4f} {share:>10}")
    meta = {"steps": a.steps, "rounds": a.rounds, "batch": BATCH, "tensorflow": tf.__version__,
            "wandb": wandb.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_trainer-tf{tf.__version__}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwritten: {out}")
    return 0


def sweep_bench(trials: int, epochs: int) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="tfwb-bench-sweep-"))
    (work / "runs").mkdir()
    cfg = work / "sweep.yaml"
    cfg.write_text("method: random\nmetric: {name: epoch/val_loss, goal: minimize}\n"
                   "parameters:\n  lr: {distribution: log_uniform_values, min: 0.0003, max: 0.03}\n")
    env = dict(os.environ, TFWB_RUNS_DIR=str(work / "runs"))
    cmd = [sys.executable, "-m", "tfwb_trainer.sweep", str(cfg), "--name", "bench", "--count", str(trials), "--",
           sys.executable, str(root / "examples" / "train_keras.py"), "--epochs", str(epochs), "${args}"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    res = subprocess.run([sys.executable, "-m", "tfwb_trainer.sweep", "results", "bench", "--json"], env=env,
                         check=True, capture_output=True, text=True)
    rows = json.loads(res.stdout)["trials"]
    over = [r["overhead_s"] for r in rows]
    train = [r["train_s"] for r in rows]
    share = [o / tr for o, tr in zip(over, train)]
    print(f"{len(rows)} trials: outside the trial median {statistics.median(over) * 1e3:.1f} ms "
          f"(max {max(over) * 1e3:.1f} ms); trial process median {statistics.median(train):.2f} s; "
          f"share median {statistics.median(share):.3%}, max {max(share):.3%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_trainer-sweep-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": {"trials": trials, "epochs": epochs, "python": platform.python_version()},
                               "rows": rows}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
