"""Helpers for the trainer plugin tests: run the examples under each interpreter, read runs.

Also runnable as a script (``python tests/trainer_helpers.py count-reads …``) so that the
custom-loop read-count check runs inside the interpreter under test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tf_forkserver import ForkServerPopen

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PY38_ENV = "TFWB_PY38_PYTHON"
PY38_LABEL = "py38-tf213-wandb015"


PY311_TF213_ENV = "TFWB_PY311_TF213_PYTHON"
PY311_TF213_LABEL = "py311-tf213-wandb015"
_SETUP = {PY38_LABEL: (PY38_ENV, "`.ci/setup_tf213.sh`", ROOT / ".venv-py38"),
          PY311_TF213_LABEL: (PY311_TF213_ENV, "`.ci/setup_tf213.sh --py311`", ROOT / ".venv-tf213-py311")}


def _venv_python(label: str) -> str | None:
    # scripts/install-test-deps builds each venv at its default place; the variable overrides it.
    env, _how, venv = _SETUP[label]
    default = venv / "bin" / "python"
    return os.environ.get(env) or (str(default) if default.is_file() else None)


def interpreters() -> list[tuple[str, str | None]]:
    """(label, python path or None when missing) for both version pairs: TF 2.21 + wandb 0.31 on
    this interpreter, and the seed image's own pair, Python 3.8 + TF 2.13.1 + wandb 0.15.12, with
    the plugin installed alone (the tfwb-trainer distribution, no agent)."""
    return [("tf221-wandb031", sys.executable), (PY38_LABEL, _venv_python(PY38_LABEL))]


def trainer_interpreters() -> list[tuple[str, str | None]]:
    """``interpreters()``, and for the trainer's own tests (Keras callback, custom loop, resume,
    evaluation) a third pair: TF 2.13.1 + wandb 0.15.12 on Python 3.11, the pair those tests ran
    under before the plugin ran on 3.8 (`.ci/setup_tf213.sh --py311`, which
    ``scripts/install-test-deps`` runs, or $TFWB_PY311_TF213_PYTHON)."""
    (current, py38) = interpreters()
    return [current, (PY311_TF213_LABEL, _venv_python(PY311_TF213_LABEL)), py38]


def require_python(label: str, python: str | None) -> str:
    """The interpreter path, or a test failure saying how to provide it (never a silent skip)."""
    import pytest

    env, how, _venv = _SETUP.get(label, ("", "", None))
    if python is None:
        pytest.fail(f"{label}: {env} is not set. Create the venv with {how} and export {env}=<the path it "
                    "prints>.", pytrace=False)
    if not Path(python).is_file():
        pytest.fail(f"{label}: {env}={python} does not exist; re-run {how}.", pytrace=False)
    return python


def child_env(runs_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "TFWB_RUN_ID"}
    env.update({"TFWB_RUNS_DIR": str(runs_dir), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "HOME": str(runs_dir.parent / "home")})
    (runs_dir.parent / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def training_popen(argv: list[str], preloaded: bool, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, start_new_session=True, **kwargs)``; with ``preloaded``, forked by
    the fork server of ``argv[0]``, which has TensorFlow imported already (``tf_forkserver.py``):
    for tests whose subject is not how a training process starts."""
    if preloaded:
        return ForkServerPopen(argv, **kwargs)
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def run_training(argv: list[str], env: dict[str, str], timeout: float,
                 preloaded: bool = False) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)`` for a training process,
    which ends as its container would: once it has exited, whatever it left in its session is
    killed. wandb 0.15's service process can outlive the process it served (seen on Python 3.11:
    it waited for a teardown that never came, holding the output pipes open for minutes); the
    run it wrote is whole by then (``finish`` returns once the run's exit record is written).
    ``preloaded``: see ``training_popen``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = training_popen(argv, preloaded, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=out,
                           stderr=err, text=True)
        try:
            p.wait(timeout=timeout)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, p.returncode, out.read(), err.read())


def run_example(python: str, script: str, args: list[str], env: dict[str, str], timeout: float = 240,
                preloaded: bool = False) -> subprocess.CompletedProcess[str]:
    p = run_training([python, str(EXAMPLES / script), *args], env, timeout, preloaded)
    if p.returncode != 0:
        raise AssertionError(f"{script} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}")
    return p


def run_until_hold_then_kill(python: str, script: str, args: list[str], env: dict[str, str], timeout: float = 240,
                             preloaded: bool = False) -> str:
    """Start training, wait for its ``HOLD n`` line, SIGKILL its whole process group.

    The group matters: a killed container takes wandb's writer process with it, which is the
    case where buffered records are lost and the resume logic has to make up for it.
    """
    p = training_popen([python, str(EXAMPLES / script), *args], preloaded, env=env, cwd=str(ROOT), text=True,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = []
    try:
        assert p.stdout is not None
        for line in p.stdout:  # blocks on the child's output: no sleeping
            out.append(line)
            if line.startswith("HOLD "):
                os.killpg(p.pid, signal.SIGKILL)
                break
        p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = "".join(out)
    if not any(l.startswith("HOLD ") for l in out):
        raise AssertionError(f"{script} never reached its hold point\nstdout:\n{text}\nstderr:\n{p.stderr.read()[-5000:] if p.stderr else ''}")
    assert p.returncode == -signal.SIGKILL, p.returncode
    return text


@dataclass
class RunData:
    path: Path
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> merged row
    row_count: dict[int, int] = field(default_factory=dict)  # step -> history records seen
    summary: dict[str, Any] = field(default_factory=dict)
    exited: bool = False
    torn: bool = False


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(wandb_file: Path) -> RunData:
    """Everything the tests check, read from the `.wandb` file with the agent's reader."""
    from tfwb_agent.wandb_log import read_records

    rd = RunData(wandb_file)
    if wandb_file.stat().st_size == 0:
        return rd  # killed before the writer flushed its first block: nothing on disk
    gen = read_records(wandb_file)
    while True:
        try:
            _, rec = next(gen)
        except StopIteration as stop:
            tail = stop.value
            rd.torn = tail is not None and tail.torn_at is not None
            break
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            rd.run_id = rec.run.run_id
            for it in rec.run.config.update:
                rd.config[_key(it)] = json.loads(it.value_json)
        elif kind == "config":
            for it in rec.config.update:
                rd.config[_key(it)] = json.loads(it.value_json)
        elif kind == "history":
            vals = {_key(it): json.loads(it.value_json) for it in rec.history.item}
            step = int(rec.history.step.num) if rec.history.HasField("step") else int(vals["_step"])
            rd.rows.setdefault(step, {}).update(vals)
            rd.row_count[step] = rd.row_count.get(step, 0) + 1
        elif kind == "summary":
            for it in rec.summary.update:
                rd.summary[_key(it)] = json.loads(it.value_json)
        elif kind == "exit":
            rd.exited = True
    return rd


def config_value(rd: RunData, key: str) -> Any:
    v = rd.config[key]
    # wandb stores each config value as {"value": …, "desc": …}
    return v["value"] if isinstance(v, dict) and "value" in v else v


def readonly(path: Path, argv: list[str]) -> list[str]:
    """``argv`` run with ``path`` read-only, the way a volume mounted ``ro`` looks.

    As root, file modes do not stop writes, so the child gets its own mount namespace with a
    read-only bind mount of ``path``; nothing outside the child sees it. Non-root: chmod.
    """
    if os.geteuid() != 0:
        path.chmod(0o555)
        return argv
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path), *argv]


def media_tables(run_dir: Path, prefix: str) -> list[Path]:
    return sorted((run_dir / "files" / "media" / "table").glob(f"{prefix}*.table.json"))


def run_files(runs_dir: Path) -> list[Path]:
    wd = runs_dir / "wandb"
    return sorted(f for d in wd.iterdir() if not d.is_symlink() and d.is_dir() for f in d.glob("run-*.wandb"))


# --------------------------------------------------------------------------------------------
# Script mode: the custom-loop read count, run inside the interpreter under test.
# --------------------------------------------------------------------------------------------

def _count_reads(runs_dir: str, steps: int, every: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tfwb_trainer

    class Counted:
        """A real tensor that counts every way of reading its value to the host."""

        reads = 0

        def __init__(self, t: Any) -> None:
            self.t = t

        def numpy(self) -> Any:
            Counted.reads += 1
            return self.t.numpy()

        def __float__(self) -> float:
            Counted.reads += 1
            return float(self.t.numpy())

        def __array__(self, *a: Any, **k: Any) -> Any:
            Counted.reads += 1
            return self.t.numpy().__array__(*a, **k)

    calls = {"n": 0}

    def lazy() -> Any:
        calls["n"] += 1
        return tf.constant(1.0)

    tfwb_trainer.init(project="count", runs_dir=runs_dir)
    log = tfwb_trainer.StepLogger(every_n=every, batch_size=4)
    v = tf.Variable(0.0)
    logged = []
    for i in range(steps):
        v.assign_add(1.0)  # real device work every step
        if log.log_step({"loss": Counted(v * 2.0), "lazy": lazy}):
            logged.append(log.global_step)
    tfwb_trainer.finish()
    print(json.dumps({"reads": Counted.reads, "lazy_calls": calls["n"], "logged": logged}))


def _sweep_digits_in_process(args: list[str]) -> None:
    """``CONFIG NAME COUNT``: this process draws up to COUNT trials of the sweep and trains each
    in process (``tfwb_trainer.sweep`` with a function, TensorFlow imported once); prints the
    run ids it trained as JSON."""
    import tfwb_trainer

    config, name, count = args
    ran: list[str] = []
    tfwb_trainer.sweep(config, lambda: ran.append(_train_digits()), count=int(count), name=name,
                       project="sweep-digits")
    print(json.dumps({"ran": ran}))


def _train_digits() -> str:
    """One trial on the digits example: lr, batch_size and dropout come from the sweep through
    ``tfwb_trainer.init``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import tfwb_trainer

    run = tfwb_trainer.init(project="sweep-digits", config={"lr": 1e-2, "batch_size": 32, "dropout": 0.0, "epochs": 1})
    cfg = run.config
    import tensorflow as tf
    from tensorflow import keras
    from _data import digits

    (x, y), (xv, yv), _ = digits(train_samples=192, val_samples=64)
    tf.random.set_seed(0)
    model = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dropout(float(cfg["dropout"])), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(float(cfg["lr"])),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    model.fit(x, y, batch_size=int(cfg["batch_size"]), epochs=int(cfg["epochs"]), verbose=0,
              validation_data=(xv, yv), callbacks=[
                  tfwb_trainer.MetricsCallback(log_every_n_steps=2, batch_size=int(cfg["batch_size"]), best_monitor=None)])
    run_id = run.id
    tfwb_trainer.finish()
    return run_id


def _sweep_light_trial(args: list[str]) -> None:
    """A trial without TensorFlow (for the lease test): a real offline run through the plugin
    that logs the sweep's metric for 4 steps; ``--hold-at N`` stops at step N until stdin closes."""
    hold_at = int(args[args.index("--hold-at") + 1]) if "--hold-at" in args else None
    import tfwb_trainer

    run = tfwb_trainer.init(project="sweep-light", config={"lr": 1e-2, "batch_size": 32, "dropout": 0.0})
    s = tfwb_trainer.current()
    for step in range(1, 5):
        s.log({"epoch/val_loss": float(run.config["lr"]) * step}, step=step)
        if step == hold_at:
            s.drain()
            print(f"HOLD {step}", flush=True)
            sys.stdin.readline()
    tfwb_trainer.finish()


if __name__ == "__main__":
    if sys.argv[1] == "count-reads":
        _count_reads(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "sweep-digits-in-process":
        _sweep_digits_in_process(sys.argv[2:])
    elif sys.argv[1] == "sweep-light-trial":
        _sweep_light_trial(sys.argv[2:])
