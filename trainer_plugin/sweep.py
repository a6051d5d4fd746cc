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

This module starts the sweep and its trials (a process per trial, or a function in this
process) and is the command line. The rest, one job each: the config (``sweep_config``), handing
out trials and holding their leases (``sweep_runner``), the files on the volume (``sweepstore``),
results and plots (``sweep_results``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import sweepstore
from .sweep_config import SweepConfigError, load_config
from .sweep_results import plot_html, plot_png, results, results_table
from .sweep_runner import DEFAULT_LEASE_S, Runner
from .sweepstore import SweepError, SweepStore


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
