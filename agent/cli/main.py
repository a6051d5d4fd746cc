"""`tfwb-agent`: the command-line entry point. Each command lives in its own small module."""
from __future__ import annotations

import importlib
from typing import Any

import click

from .. import __version__, failures
from .common import Context


class _Group(click.Group):
    """The command group, and the last word on failures a user can cause (a full disk, a
    damaged or read-only ledger, a denied permission) wherever a command meets them: a message
    that says what and where, exit 1, never a traceback. Anything else is a bug and shows."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            obj = ctx.obj if isinstance(ctx.obj, Context) else None
            loaded = obj._config if obj is not None else None
            message = failures.user_message(exc, loaded.ledger_path if loaded else None)
            if message is None:
                raise
            raise click.ClickException(message) from None

    # Commands load when asked for, so that `status` (a liveness probe every few seconds) does
    # not import sealing, delivery and the demo's training first.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        try:
            return importlib.import_module(f"{__package__}.{module}").command
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this build; any other missing import is a bug.
            if exc.name != f"{__package__}.{module}":
                raise
            return None


# Command name -> the module that holds it (as `command`, a click command or group).
COMMANDS = {
    "status": "status", "runs": "runs", "scan": "scan", "daemon": "daemon", "config": "config_cmd",
    "keys": "keys", "seal": "seal", "inspect": "inspect", "export": "export", "import": "import_",
    "redact": "redact", "audit": "audit", "ledger": "ledger_cmd",
    "sync": "sync", "targets": "targets", "approve": "approve",
    "demo": "demo",
    "prune": "prune", "receipts": "receipts",
    "health": "health",
}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="PATH", envvar="TFWB_AGENT_CONFIG", show_envvar=True,
              help="Agent config (TOML). Default: /etc/tfwb-agent/agent.toml.")
@click.version_option(__version__, prog_name="tfwb-agent")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Watch offline wandb runs on a shared volume, redact and seal them into encrypted, signed
    bundles, and deliver each exactly once to a W&B server, or carry it across an air gap.

    \b
    Typical use:
      tfwb-agent config check          validate the config and show what is in force
      tfwb-agent daemon                watch, classify, redact and seal (under systemd)
      tfwb-agent status                every run, where it is, how it ended
      tfwb-agent sync --to NAME        deliver sealed runs to a configured target
    """
    ctx.obj = Context(config_path)
