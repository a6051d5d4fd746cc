"""tfwb-agent: watch offline wandb runs, redact, seal and deliver them exactly once."""
__version__ = "0.1.0"
