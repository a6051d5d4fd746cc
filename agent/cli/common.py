"""What every command shares: loading the config, opening the ledger, printing JSON."""
from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, Callable, Iterator

import click

from .. import config as config_mod
from .. import statelock
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
        except LedgerError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(
                f"cannot open the ledger at {self.config.ledger_path}: {exc}. "
                "Check state_dir in the config and that this user may write there.") from None


    @contextlib.contextmanager
    def writing(self, command: str) -> Iterator[None]:
        """Hold the state directory's lock while this command changes state: one writer at a
        time (the daemon included). Waits while another process holds it, and says so."""
        state_dir = self.config.state_dir
        try:
            lock = statelock.StateLock(state_dir, command=command)
            lock.acquire(wait=True, announce=lambda message: click.echo(message, err=True))
        except OSError as exc:
            raise click.ClickException(
                f"cannot lock the state directory {state_dir}: {exc.strerror or exc}; check state_dir in the "
                "config and that this user may write there") from None
        try:
            yield
        finally:
            lock.release()


def pass_ctx(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared ``Context`` as its first argument."""
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: Context, *args: Any, **kwargs: Any) -> Any:
        return fn(obj, *args, **kwargs)
    return wrapper


def echo_json(data: Any) -> None:
    """The one shape of --json output: one object on stdout, 2-space indent, sorted keys."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def json_always(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For a command whose result is always JSON: accept --json too, so that a script may pass
    it to every command alike (README, Commands)."""
    @click.option("--json", "_as_json", is_flag=True, help="Accepted for uniformity: the output is always JSON.")
    @functools.wraps(fn)
    def wrapper(*args: Any, _as_json: bool = False, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper

