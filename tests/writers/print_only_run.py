"""A training process that only prints: real wandb, offline, one run with no history row.

usage: print_only_run.py ROOT
Prints RUN <id> <dir> (flushed), then a few console lines, then finishes the run.
"""
import os
import sys

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
root = sys.argv[1]
for kind in ("DATA", "CACHE", "CONFIG"):
    os.environ[f"WANDB_{kind}_DIR"] = os.path.join(root, f"wandb-{kind.lower()}")

import wandb  # noqa: E402

run = wandb.init(project=os.environ.get("WRITER_PROJECT", "ct-print-only"), dir=root, config={"lr": 0.1})
print("RUN", run.id, run.dir, flush=True)
for i in range(3):
    print(f"epoch {i}: nothing logged, only printed", flush=True)
run.finish()
