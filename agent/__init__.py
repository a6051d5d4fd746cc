"""tfwb-agent: watch offline wandb runs, redact, seal and deliver them exactly once."""
__version__ = "0.1.0"

from .wandb_proto import preload as _preload_wandb_records  # noqa: E402

_preload_wandb_records()  # wandb's record types without the wandb SDK: see wandb_proto.py
