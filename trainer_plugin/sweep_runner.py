"""Handing out a sweep's trials: the ``Runner`` draws the next trial from W&B's engine (or takes
over one whose holder died), holds its lease (``Heartbeat``, which also asks hyperband whether to
stop it) and records how it ended, with the metric read back from the run's ``.wandb`` files.
The files themselves are ``sweepstore``'s; starting trials is ``sweep``'s.
"""
from __future__ import annotations

import json
import math
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .sweep_config import engine, json_clean, metric_name
from .sweepstore import MAX_ATTEMPTS, SweepStore, Trial

DEFAULT_LEASE_S = 120.0


# -- what the engine sees ----------------------------------------------------------------------

def sweep_runs(cfg: Dict[str, Any], trials: Sequence[Trial], now: Optional[float] = None) -> List[Any]:
    """The trials as the engine's SweepRuns (what W&B's server would hand its controller)."""
    sweeps = engine()
    metric = metric_name(cfg)
    out = []
    for t in trials:
        state = t.state(now)
        engine_state = {"finished": "finished", "stopped": "finished", "failed": "failed",
                        "crashed": "crashed", "running": "running", "expired": "running"}[state]
        result = t.outcome() or {}
        summary, history = {}, []
        if metric and result.get("metric") is not None:
            summary = {metric: result["metric"]}
            history = [{metric: v} for v in result.get("history", [])]
        # By the field aliases (W&B's GraphQL names): pydantic 2 ignores the field names here.
        out.append(sweeps.SweepRun(name=t.run_id, state=engine_state,
                                   config={k: {"value": v} for k, v in t.params.items()},
                                   summaryMetrics=summary, sampledHistory=history))
    return out


# -- reading a finished trial's run ------------------------------------------------------------

def read_metric(runs_root: Path, run_id: str, metric: Optional[str], wait: bool = True) -> Dict[str, Any]:
    """The metric's history and final value, read from the run's `.wandb` files on the volume."""
    from . import history as _history
    from ._wandb_log import LogError, read_records

    values: List[float] = []
    summary = None
    files = _history.prior_run_files(Path(runs_root) / "wandb", run_id)
    # wandb's writer (its own process) may still be closing the file after finish() returned.
    if wait:
        _history.wait_for_writers(files, timeout=60.0)
    for f in files:
        if not metric:
            break
        try:
            for _, rec in read_records(f):
                kind = rec.WhichOneof("record_type")
                items = rec.history.item if kind == "history" else rec.summary.update if kind == "summary" else ()
                for it in items:
                    if (it.key or "/".join(it.nested_key)) == metric:
                        v = json.loads(it.value_json)
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            if kind == "history":
                                values.append(float(v))
                            else:
                                summary = float(v)
        except LogError:
            pass  # a torn tail: what is whole counts
    final = summary if summary is not None else (values[-1] if values else None)
    if final is not None and not math.isfinite(final):
        final = None
    return {"metric": final, "history": values}


# -- handing out trials ------------------------------------------------------------------------

class Runner:
    """Draws trials from one sweep, holds their leases, records how they ended."""

    def __init__(self, store: SweepStore, runs_root: Path, lease_s: float = DEFAULT_LEASE_S,
                 out: Any = None) -> None:
        self.store, self.runs_root, self.lease_s = store, Path(runs_root), float(lease_s)
        self.sweep = store.sweep()
        self.cfg = self.sweep["config"]
        self.out = out if out is not None else sys.stderr
        self.overhead_s = 0.0
        # Once per process, not per trial: the engine's search modules and wandb's record
        # types (for reading metrics back) load here, outside any trial's timing.
        import importlib
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mod in ("sweeps.grid_search", "sweeps.random_search", "sweeps.bayes_search",
                        "sweeps.hyperband_stopping", "wandb.proto.wandb_internal_pb2"):
                importlib.import_module(mod)

    def say(self, msg: str) -> None:
        print(f"tfwb sweep {self.sweep['name']}: {msg}", file=self.out, flush=True)

    def acquire(self) -> Optional[tuple]:
        """(trial, attempt) this process now holds, or None when the sweep has nothing left."""
        while True:
            trials = self.store.trials()
            now = time.time()
            for t in trials:  # a dead container's trial first: it is handed out once more
                if t.state(now) == "expired":
                    attempt = self.store.take_over(t, self.lease_s)
                    if attempt is not None:
                        self.say(f"trial {t.number}: its holder's lease ran out; running it again "
                                 f"(attempt {attempt} of {MAX_ATTEMPTS})")
                        return self.store.trial(t.number), attempt
            cap = self.cfg.get("run_cap")
            full = cap is not None and len(trials) >= cap
            params = None
            if not full:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    proposal = engine().next_run(self.cfg, sweep_runs(self.cfg, trials, now))
                if proposal is not None:
                    params = {k: v["value"] for k, v in proposal.config.items()}
            if params is None:  # run cap reached or grid exhausted
                waiting = [t for t in trials if t.state(now) == "running" and t.attempts < MAX_ATTEMPTS]
                if not waiting:
                    return None
                # A trial held elsewhere may still come back to us if its holder died.
                until = min(t.lease(t.attempts)["lease_until"] for t in waiting)
                time.sleep(max(0.05, min(until - time.time() + 0.05, self.lease_s / 4)))
                continue
            number = len(trials) and max(t.number for t in trials) + 1
            run_id = f"{self.sweep['id'][:40]}-{number:04d}-{secrets.token_hex(2)}"
            if self.store.create_trial(number, json_clean(params), run_id, self.lease_s):
                return self.store.trial(number), 1
            # another process created this number first: look again

    def hold(self, trial: Trial, attempt: int, on_lost: Callable[[], None],
             on_stop: Optional[Callable[[], None]] = None) -> "Heartbeat":
        return Heartbeat(self, trial, attempt, on_lost, on_stop)

    def should_stop(self, trial: Trial, attempt: int) -> bool:
        """Hyperband (the engine's ``stop_runs``) over every trial, ours read live from its run."""
        metric = metric_name(self.cfg)
        # What the trial logged (its own live file); what wandb flushed of it, for a trial
        # that does not log through tfwb_trainer.
        live = (self.store.live_values(trial.number, attempt)
                or read_metric(self.runs_root, trial.run_id, metric, wait=False)["history"])
        runs = sweep_runs(self.cfg, self.store.trials())
        for i, r in enumerate(runs):
            if r.name == trial.run_id:
                runs[i] = engine().SweepRun(name=r.name, state="running", config=r.config,
                                             sampledHistory=[{metric: v} for v in live])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return any(r.name == trial.run_id for r in engine().stop_runs(self.cfg, runs))

    def record(self, trial: Trial, attempt: int, state: str, exit_code: Optional[int],
               train_s: float, overhead_s: float) -> Dict[str, Any]:
        t0 = time.perf_counter()
        result = read_metric(self.runs_root, trial.run_id, metric_name(self.cfg))
        outcome = {"state": state, "exit_code": exit_code, "run_id": trial.run_id, "attempt": attempt,
                   "finished_at": time.time(), "train_s": train_s, **result}
        outcome["overhead_s"] = overhead_s + (time.perf_counter() - t0)
        self.store.finish(trial.number, attempt, outcome)
        self.say(f"trial {trial.number} {state}" + (f", {metric_name(self.cfg)}={result['metric']:.6g}"
                                                    if result["metric"] is not None else ""))
        return outcome


class Heartbeat:
    """Renews a trial's lease from a thread until stopped; tells the caller if it was lost."""

    def __init__(self, runner: Runner, trial: Trial, attempt: int, on_lost: Callable[[], None],
                 on_stop: Optional[Callable[[], None]] = None) -> None:
        self.runner, self.trial, self.attempt, self.on_lost = runner, trial, attempt, on_lost
        self.on_stop = on_stop if runner.cfg.get("early_terminate") else None
        self.stopped = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True, name="tfwb-sweep-lease")

    def __enter__(self) -> "Heartbeat":
        self.runner.store.renew(self.trial.number, self.attempt, self.runner.lease_s)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    def _loop(self) -> None:
        tick = min(self.runner.lease_s / 3, 5.0) if self.on_stop else self.runner.lease_s / 3
        while not self._stop.wait(tick):
            try:
                stop = self.on_stop is not None and self.runner.should_stop(self.trial, self.attempt)
            except Exception as exc:  # the lease must keep being renewed whatever the engine does
                self.runner.say(f"trial {self.trial.number}: early termination check failed ({exc!r}); "
                                "the trial runs to its end")
                self.on_stop, stop = None, False
            if stop and self.on_stop is not None:
                self.runner.say(f"trial {self.trial.number}: stopped early by hyperband")
                self.stopped = True
                self.on_stop()
                self.on_stop = None
            if not self.runner.store.renew(self.trial.number, self.attempt, self.runner.lease_s):
                self.runner.say(f"trial {self.trial.number}: taken over by another process; stopping it here")
                self.on_lost()
                return
