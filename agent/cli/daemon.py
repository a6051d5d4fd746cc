"""`tfwb-agent daemon`: watch the shared volume and run the pipeline until stopped."""
from __future__ import annotations

import logging
import os
import sys

import click

from .. import config as config_mod
from ..daemon import Daemon, DaemonError
from ..pipeline import stages
from .common import Context, pass_ctx


def setup_logging(verbose: bool) -> None:
    # Under systemd, journald stamps each line itself; on a terminal we add the time.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)
    logging.getLogger("watchdog").setLevel(logging.WARNING)


@click.command("daemon")
@click.option("-v", "--verbose", is_flag=True, help="Log every event, not just state changes.")
@pass_ctx
def command(ctx: Context, verbose: bool) -> None:
    """Watch the configured roots and keep the ledger current.

    Learns of runs from filesystem events (inotify; or polling with watch.mode = "poll" on
    NFS/Lustre, where other hosts' writes raise no events), plus a reconcile pass at start and
    every watch.reconcile_seconds. SIGTERM stops it cleanly; SIGHUP reloads the config.
    """
    setup_logging(verbose)
    try:
        daemon = Daemon(ctx.config_path, stages=stages())
    except config_mod.ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None
    try:
        sys.exit(daemon.run())
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None

