"""What every command shares: loading the config, opening the ledger, printing JSON."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from .. import config as config_mod
from ..ledger import Ledger, LedgerError


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: config_mod.Config | None = None

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            try:
                self._config = config_mod.load(self.config_path)
            except config_mod.ConfigError as exc:
                raise click.ClickException(f"config error: {exc}") from None
        return self._config

    def ledger(self) -> Ledger:
        try:
            return Ledger(self.config.ledger_path)
        except (LedgerError, OSError) as exc:
            raise click.ClickException(
                f"cannot open the ledger at {self.config.ledger_path}: {exc}. "
                "Check state_dir in the config and that this user may write there.") from None


def pass_ctx(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared ``Context`` as its first argument."""
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: Context, *args: Any, **kwargs: Any) -> Any:
        return fn(obj, *args, **kwargs)
    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
