"""Hyperparameter sweeps with no server: W&B's own search engine, state on the shared volume.

    tfwb_trainer.sweep(config, train, count=10)              # in Python, like wandb.agent
    python -m tfwb_trainer.sweep sweep.yaml --count 10 -- python train.py --epochs 3
    python -m tfwb_trainer.sweep results NAME [--json] [--plot sweep.html]
    python -m tfwb_trainer.sweep check sweep.yaml

The config is W&B's sweep format (``method`` grid/random/bayes, ``metric``, ``parameters``,
``early_terminate`` hyperband, ``run_cap``); the search is done by the ``sweeps`` package, the
engine behind ``wandb[sweeps]``. Each trial is an ordinary offline run started through
``tfwb_trainer.init``: the trial's parameters in its config, the sweep's name as its group, the
sweep in ``config["tfwb"]["sweep"]`` and a ``sweep:<id>`` tag. Many processes on many nodes can
run the same command against one sweep at once (see ``sweepstore``).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import sweepstore
from .sweepstore import MAX_ATTEMPTS, SweepError, SweepStore, Trial

DEFAULT_LEASE_S = 120.0
METHODS = ("grid", "random", "bayes")


class SweepConfigError(ValueError):
    """The sweep config is not one W&B would accept, or not one that can run offline."""


# -- config ------------------------------------------------------------------------------------

def load_config(source: Any) -> Dict[str, Any]:
    """A sweep config from a dict or a YAML/JSON file, validated; SweepConfigError if bad."""
    if isinstance(source, dict):
        cfg = source
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SweepConfigError(f"cannot read sweep config {str(path)!r}: {exc.strerror or exc}") from None
        try:
            import yaml

            cfg = yaml.safe_load(text)
        except Exception as exc:  # yaml's errors carry the line and column
            raise SweepConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(cfg, dict):
            raise SweepConfigError(f"{path}: a sweep config is a mapping (method, metric, parameters…)")
    return validate(cfg)


def _json_clean(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_plain))


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON")


def validate(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Check ``cfg`` the way W&B does (its JSON schema, through the ``sweeps`` package) and what
    an offline sweep needs on top; return it as plain JSON data."""
    sweeps = _engine()
    if not isinstance(cfg, dict):
        raise SweepConfigError("a sweep config is a mapping (method, metric, parameters…)")
    method = cfg.get("method")
    if method not in METHODS:
        raise SweepConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}"
                               + (" (a custom method needs W&B's server)" if method == "custom" else ""))
    params = cfg.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepConfigError("parameters: give at least one parameter, e.g. "
                               "parameters: {lr: {min: 0.0001, max: 0.1}}")
    metric = cfg.get("metric")
    if (method == "bayes" or cfg.get("early_terminate")) and not (isinstance(metric, dict) and metric.get("name")):
        raise SweepConfigError(f"metric: {'bayes' if method == 'bayes' else 'early_terminate'} needs "
                               "metric: {name: …, goal: minimize|maximize}")
    et = cfg.get("early_terminate")
    if et is not None and (not isinstance(et, dict) or et.get("type") != "hyperband"):
        raise SweepConfigError("early_terminate: only {type: hyperband, min_iter: …} (or max_iter) is supported")
    cap = cfg.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise SweepConfigError(f"run_cap: {cap!r} is not a positive whole number")
    if method != "grid" and cap is None:
        pass  # random/bayes without run_cap: bounded by each command's --count
    # run_cap is W&B's (sweeps 0.3's schema has it; 0.2's, the one for Python 3.8, does not):
    # checked here, not by the engine's schema.
    engine_view = {k: v for k, v in cfg.items() if k != "run_cap"}
    try:
        sweeps.SweepConfig(engine_view)
    except Exception as exc:  # jsonschema.ValidationError: say where
        if not hasattr(exc, "absolute_path"):  # the engine's own checks compare before typing
            raise SweepConfigError(f"parameters: bad min/max or distribution ({exc})") from None
        path = "/".join(str(p) for p in getattr(exc, "absolute_path", ()) or ())
        msg = getattr(exc, "message", None) or str(exc).splitlines()[0]
        raise SweepConfigError(f"{path + ': ' if path else ''}{msg}") from None
    try:
        problems = sweeps.schema_violations_from_proposed_config(engine_view)
    except Exception as exc:  # it compares min and max before checking their types
        problems = [f"bad min/max or distribution ({exc})"]
    if problems:
        raise SweepConfigError("; ".join(str(p) for p in problems))
    try:  # a dry draw finds what the schema allows but the engine cannot do (e.g. grid over a range)
        sweeps.next_run(cfg, [])
    except Exception as exc:
        raise SweepConfigError(f"method {method}: {exc}") from None
    return _json_clean(cfg)


def _engine() -> Any:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sweeps 0.2 uses pydantic's v1-style config
            import sweeps
    except ImportError:
        raise SweepConfigError("the sweeps package is missing: pip install 'sweeps>=0.2.0' "
                               "(or the trainer's `sweeps` extra)") from None
    return sweeps


# -- what the engine sees ----------------------------------------------------------------------

def _metric_name(cfg: Dict[str, Any]) -> Optional[str]:
    m = cfg.get("metric")
    return m.get("name") if isinstance(m, dict) else None


def sweep_runs(cfg: Dict[str, Any], trials: Sequence[Trial], now: Optional[float] = None) -> List[Any]:
    """The trials as the engine's SweepRuns (what W&B's server would hand its controller)."""
    sweeps = _engine()
    metric = _metric_name(cfg)
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
                    proposal = _engine().next_run(self.cfg, sweep_runs(self.cfg, trials, now))
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
            if self.store.create_trial(number, _json_clean(params), run_id, self.lease_s):
                return self.store.trial(number), 1
            # another process created this number first: look again

    def hold(self, trial: Trial, attempt: int, on_lost: Callable[[], None],
             on_stop: Optional[Callable[[], None]] = None) -> "Heartbeat":
        return Heartbeat(self, trial, attempt, on_lost, on_stop)

    def should_stop(self, trial: Trial, attempt: int) -> bool:
        """Hyperband (the engine's ``stop_runs``) over every trial, ours read live from its run."""
        metric = _metric_name(self.cfg)
        # What the trial logged (its own live file); what wandb flushed of it, for a trial
        # that does not log through tfwb_trainer.
        live = (self.store.live_values(trial.number, attempt)
                or read_metric(self.runs_root, trial.run_id, metric, wait=False)["history"])
        runs = sweep_runs(self.cfg, self.store.trials())
        for i, r in enumerate(runs):
            if r.name == trial.run_id:
                runs[i] = _engine().SweepRun(name=r.name, state="running", config=r.config,
                                             sampledHistory=[{metric: v} for v in live])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return any(r.name == trial.run_id for r in _engine().stop_runs(self.cfg, runs))

    def record(self, trial: Trial, attempt: int, state: str, exit_code: Optional[int],
               train_s: float, overhead_s: float) -> Dict[str, Any]:
        t0 = time.perf_counter()
        result = read_metric(self.runs_root, trial.run_id, _metric_name(self.cfg))
        outcome = {"state": state, "exit_code": exit_code, "run_id": trial.run_id, "attempt": attempt,
                   "finished_at": time.time(), "train_s": train_s, **result}
        outcome["overhead_s"] = overhead_s + (time.perf_counter() - t0)
        self.store.finish(trial.number, attempt, outcome)
        self.say(f"trial {trial.number} {state}" + (f", {_metric_name(self.cfg)}={result['metric']:.6g}"
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


# -- running trials: a command, or a function in this process ----------------------------------

def _expand(command: Sequence[str], params: Dict[str, Any]) -> List[str]:
    """W&B's command macros: ``${args}`` (``--k=v``), ``${args_no_hyphens}`` (``k=v``)."""
    out: List[str] = []
    for a in command:
        if a == "${args}":
            out += [f"--{k}={v}" for k, v in params.items()]
        elif a == "${args_no_hyphens}":
            out += [f"{k}={v}" for k, v in params.items()]
        elif a == "${interpreter}":
            out.append(sys.executable)
        else:
            out.append(a)
    return out


def start(config: Any, *, name: Optional[str] = None, project: Optional[str] = None,
          runs_dir: Any = None) -> SweepStore:
    """Create the sweep on the volume (or join the one with this name and config)."""
    from .volume import prepare_runs_dir

    cfg = load_config(config)
    name = name or cfg.get("name") or (Path(config).stem if not isinstance(config, dict) else None)
    if not name:
        raise SweepError("give the sweep a name (name= or a `name:` in its config)")
    rd = prepare_runs_dir(runs_dir)
    store = SweepStore.locate(rd.root, name)
    store.create_or_join({"id": name, "name": name, "project": project, "config": cfg,
                          "created_at": time.time(), "created_by": sweepstore.holder_id()})
    return store


def run_command(store: SweepStore, command: Sequence[str], count: Optional[int], runs_root: Path,
                lease_s: float = DEFAULT_LEASE_S) -> List[Dict[str, Any]]:
    runner = Runner(store, runs_root, lease_s)
    done: List[Dict[str, Any]] = []
    while count is None or len(done) < count:
        t0 = time.perf_counter()
        got = runner.acquire()
        if got is None:
            runner.say("nothing left to run")
            break
        trial, attempt = got
        overhead = time.perf_counter() - t0
        env = dict(os.environ, **{sweepstore.ENV_DIR: str(store.dir), sweepstore.ENV_TRIAL: str(trial.number),
                                  sweepstore.ENV_ATTEMPT: str(attempt), "TFWB_RUNS_DIR": str(runs_root)})
        env.pop("TFWB_RUN_ID", None)
        argv = _expand(command, trial.params)
        runner.say(f"trial {trial.number} (attempt {attempt}): {json.dumps(trial.params, sort_keys=True)}")
        t1 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env)
        lost = threading.Event()

        def stop_it() -> None:
            lost.set()
            proc.terminate()

        with runner.hold(trial, attempt, stop_it, proc.terminate) as beat:
            code = proc.wait()
        train_s = time.perf_counter() - t1
        if lost.is_set():
            continue  # the other holder records it
        state = "finished" if code == 0 else ("crashed" if code < 0 else "failed")
        if beat.stopped:
            state = "stopped"
        done.append(runner.record(trial, attempt, state, code, train_s, overhead))
    return done


def run_function(store: SweepStore, function: Callable[[], Any], count: Optional[int], runs_root: Path,
                 lease_s: float = DEFAULT_LEASE_S) -> List[Dict[str, Any]]:
    from . import session

    runner = Runner(store, runs_root, lease_s)
    done: List[Dict[str, Any]] = []
    while count is None or len(done) < count:
        t0 = time.perf_counter()
        got = runner.acquire()
        if got is None:
            break
        trial, attempt = got
        overhead = time.perf_counter() - t0
        sweepstore._in_process = {sweepstore.ENV_DIR: str(store.dir), sweepstore.ENV_TRIAL: str(trial.number),
                                  sweepstore.ENV_ATTEMPT: str(attempt)}
        t1 = time.perf_counter()
        state, code = "finished", 0
        try:
            with runner.hold(trial, attempt, lambda: None):
                function()
        except Exception as exc:  # like wandb.agent: a failed trial does not end the sweep
            import traceback

            traceback.print_exc()
            runner.say(f"trial {trial.number} raised {type(exc).__name__}: {exc}")
            state, code = "failed", 1
        finally:
            sweepstore._in_process = None
            if session._session is not None:
                session.finish(exit_code=code)
        done.append(runner.record(trial, attempt, state, code, time.perf_counter() - t1, overhead))
    return done


def run_sweep(config: Any, function: Optional[Callable[[], Any]] = None, count: Optional[int] = None, *,
              name: Optional[str] = None, project: Optional[str] = None, runs_dir: Any = None,
              lease: float = DEFAULT_LEASE_S, command: Optional[Sequence[str]] = None) -> str:
    """Run up to ``count`` trials of a sweep (created on first use, joined afterwards) and return
    its id. ``function`` is called once per trial in this process and calls
    ``tfwb_trainer.init()`` (which picks up the trial); or ``command`` runs as a process per
    trial. Raises SweepConfigError for a bad config."""
    if (function is None) == (command is None):
        raise TypeError("give either a function or a command")
    store = start(config, name=name, project=project, runs_dir=runs_dir)
    root = store.dir.parent.parent
    if function is not None:
        run_function(store, function, count, root, lease)
    else:
        run_command(store, list(command or ()), count, root, lease)
    return store.sweep()["id"]


# -- results -----------------------------------------------------------------------------------

def results(store: SweepStore) -> Dict[str, Any]:
    """The trials ranked by the metric (best first), with params, state and attempts."""
    sw = store.sweep()
    cfg = sw["config"]
    metric = _metric_name(cfg)
    goal = (cfg.get("metric") or {}).get("goal", "minimize")
    rows = []
    for t in store.trials():
        out = t.outcome() or {}
        rows.append({"trial": t.number, "run_id": t.run_id, "state": t.state(), "attempts": t.attempts,
                     "params": t.params, "metric": out.get("metric"), "train_s": out.get("train_s"),
                     "overhead_s": out.get("overhead_s")})
    sign = -1 if goal == "maximize" else 1
    rows.sort(key=lambda r: (r["metric"] is None, sign * r["metric"] if r["metric"] is not None else 0, r["trial"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1 if r["metric"] is not None else None
    return {"sweep": sw["id"], "name": sw["name"], "method": cfg["method"], "metric": metric, "goal": goal,
            "trials": rows}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def results_table(res: Dict[str, Any]) -> str:
    params = sorted({k for r in res["trials"] for k in r["params"]})
    head = ["rank", "trial", "state", res["metric"] or "metric", *params, "run id"]
    body = [[_fmt(r["rank"] or "-"), str(r["trial"]), r["state"] + (f" ({r['attempts']} attempts)" if r["attempts"] > 1 else ""),
             _fmt(r["metric"]) if r["metric"] is not None else "-",
             *[_fmt(r["params"].get(p, "")) for p in params], r["run_id"]] for r in res["trials"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [f"sweep {res['name']} ({res['method']}, {res['goal']} {res['metric'] or '-'}): {len(body)} trials"]
    for row in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def plot_html(res: Dict[str, Any]) -> str:
    """One self-contained HTML file: the metric against each parameter (inline SVG, no scripts)."""
    import html

    pts = [r for r in res["trials"] if r["metric"] is not None]
    params = sorted({k for r in res["trials"] for k in r["params"]})
    W, H, P = 320, 220, 40
    panels = []
    for p in params:
        xs = [r["params"].get(p) for r in pts]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs) and xs
        cats = sorted({json.dumps(x) for x in xs}) if not numeric else []
        ys = [r["metric"] for r in pts]
        ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        log = bool(numeric) and min(xs) > 0 and max(xs) / min(xs) > 50
        tx = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        if numeric:
            xlo, xhi = tx(min(xs)), tx(max(xs))
        def X(x: Any) -> float:
            if not numeric:
                return P + (cats.index(json.dumps(x)) + 0.5) * (W - P - 10) / max(1, len(cats))
            return P + (tx(x) - xlo) / ((xhi - xlo) or 1) * (W - P - 10) if xhi != xlo else (P + W - 10) / 2
        def Y(y: float) -> float:
            return H - P + 10 - (y - ylo) / ((yhi - ylo) or 1) * (H - P - 10) if yhi != ylo else H / 2
        dots = "".join(f'<circle cx="{X(r["params"].get(p)):.1f}" cy="{Y(r["metric"]):.1f}" r="4" fill="#1f77b4">'
                       f'<title>trial {r["trial"]}: {html.escape(p)}={html.escape(_fmt(r["params"].get(p)))}, '
                       f'{html.escape(str(res["metric"]))}={r["metric"]:.6g}</title></circle>' for r in pts)
        xl = (f"{_fmt(min(xs))} … {_fmt(max(xs))}" + (" (log)" if log else "")) if numeric else " · ".join(html.escape(c) for c in cats)
        panels.append(
            f'<figure><svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{P}" y="10" width="{W - P - 10}" height="{H - P}" fill="none" stroke="#999"/>{dots}'
            f'<text x="{P}" y="{H - 12}" font-size="11">{xl}</text>'
            f'<text x="2" y="20" font-size="11">{_fmt(yhi)}</text><text x="2" y="{H - P + 10}" font-size="11">{_fmt(ylo)}</text>'
            f'</svg><figcaption>{html.escape(str(res["metric"]))} against <b>{html.escape(p)}</b></figcaption></figure>')
    table = html.escape(results_table(res))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sweep "
            f"{html.escape(res['name'])}</title><style>figure{{display:inline-block;margin:8px}}</style></head>"
            f"<body><h1>sweep {html.escape(res['name'])}</h1><p>{html.escape(res['method'])}, {html.escape(res['goal'])} "
            f"{html.escape(str(res['metric']))}; {len(pts)} of {len(res['trials'])} trials with a value</p>"
            f"{''.join(panels)}<pre>{table}</pre></body></html>\n")


def plot_png(res: Dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepError("a PNG plot needs matplotlib (pip install matplotlib); "
                         "or write --plot FILE.html, which needs nothing") from None
    pts = [r for r in res["trials"] if r["metric"] is not None]
    params = sorted({k for r in res["trials"] for k in r["params"]})
    fig, axes = plt.subplots(1, max(1, len(params)), figsize=(4 * max(1, len(params)), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r["params"].get(p) for r in pts]
        if xs and not all(isinstance(x, (int, float)) for x in xs):
            xs = [str(x) for x in xs]
        ax.scatter(xs, [r["metric"] for r in pts])
        ax.set_xlabel(p)
        ax.set_ylabel(str(res["metric"]))
    fig.tight_layout()
    fig.savefig(str(path))


# -- the command -------------------------------------------------------------------------------

USAGE = """\
usage: python -m tfwb_trainer.sweep SWEEP.yaml [--name NAME] [--project P] [--count N]
                                    [--runs-dir DIR] [--lease SECONDS] -- COMMAND…
       python -m tfwb_trainer.sweep results NAME [--runs-dir DIR] [--json] [--plot FILE.html|FILE.png]
       python -m tfwb_trainer.sweep check SWEEP.yaml

Runs trials of a sweep kept on the runs volume ($TFWB_RUNS_DIR, default /runs); many copies of
the same command (on many nodes) share its trials. COMMAND gets each trial through
tfwb_trainer.init(); ${args} in it expands to --name=value for each parameter."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    command: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        if argv[0] == "results":
            p = argparse.ArgumentParser(prog="python -m tfwb_trainer.sweep results")
            p.add_argument("name")
            p.add_argument("--runs-dir")
            p.add_argument("--json", action="store_true")
            p.add_argument("--plot")
            a = p.parse_args(argv[1:])
            from .volume import resolve_runs_dir

            store = SweepStore.locate(resolve_runs_dir(a.runs_dir), a.name)
            res = results(store)
            if a.plot:
                out = Path(a.plot)
                if out.suffix.lower() == ".png":
                    plot_png(res, out)
                else:
                    out.write_text(plot_html(res))
            print(json.dumps(res, indent=1) if a.json else results_table(res))
            if a.plot and not a.json:
                print(f"plot: {a.plot}")
            return 0
        if argv[0] == "check":
            cfg = load_config(argv[1] if len(argv) > 1 else "")
            print(f"ok: {cfg['method']} sweep over {', '.join(sorted(cfg['parameters']))}")
            return 0
        p = argparse.ArgumentParser(prog="python -m tfwb_trainer.sweep", usage=USAGE)
        p.add_argument("config")
        p.add_argument("--name")
        p.add_argument("--project")
        p.add_argument("--count", type=int)
        p.add_argument("--runs-dir")
        p.add_argument("--lease", type=float, default=DEFAULT_LEASE_S)
        a = p.parse_args(argv)
        if not command:
            p.error("give the training command after --, e.g. -- python train.py")
        if a.count is not None and a.count < 1:
            p.error("--count must be at least 1")
        if a.lease <= 0:
            p.error("--lease must be positive")
        store = start(a.config, name=a.name, project=a.project, runs_dir=a.runs_dir)
        done = run_command(store, command, a.count, store.dir.parent.parent, a.lease)
        print(json.dumps({"sweep": store.sweep()["id"], "ran": [d["run_id"] for d in done],
                          "states": [d["state"] for d in done]}))
        return 0
    except (SweepConfigError, SweepError) as exc:
        print(f"tfwb sweep: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # RunsDirError and the like: their message is the explanation
        from .volume import RunsDirError

        if isinstance(exc, RunsDirError):
            print(str(exc), file=sys.stderr)
            return 73
        raise


class _CallableModule(types.ModuleType):
    """``tfwb_trainer.sweep(...)`` calls run_sweep; ``python -m tfwb_trainer.sweep`` runs main."""

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return run_sweep(*args, **kwargs)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
