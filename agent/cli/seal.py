"""`tfwb-agent seal RUN_DIR`: seal one run directory into the outbox now (scripts, tests).

The daemon calls the same domain function, ``tfwb_agent.seal.seal_run``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import runs
from ..seal import RunIdentity, Segment, SealError, keys_config, recover_outbox, seal_keys, seal_run
from ..seal.keystore import KeyFileError
from ..seal.outbox import outbox_dir
from .common import Context, echo_json, json_always, pass_ctx


@click.command("seal")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--segment", type=click.IntRange(min=0), default=0, show_default=True, help="Segment number.")
@click.option("--byte-range", metavar="START:END", help="The part of the run's .wandb log this segment covers; "
              "END also limits how much of the log is packed.")
@click.option("--report", "report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The redaction report (JSON) to put into the manifest.")
@click.option("--progress", is_flag=True, help="One JSON line per step on stderr.")
@json_always
@pass_ctx
def command(ctx: Context, run_dir: Path, segment: int, byte_range: str | None, report_file: Path | None,
            progress: bool) -> None:
    """Seal RUN_DIR (already redacted) as a signed, encrypted bundle in the outbox."""
    cfg = ctx.config
    try:
        keys = seal_keys(keys_config(cfg))
    except (KeyFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    start, end = 0, None
    if byte_range:
        try:
            a, b = byte_range.split(":")
            start, end = int(a or 0), (int(b) if b else None)
        except ValueError:
            raise click.BadParameter("expected START:END in bytes", param_hint="--byte-range") from None
    facts = runs.inspect(run_dir)
    if not facts.run_id:
        raise click.ClickException(f"{run_dir}: cannot tell the run's id ({facts.error or 'no run record'})")
    report = _manifest_report(report_file)

    def show(event: str, **info: object) -> None:
        sys.stderr.write(json.dumps({"event": event, **info}) + "\n")
        sys.stderr.flush()

    with ctx.writing("seal"):
        ledger = ctx.ledger()
        recover_outbox(outbox_dir(cfg))
        try:
            sealed = seal_run(cfg, keys, ledger, run_dir, RunIdentity(facts.run_id, facts.project, facts.entity,
                              facts.wandb_version), Segment(segment, start, end), report, run_key=str(run_dir),
                              log_path=Path(facts.log_path) if facts.log_path else None,
                              progress=show if progress else (lambda e, **i: None))
        except SealError as exc:
            raise click.ClickException(f"sealing {run_dir} failed: {exc}") from None
    echo_json({"bundle": str(sealed.path), "signature": str(sealed.sig_path), "bundle_id": sealed.bundle_id,
               "content_id": sealed.content_id, "run_id": sealed.run_id, "segment": sealed.segment,
               "byte_start": sealed.byte_start, "byte_end": sealed.byte_end, "size": sealed.size,
               "reused": sealed.reused})


def _manifest_report(report_file: Path | None) -> dict:
    """What ``--report`` puts into the manifest. Of ``tfwb-agent redact``'s output only its
    report, as the daemon puts it: the paths beside it (the run's directory, the copy's) are
    this node's and name its users and data; they never leave in a bundle."""
    if report_file is None:
        return {"note": "sealed by hand with tfwb-agent seal"}
    try:
        doc = json.loads(report_file.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{report_file}: not a JSON report ({exc}); give the output of "
                                 "`tfwb-agent redact RUN --out DIR`", param_hint="--report") from None
    if isinstance(doc, dict) and isinstance(doc.get("report"), dict):
        return doc["report"]
    if isinstance(doc, dict) and not ({"run_dir", "out"} & doc.keys()):
        return doc
    raise click.BadParameter(f"{report_file}: not a redaction report; give the output of "
                             "`tfwb-agent redact RUN --out DIR`", param_hint="--report")
