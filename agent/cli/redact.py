"""`tfwb-agent redact`: show what the policy does to one run, or write the redacted copy."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from .. import config as config_mod
from ..redact import policy as policy_mod
from .common import Context, echo_json, json_always, pass_ctx
from ..redact.run import RedactError, plan_run, redact_run


@click.command("redact")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print what the policy would do; write nothing.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the redacted copy to OUT/<run directory name>.")
@json_always
@pass_ctx
def command(ctx: Context, run_dir: Path, dry_run: bool, out_dir: Path | None) -> None:
    """Apply the site's [redact] policy to RUN_DIR (an offline-run-* directory).

    The original is only read. The report lists counts per rule, never an original value."""
    if dry_run == (out_dir is not None):
        raise click.UsageError("give exactly one of --dry-run or --out DIR")
    cfg = ctx.config
    policy = policy_mod.policy_from_config(cfg)
    try:
        secret = policy_mod.load_secret(policy, cfg)
        note = None
    except config_mod.ConfigError as exc:
        if not dry_run:
            raise click.ClickException(f"config error: {exc}") from None
        # Tags are not shown in a dry run, so an ephemeral secret gives the same counts.
        secret, note = os.urandom(32), f"note: {exc}; this dry run used a throwaway secret"
    made = [] if out_dir is None else [d for d in (out_dir / run_dir.name, out_dir) if not d.exists()]
    try:
        if dry_run:
            report = plan_run(run_dir, policy, secret, cfg.map_path)
        else:
            report = redact_run(run_dir, out_dir / run_dir.name, policy, secret, cfg.map_path)
    except (RedactError, OSError) as exc:
        # A refused run leaves no part of a copy behind (its header alone names the run).
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise click.ClickException(str(exc) + ("; no copy was left in --out" if made else "")) from None
    echo_json({"run_dir": str(run_dir), "dry_run": dry_run,
               **({"out": str(out_dir / run_dir.name)} if out_dir else {}),
               "policy": policy.describe(), "report": report.to_dict()})
    if note:
        click.echo(note, err=True)
