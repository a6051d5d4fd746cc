"""`tfwb-agent sync --to NAME`: deliver sealed (or imported) runs to a configured target.

Thin: parse, call ``deliver.engine.deliver_round`` in a loop, print. Without ``--once`` it keeps
going, waiting out a target's back-off, until nothing it may send is left unconfirmed. Where the
first round will most likely send, a ``wandb sync`` is started ahead (``deliver.ahead``) before
the engine is even imported: its start-up, not the agent's, is a small delivery's critical path.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any, NoReturn

import click

from .. import config as config_mod
from ..deliver import ahead, upload
from ..deliver.probe import NEEDS_A_PERSON
from ..deliver.work import pending_units
from .common import Context, echo_json, pass_ctx


class _Lines:
    """Plain log lines (journald keeps them) on a non-terminal."""

    def __call__(self, event: str, **info: Any) -> None:
        if event == "upload_start":
            click.echo(f"sending {info['run_id']} segment {info['segment']}: {info['rows']} rows, {info['bytes']} bytes")
        elif event == "upload_end":
            click.echo(f"wandb sync is done with {info['run_id']} segment {info['segment']}; the server's word decides")
        elif event == "segment_done":
            o = info["outcome"]
            click.echo(f"{o.run_id} segment {o.segment} -> {o.target}: {o.state}: {o.detail}")

    def close(self) -> None:
        pass


class _Bars:
    """Rich progress bars on a terminal: segments settled, bytes sent (as wandb finishes each run)."""

    def __init__(self) -> None:
        # Lazy: rich's progress bars take ~70 ms to import and show only on a terminal.
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        self.p = Progress(TextColumn("{task.description:<14}"), BarColumn(), TextColumn("{task.fields[shown]}"),
                          TimeElapsedColumn(), transient=False)
        self.p.start()
        self.runs = self.p.add_task("segments", total=0, shown="")
        self.sent = self.p.add_task("bytes sent", total=0, shown="")

    def _show(self) -> None:
        from rich.filesize import decimal  # lazy: rich, only on a terminal (as above)
        runs, sent = self.p.tasks[self.runs], self.p.tasks[self.sent]
        self.p.update(self.runs, shown=f"{int(runs.completed)}/{int(runs.total or 0)}")
        self.p.update(self.sent, shown=f"{decimal(int(sent.completed))}/{decimal(int(sent.total or 0))}")

    def __call__(self, event: str, **info: Any) -> None:
        if event == "round_start":
            self.p.update(self.runs, total=(self.p.tasks[self.runs].total or 0) + info["segments"])
        elif event == "upload_start":
            self.p.update(self.sent, total=(self.p.tasks[self.sent].total or 0) + info["bytes"])
        elif event == "upload_end":
            self.p.advance(self.sent, info["bytes"])
        elif event == "segment_done":
            o = info["outcome"]
            self.p.advance(self.runs, 1)
            self.p.console.print(f"{o.run_id} segment {o.segment}: {o.state} ({o.detail})")
        self._show()

    def close(self) -> None:
        self.p.stop()


@click.command("sync")
@click.option("--to", "target", required=True, metavar="NAME", help="A target from [targets.NAME].")
@click.option("--once", is_flag=True, help="Deliver what can go now, then exit: no waiting out a back-off "
              "(segments that wait for one confirmed meanwhile still go).")
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run.")
@click.option("--dry-run", is_flag=True, help="Say what policy would let go now; send nothing.")
@click.option("--retry-failed", is_flag=True, help="Try segments marked failed again.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Stop after this long, whatever is under way (uploads are stopped; the next sync resumes).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every outcome.")
@pass_ctx
def command(ctx: Context, target: str, once: bool, run_id: str | None, dry_run: bool, retry_failed: bool,
            timeout: float | None, as_json: bool) -> None:
    """Deliver sealed runs to target NAME, exactly once, as policy and connectivity allow.

    Each round probes NAME, opens the bundles the [[policy]] rules let go now, asks the server
    how much of each run it already holds, uploads only the rest with the installed `wandb
    sync`, and counts a segment delivered only when the server confirms it. Without --once it
    waits out an offline target's back-off until everything allowed is confirmed.

    \b
    Examples:
      tfwb-agent sync --to local-server --dry-run   what policy lets go now, and why not the rest
      tfwb-agent sync --to local-server --once      one round (what the systemd timer runs)
      tfwb-agent sync --to local-server --run ID    one run only

    Exit status: 0 the rounds ran (what arrived and what still waits, and why, is in the
    output; an offline target is not an error); 3 the target's key is rejected or missing
    (see `targets check`); 1 --timeout ran out, or any other error; 128+N stopped by signal N
    (143 SIGTERM, 130 SIGINT). A stopped sync stops its `wandb sync` uploads too.
    """
    cfg = ctx.config
    ledger = ctx.ledger()
    if run_id and not any(u.run_id == run_id for u in pending_units(ledger)) and not ledger.has_run(run_id):
        raise click.ClickException(f"this host holds no run or bundle {run_id!r} (`tfwb-agent status` lists its runs, "
                                   "`tfwb-agent import` takes bundles carried in)")
    _stop_on_signals(timeout)  # from here a stop kills the wandb sync started ahead too (upload.stop_all)
    early: upload.Warm | None = None
    rounds: list[dict[str, Any]] = []
    stopped: _Stopped | None = None
    try:
        early = ahead.start(ledger, cfg, target, only_run=run_id, dry_run=dry_run, retry_failed=retry_failed)
        _rounds(ctx, ledger, target, once, run_id, dry_run, retry_failed, as_json, early, rounds)
    except _Stopped as exc:
        stopped = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what is left (the report) may simply be cut
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ahead.finish(early)
    _end(ledger, _report(ledger, target, run_id, rounds, stopped, as_json))


def _end(ledger: Any, code: int) -> NoReturn:
    """Exit with ``code`` now that everything is done (the ledger committed, the report out):
    the ledger closed, logs and output flushed, then no interpreter finalization of the modules
    delivery loaded (crypto, HTTP, wandb's records): 0.06-0.08 s measured after the report was
    out, which a caller (a timer, a script, the 10 % delta benchmark) waited for `sync` to end."""
    ledger.close()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _rounds(ctx: Context, ledger: Any, target: str, once: bool, run_id: str | None, dry_run: bool,
            retry_failed: bool, as_json: bool, early: upload.Warm | None, rounds: list[dict[str, Any]]) -> None:
    """The rounds, until done (each round's report appended to ``rounds``); ``_Stopped`` where a
    signal or --timeout stops them."""
    # Lazy: the engine (sealing's and opening's crypto, HTTP, ~0.3 s) loads while the wandb sync
    # started ahead imports wandb, not before it starts.
    from ..deliver import engine

    cfg = ctx.config
    reporter = _Quiet() if as_json else (_Bars() if sys.stdout.isatty() else _Lines())
    if isinstance(reporter, _Bars):
        # The bars print each outcome; the log adds only what needs a look (retries, failures),
        # printed above the bars instead of through them.
        from rich.logging import RichHandler  # lazy: rich, only on a terminal
        handler: logging.Handler = RichHandler(console=reporter.p.console, show_time=False, show_path=False)
        logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
        handler.addFilter(_not_an_outcome)
    elif not as_json:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_an_outcome)
    holder = f"sync --to {target}"
    first = True
    try:
        while True:
            if engine.sync_settings(cfg).live and not dry_run:
                from ..sealing import seal_live_segments  # lazy: see tests/test_import_graph.py LAZY

                with ctx.writing(holder):
                    seal_live_segments(ledger, cfg)
            try:
                rr = engine.deliver_round(ledger, cfg, target, only_run=run_id, dry_run=dry_run, force_probe=first,
                                          wait_for_others=True, retry_failed=retry_failed and first, report=reporter,
                                          exclusive=lambda: ctx.writing(holder), ahead=early if first else None)
            except config_mod.ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            first = False
            rounds.append(rr.as_dict())
            busy = rr.waiting or any(o.state in ("pending", "uploading") for o in rr.outcomes)
            progressed = any(o.state == "confirmed" for o in rr.outcomes)
            if once and busy and progressed and not dry_run:
                continue  # a later segment was waiting for one this round confirmed: send it now
            if once or dry_run or not busy or rr.status in NEEDS_A_PERSON:
                break
            row = engine.target_row(ledger, target) or {}
            nxt = row.get("next_attempt") or 0
            # Wait out the back-off the engine chose (a schedule, not a synchronisation guess).
            time.sleep(min(max(nxt - time.time(), 0.5), 30.0))
    finally:
        reporter.close()


def _report(ledger: Any, target: str, run_id: str | None, rounds: list[dict[str, Any]], stopped: "_Stopped | None",
            as_json: bool) -> int:
    """Print what this call did; the exit status it calls for."""
    last = rounds[-1] if rounds else {"status": None, "detail": None, "waiting": 0}
    outcomes = [o for r in rounds for o in r["outcomes"]]
    this_call = call_counts(outcomes)
    if as_json:
        echo_json({"target": target, "status": last["status"], "detail": last["detail"], "rounds": len(rounds),
                   "waiting": last["waiting"], "stopped": str(stopped) if stopped else None,
                   "outcomes": outcomes, "this_call": this_call, "deliveries": _summary(ledger, target, run_id)})
    else:
        for line in text_report(target, last, outcomes, this_call):
            click.echo(line)
    if stopped is not None:
        click.echo(f"Error: {stopped}", err=True)
        return stopped.code
    if last["status"] in NEEDS_A_PERSON:
        return 3
    return 0


# Outcomes the reporters print as they happen (segment_done); the rest (what policy holds or
# a dry run would send) only the closing report can show.
_REPORTED_LIVE = ("confirmed", "pending", "failed")


def call_counts(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    """How each segment this call touched ended (its last outcome when rounds repeat it)."""
    last = {(o["run_id"], o["segment"]): o["state"] for o in outcomes}
    counts: dict[str, int] = {}
    for state in last.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def text_report(target: str, last: dict[str, Any], outcomes: list[dict[str, Any]],
                this_call: dict[str, int]) -> list[str]:
    """What --json says, as lines: the target, each segment the live lines did not show, and
    what THIS call did (not the ledger's all-time count: `tfwb-agent status` has that)."""
    status = last["status"] or "not probed"
    lines = [f"target {target}: {status}" + (f" ({last['detail']})" if last["detail"] else "")]
    seen: dict[tuple[str, int], dict[str, Any]] = {(o["run_id"], o["segment"]): o for o in outcomes}
    for o in seen.values():
        if o["state"] not in _REPORTED_LIVE:
            lines.append(f"{o['run_id']} segment {o['segment']}: {o['state'].replace('_', ' ')} ({o['detail']})")
    counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in sorted(this_call.items()))
    parts = [f"this call: {counts}"] if counts else []
    if last["waiting"]:  # segments policy lets go that were not sent (offline, key, back-off)
        parts.append(f"{last['waiting']} segment(s) wait for {target} ({status})")
    lines.append("; ".join(parts) if parts else "nothing to deliver")
    return lines


def _not_an_outcome(record: logging.LogRecord) -> bool:
    """The engine logs each segment's outcome for the daemon's journal; sync prints it already."""
    return not (record.name == "tfwb_agent.deliver" and str(record.msg).startswith("%s segment %d -> %s:"))


class _Stopped(Exception):
    """SIGTERM, SIGINT or --timeout: the uploads under way were stopped, their groups killed."""

    def __init__(self, why: str, code: int, killed: int) -> None:
        super().__init__(f"sync {why}: {killed} upload(s) under way were stopped; the next sync asks the server "
                         "what arrived and sends only the rest")
        self.code = code


def _stop_on_signals(timeout: float | None) -> None:
    """SIGTERM, SIGINT and the --timeout alarm stop sync at once, wherever it is: its uploads'
    process groups are killed (none starts after), then ``_Stopped`` unwinds it (transactions
    roll back, locks go with their files)."""
    def stop(why: str, code: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_IGN)  # once is enough: let the unwinding finish
        raise _Stopped(why, code, upload.stop_all())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop(f"stopped by {signal.Signals(signum).name}", 128 + signum))
    if timeout:
        signal.signal(signal.SIGALRM, lambda _s, _f: stop(f"stopped: --timeout {timeout:g}s ran out", 1))
        signal.setitimer(signal.ITIMER_REAL, timeout)


class _Quiet:
    def __call__(self, event: str, **info: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _summary(ledger: Any, target: str, run_id: str | None) -> dict[str, Any]:
    keep = ("run_id", "segment", "state", "attempts", "rows_sent", "bytes_sent", "server_rows", "reason", "last_error")
    rows = [{k: d[k] for k in keep} for d in ledger.deliveries(target=target, run_id=run_id)]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"counts": counts, "rows": rows}
