"""A training process that goes quiet, as the agent sees it: real wandb 0.31, offline.

usage: pause_run.py ROOT STEPS_BEFORE STEPS_AFTER [RUN_ID FIRST_STEP]
  Logs STEPS_BEFORE steps, prints PAUSED, then writes nothing until a line arrives on stdin
  (a long epoch, an evaluation, a stalled data loader: no system stats either), then logs
  STEPS_AFTER more steps and finishes (DONE).
  With RUN_ID and FIRST_STEP: resume run RUN_ID (a killed job started again with the same id),
  logging its steps from FIRST_STEP on, without a pause.
Each line printed is flushed: the test reads RUN <id> <dir>, PAUSED and DONE.
"""
import os
import sys

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
root, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resume_id = sys.argv[4] if len(sys.argv) > 4 else None
first = int(sys.argv[5]) if len(sys.argv) > 5 else 0
os.environ["WANDB_DATA_DIR"] = os.path.join(root, "wandb-data")
os.environ["WANDB_CACHE_DIR"] = os.path.join(root, "wandb-cache")
os.environ["WANDB_CONFIG_DIR"] = os.path.join(root, "wandb-config")

import wandb  # noqa: E402

kw = {"id": resume_id, "resume": "allow"} if resume_id else {}
run = wandb.init(project=os.environ.get("WRITER_PROJECT", "ct-pause"), dir=root, config={"lr": 0.01},
                 settings=wandb.Settings(x_disable_stats=True), **kw)
print("RUN", run.id, run.dir, flush=True)
step = first


def log_one():
    global step
    run.log({"train/loss": 1.0 / (step + 1), "train/acc": step / 1000.0}, step=step)
    step += 1


for _ in range(before):
    log_one()
if not resume_id:
    print("PAUSED", step, flush=True)
    sys.stdin.readline()
for _ in range(after):
    log_one()
run.finish()
print("DONE", step, flush=True)
