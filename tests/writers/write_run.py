"""A training process as the agent sees it: real wandb, offline, writing one run.

usage: write_run.py ROOT MODE STEPS [RATE]
  MODE finish: log STEPS steps and finish.
  MODE many:   RATE is a count N: write N finished runs of STEPS steps one after another, each
               under ROOT/<k> (k = 0..N-1): one wandb process for all, as a script that trains
               several models in a row does.
  MODE hold:   log STEPS steps, print READY, then keep logging until stdin closes, then finish.
  MODE kill:   log STEPS steps, print READY, keep logging until killed (the test sends SIGKILL).
Each line printed is flushed: the test reads READY and RUN <id> <dir>.
"""
import os
import sys
import time

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
root, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
os.environ["WANDB_DATA_DIR"] = os.path.join(root, "wandb-data")
os.environ["WANDB_CACHE_DIR"] = os.path.join(root, "wandb-cache")
os.environ["WANDB_CONFIG_DIR"] = os.path.join(root, "wandb-config")

import wandb  # noqa: E402

if mode == "many":
    for k in range(int(rate)):
        one = wandb.init(project=os.environ.get("WRITER_PROJECT", "ct-writer"), dir=os.path.join(root, str(k)),
                         config={"lr": 0.01, "mode": mode, "k": k})
        print("RUN", one.id, one.dir, flush=True)
        for s in range(steps):
            one.log({"train/loss": 1.0 / (s + 1), "train/acc": s / (steps + 1.0), "pad": "x" * 200})
        one.finish()
    sys.exit(0)

run = wandb.init(project=os.environ.get("WRITER_PROJECT", "ct-writer"), dir=root,
                 config={"lr": 0.01, "mode": mode})
print("RUN", run.id, run.dir, flush=True)
step = 0


def log_one():
    global step
    run.log({"train/loss": 1.0 / (step + 1), "train/acc": step / (steps + 1.0), "pad": "x" * 200})
    step += 1


for _ in range(steps):
    log_one()
if mode == "finish":
    run.finish()
    print("DONE", step, flush=True)
    sys.exit(0)
print("READY", step, flush=True)
if mode == "hold":
    import select
    while True:
        r, _, _ = select.select([sys.stdin], [], [], rate or 0.05)
        if r and not sys.stdin.readline():
            break
        log_one()
    run.finish()
    print("DONE", step, flush=True)
else:
    while True:
        log_one()
        time.sleep(rate or 0.05)
