"""Train a tiny CNN on scikit-learn's digits with a tf.GradientTape loop, tracked by tfwb.

The loop never waits for the device on a step it does not log: the loss tensor is handed to
the logger as-is, and read only every --log-every steps. Checkpoints every --ckpt-every steps
let a restarted job (same TFWB_RUN_ID) continue mid-epoch.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfwb_trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--project", default="tfwb-examples")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hold-at-step", type=int, default=None, help="test hook: block at this step")
    a = p.parse_args(argv)

    tfwb_trainer.init(project=a.project, config=vars(a))

    import numpy as np
    import tensorflow as tf
    from tensorflow import keras
    from _data import digits, hold, small_cnn

    tf.random.set_seed(0)
    (xt, yt), (xv, yv), names = digits(a.train_samples)
    model = small_cnn(keras)
    opt = keras.optimizers.Adam(a.lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    acc = keras.metrics.SparseCategoricalAccuracy()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        acc.update_state(y, logits)
        return loss

    ckpt = tfwb_trainer.TrainingCheckpoint(model, opt)
    start = ckpt.restore()
    print(f"START step={start.step} epoch={start.epoch}", flush=True)
    steps_per_epoch = len(yt) // a.batch_size
    log = tfwb_trainer.StepLogger(a.log_every, a.batch_size, initial_step=start.step, optimizer=opt)
    best = tfwb_trainer.BestKeeper(model.save_weights, monitor="val_accuracy", filename="best.weights.h5")

    for epoch in range(start.epoch, a.epochs):
        # A fixed order per epoch, so a restart can skip exactly the batches already trained.
        order = np.random.default_rng(epoch).permutation(len(yt))
        done_in_epoch = log.global_step - epoch * steps_per_epoch
        acc.reset_state()
        for b in range(done_in_epoch, steps_per_epoch):
            idx = order[b * a.batch_size:(b + 1) * a.batch_size]
            loss = train_step(tf.constant(xt[idx]), tf.constant(yt[idx]))
            # Tensors and a lazy metric go in unread; the logger reads them only if it logs.
            log.log_step({"loss": loss, "accuracy": acc.result})
            if log.global_step % a.ckpt_every == 0:
                ckpt.save(step=log.global_step, epoch=epoch)
            hold(log.global_step, a.hold_at_step)
        val_acc = float(np.mean(np.argmax(model(xv, training=False), -1) == yv))
        log.log_epoch(epoch, {"accuracy": acc.result(), "val_accuracy": val_acc})
        best.update(val_acc, epoch=epoch, step=log.global_step)
        ckpt.save(step=log.global_step, epoch=epoch + 1)

    tfwb_trainer.log_evaluation(lambda x: model(x, training=False), xv, yv, names)
    print(f"DONE step={log.global_step}", flush=True)
    tfwb_trainer.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
