"""Train a tiny CNN on scikit-learn's digits with model.fit, tracked by the tfwb trainer plugin.

    TFWB_RUNS_DIR=/runs python examples/train_keras.py --epochs 5
Run it again with the same TFWB_RUN_ID after a kill and it continues the same run.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfwb_trainer  # noqa: E402  (init() checks the volume before TensorFlow loads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--project", default="tfwb-examples")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hold-at-step", type=int, default=None, help="test hook: block at this step")
    a = p.parse_args(argv)

    tfwb_trainer.init(project=a.project, config=vars(a), sensitive=["samples/*"])

    import tensorflow as tf
    from tensorflow import keras
    from _data import digits, hold, small_cnn

    tf.random.set_seed(0)
    (xt, yt), (xv, yv), names = digits(a.train_samples)
    model = small_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(a.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    ckpt = tfwb_trainer.TrainingCheckpoint(model)
    start = ckpt.restore()
    print(f"START step={start.step} epoch={start.epoch}", flush=True)

    metrics = tfwb_trainer.MetricsCallback(a.log_every, a.batch_size, checkpoint=ckpt,
                                           best_monitor="val_loss", eval_data=(xv, yv), class_names=names)

    class Hold(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            hold(metrics.global_step, a.hold_at_step)

    model.fit(xt, yt, batch_size=a.batch_size, epochs=a.epochs, initial_epoch=start.epoch,
              validation_data=(xv, yv), callbacks=[metrics, Hold()], verbose=0, shuffle=True)
    print(f"DONE step={metrics.global_step}", flush=True)
    tfwb_trainer.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
