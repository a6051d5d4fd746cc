"""The one exception a run's redaction raises for a problem of that run (callers quarantine on it)."""


class RedactError(Exception):
    """A run that cannot be redacted (no `.wandb` file, a file escaping the run ...)."""
