"""The demo's training job: a tiny CNN on scikit-learn's digits, tracked by the trainer plugin.

    TFWB_RUNS_DIR=/tmp/volume python -m tfwb_agent.demo_train finished|crashed

Like a real job it has things that must not leave the site: a token in its config and on its
console, a local data path, and sample images. ``crashed`` kills itself with SIGKILL halfway
through, as the OOM killer or a pre-empted node would.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from .wandb_log import FILE_HEADER_LEN, read_records

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Fake secrets the leak check looks for in every bundle (never real credentials).
DEMO_TOKEN = "hf_DemoTokenAbCdEfGhIjKlMnOpQrStUv1234"
DEMO_DATA_DIR = "/data/patients/demo-scans"


def main(how: str) -> int:
    # Lazy: the trainer plugin, wandb and tensorflow take seconds to load; only the demo's
    # training needs them (the demo imports this module for its constants).
    import tfwb_trainer

    run = tfwb_trainer.init(project="tfwb-demo", name=f"demo-{how}", sensitive=["samples/*"],
                            config={"lr": 3e-3, "epochs": 3, "hf_token": DEMO_TOKEN, "data_dir": DEMO_DATA_DIR})
    print(f"loading data from {DEMO_DATA_DIR} with token {DEMO_TOKEN}", flush=True)

    # Lazy, as above: tensorflow and its company only for the training itself.
    import numpy as np
    import tensorflow as tf
    import wandb
    from sklearn.datasets import load_digits
    from tensorflow import keras

    tf.random.set_seed(0)
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int64")
    xv, yv, xt, yt = x[:200], y[:200], x[200:], y[200:]
    model = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    samples = [wandb.Image((xv[i, :, :, 0] * 255).astype(np.uint8), caption=f"patient-{i}") for i in range(4)]
    run.log({"samples/digits": samples})

    class CrashHalfway(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if how == "crashed" and epoch == 1:
                # The rows logged so far are handed to wandb off the training thread: have them
                # all in wandb's hands first (a busy machine could otherwise kill them in flight
                # and the crashed run would hold its sample images and nothing else).
                tfwb_trainer.current().drain()
                _wait_for_flush(run)
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    cb = tfwb_trainer.MetricsCallback(log_every_n_steps=10, batch_size=64, best_monitor=None,
                                      eval_data=(xv, yv), class_names=[str(i) for i in range(10)])
    model.fit(xt, yt, validation_data=(xv, yv), epochs=3, batch_size=64, verbose=0, callbacks=[cb, CrashHalfway()])
    tfwb_trainer.finish()
    return 0


def _wait_for_flush(run, timeout: float = 20.0) -> None:
    """A real job dies after hours, long after wandb wrote its rows; this one dies after seconds.
    wandb writes its log on its own schedule, so wait until the log on disk holds a training row
    (its loss), or the crashed run would hold its sample images and nothing else. Each look reads
    only the records written since the last one."""
    log = Path(run.dir).parent / f"run-{run.id}.wandb"
    deadline, start = time.monotonic() + timeout, FILE_HEADER_LEN
    while time.monotonic() < deadline:
        if log.exists():
            found, start = _loss_since(log, start)
            if found:
                return
        run.log({"crash/padding": "x" * 512})  # more data: the writer flushes a full block
        time.sleep(0.05)


def _loss_since(log: Path, start: int) -> tuple[bool, int]:
    """Whether a whole history record from ``start`` on logs a loss; where the next look starts."""
    records = read_records(log, start)
    while True:
        try:
            _, rec = next(records)
        except StopIteration as done:  # its value is the Tail: where the whole records end
            return False, done.value.end
        if rec.WhichOneof("record_type") == "history" and any(
                (item.key or "/".join(item.nested_key)).endswith("/loss") for item in rec.history.item):
            return True, start


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "finished"))
