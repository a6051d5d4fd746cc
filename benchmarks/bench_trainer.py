"""Step-time overhead of logging a small CNN on the CPU, as ratios to training with no wandb.

    python benchmarks/bench_trainer.py [--steps 200] [--rounds 5]

model.fit:   (a) no wandb  (a+) no logging, but an offline wandb run open  (b) wandb's WandbMetricsLogger every batch
             (c) tfwb MetricsCallback at its defaults  (d) tfwb MetricsCallback every batch
custom loop: (a) no logging  (a+) likewise with a run open  (b) naive wandb.log(float(loss)) every step
             (c) tfwb StepLogger at its defaults  (d) tfwb StepLogger every step
Variants run interleaved, `--rounds` times, each in its own offline run; the median seconds per
step of each variant is compared with its (a). Results: a table on stdout and a JSON file in
benchmarks/results/.
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
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

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

    def fit(callbacks) -> float:
        t = time.perf_counter()
        model.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - t) / a.steps

    def loop(on_step) -> float:
        t = time.perf_counter()
        for _ in range(a.steps):
            loss = train_step(*next(it))
            on_step(loss)
        float(loss)  # wait for the last step: every variant ends synchronised
        return (time.perf_counter() - t) / a.steps

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

    def steplogger(n):
        def f():
            lg = tfwb_trainer.StepLogger(every_n=n, batch_size=BATCH)
            return loop(lambda loss: lg.log_step({"loss": loss}))
        return f

    variants = {
        ("fit", "a"): ("no wandb", lambda: fit([])),
        ("fit", "a+"): ("no logging, offline wandb run open", with_run(lambda: fit([]))),
        ("fit", "b"): ("WandbMetricsLogger every batch", with_run(lambda: fit([WandbMetricsLogger(log_freq=1)]))),
        ("fit", "c"): ("tfwb MetricsCallback defaults (100)",
                       with_run(lambda: fit([tfwb_trainer.MetricsCallback(batch_size=BATCH, best_monitor=None)]))),
        ("fit", "d"): ("tfwb MetricsCallback every batch",
                       with_run(lambda: fit([tfwb_trainer.MetricsCallback(1, BATCH, best_monitor=None)]))),
        ("loop", "a"): ("no logging", lambda: loop(lambda loss: None)),
        ("loop", "a+"): ("no logging, offline wandb run open", with_run(lambda: loop(lambda loss: None))),
        ("loop", "b"): ("naive wandb.log(float(loss)) every step", with_run(naive)),
        ("loop", "c"): ("tfwb StepLogger defaults (100)", with_run(steplogger(100))),
        ("loop", "d"): ("tfwb StepLogger every step", with_run(steplogger(1))),
    }
    times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
    for k in variants:  # one unmeasured pass: first-call costs (fit's iterator, wandb start-up)
        variants[k][1]()
    for r in range(a.rounds):
        order = list(variants)
        if r % 2:
            order.reverse()  # alternate the order so drift does not favour one variant
        for k in order:
            times[k].append(variants[k][1]())
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)

    rows = []
    for (kind, v), (desc, _) in variants.items():
        med = statistics.median(times[(kind, v)])
        base = statistics.median(times[(kind, "a")])
        rows.append({"kind": kind, "variant": v, "what": desc, "median_step_ms": med * 1e3,
                     "ratio_to_a": med / base, "all_step_ms": [t * 1e3 for t in times[(kind, v)]]})
    print(f"\n{'':5} {'variant':44} {'step ms':>8} {'ratio to (a)':>13}")
    for row in rows:
        print(f"{row['kind']:5} {'(' + row['variant'] + ')':4} {row['what']:39} {row['median_step_ms']:8.3f} {row['ratio_to_a']:13.4f}")
    meta = {"steps": a.steps, "rounds": a.rounds, "batch": BATCH, "tensorflow": tf.__version__,
            "wandb": wandb.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_trainer-tf{tf.__version__}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
