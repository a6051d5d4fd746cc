"""`tfwb-agent demo`: the whole pipeline on a temporary volume, no server needed."""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import click

from .common import echo_json
from ..demo import run_demo


@click.command("demo")
@click.option("--to", "to_url", metavar="URL", help="Also deliver to this W&B server (API key in $WANDB_API_KEY).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to put the volume, keys and state (default: a new temporary directory).")
@click.option("--keep", is_flag=True, help="Keep the work directory to look around afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(to_url: str | None, work_dir: Path | None, keep: bool, as_json: bool) -> None:
    """Train a tiny TensorFlow model offline (plus a crashed run), then classify, redact,
    seal, export, import and leak-check, all on embedded defaults, and print a report.

    Needs the trainer extra: pip install -e '.[trainer]'. Takes a minute or two on a laptop CPU.
    """
    missing = [m for m in ("tensorflow", "sklearn", "tfwb_trainer") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"the demo trains a model and needs the trainer extra ({', '.join(missing)} "
                                   "missing): pip install -e '.[trainer]'")

    if work_dir is not None and work_dir.exists() and any(work_dir.iterdir()):
        raise click.ClickException(f"{work_dir} is not empty; give a new or empty directory")
    work = work_dir or Path(tempfile.mkdtemp(prefix="tfwb-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    try:
        report = run_demo(work, say, to_url)
    except RuntimeError as exc:
        raise click.ClickException(f"{exc}\n(work directory kept: {work})") from None
    if as_json:
        echo_json(report.as_dict())
    else:
        _print(report)
    if not keep and work_dir is None and report.ok:
        shutil.rmtree(work, ignore_errors=True)
    elif not as_json:
        click.echo(f"work directory: {work}")
    if not report.ok:
        raise SystemExit(1)


def _print(r) -> None:
    click.echo("")
    click.echo(f"runs ({len(r.runs)}):")
    for run in r.runs:
        click.echo(f"  {run['run_id']}  {run['project']}  {run['ended'] or '-':<8}  {run['steps']:>4} steps  -> {run['state']}"
                   + (f"  ({run['last_error']})" if run["last_error"] else ""))
    click.echo(f"bundles ({len(r.bundles)}), exported and imported on the gateway: {len(r.imported)}")
    for b in r.bundles:
        click.echo(f"  {b['bundle']}  {b['bytes']:,} bytes")
    click.echo("redaction (default policy):")
    for k, v in sorted(r.redaction.items()):
        click.echo(f"  {k}: {v}")
    if r.leaks:
        click.echo(f"LEAK CHECK FAILED ({len(r.leaks)}):")
        for leak in r.leaks:
            click.echo(f"  {leak}")
    else:
        click.echo(f"leak check: no secret, host or home path and no original media bytes in any of "
                   f"{r.checked_files} decrypted files")
    for d in r.delivered:
        click.echo(f"delivery of {d['run_id']} (segment {d['segment']}): {d['state']}: {d.get('reason') or d.get('last_error')}")
    click.echo(f"{'OK' if r.ok else 'FAILED'} in {r.seconds:.0f}s")
