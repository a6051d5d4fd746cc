"""A whole training run under each version pair: what the offline run on the volume holds."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer_helpers import (PY38_LABEL, PY311_TF213_LABEL, RunData, child_env, config_value, media_tables, read_run,
                             require_python, run_example, run_files, trainer_interpreters)

PAIRS = trainer_interpreters()
IDS = [l for l, _ in PAIRS]
EXPECT = {"tf221-wandb031": ("2.21", "0.31"), PY311_TF213_LABEL: ("2.13", "0.15.12"), PY38_LABEL: ("2.13", "0.15.12")}
EPOCHS, SAMPLES, BATCH, EVERY = 3, 320, 32, 4  # 10 steps an epoch; epoch ends off the log grid
STEPS = EPOCHS * SAMPLES // BATCH


def _one_run(runs: Path) -> RunData:
    files = run_files(runs)
    assert len(files) == 1, files
    rd = read_run(files[0])
    assert rd.exited and not rd.torn
    return rd


def _check_fingerprint(rd: RunData, label: str, sensitive: set[str]) -> None:
    tfwb = config_value(rd, "tfwb")
    assert sensitive <= set(tfwb["sensitive"])
    git = tfwb["git"]
    assert git["available"] is True and re.fullmatch(r"[0-9a-f]{40}", git["commit"])
    assert isinstance(git["dirty"], bool)
    assert git["diff_sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", git["diff_sha256"])
    assert (git["diff_sha256"] is not None) <= git["dirty"]  # a diff implies dirty
    tf_v, wandb_v = EXPECT[label]
    assert tfwb["packages"]["tensorflow"].startswith(tf_v)
    assert tfwb["packages"]["wandb"].startswith(wandb_v)
    assert tfwb["packages"]["keras"][0] == ("2" if tf_v == "2.13" else "3")
    assert tfwb["packages"]["numpy"]
    assert re.fullmatch(r"3\.\d+\.\d+", tfwb["python"])
    assert tfwb["python"].startswith("3.8.") == (label == PY38_LABEL), tfwb["python"]
    assert set(tfwb["tf_build"]) >= {"cuda", "cudnn", "is_cuda_build"}
    assert tfwb["gpus"] == [] and tfwb["gpu_count"] == 0  # CUDA_VISIBLE_DEVICES="" in the child
    assert set(tfwb["xla"]) >= {"jit", "tf_xla_flags", "model_jit_compile"}
    assert tfwb["mixed_precision"] == "float32"
    cpu = tfwb["cpu"]
    assert cpu["model"] and cpu["count"] >= 1
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert ("avx2" in cpu["flags"]) == (" avx2" in cpuinfo)
    assert isinstance(tfwb["container"]["in_container"], bool)
    assert tfwb["host"]


def _check_eval(rd: RunData, runs: Path, n_val: int) -> None:
    run_dir = rd.path.parent
    cm = media_tables(run_dir, "eval/confusion_matrix_table")
    assert len(cm) == 1, cm
    t = json.loads(cm[0].read_text())
    counts = {c: i for i, c in enumerate(t["columns"])}
    assert sum(r[counts["nPredictions"]] for r in t["data"]) == n_val  # every val sample once
    preds = media_tables(run_dir, "eval/predictions")
    assert len(preds) == 1
    pt = json.loads(preds[0].read_text())
    assert pt["columns"] == ["index", "label", "pred", "confidence", "image"] and len(pt["data"]) == 16
    # The run-level table file only names its cells; wandb logs the table with its images as a
    # run-table artifact staged in WANDB_DATA_DIR, which must be on the volume.
    staged = [f for f in (runs / "wandb-data" / "artifacts" / "staging").iterdir() if f.is_file()]
    pngs = [f for f in staged if f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) >= 16
    staged_tables = [json.loads(f.read_text()) for f in staged if f.read_bytes()[:1] == b"{"]
    with_images = [t for t in staged_tables if "image" in t.get("columns", [])]
    assert with_images and all(c[-1]["_type"] == "image-file" for c in with_images[0]["data"])
    assert 0.0 <= rd.summary["eval/accuracy"] <= 1.0


@pytest.mark.parametrize("label,python", PAIRS, ids=IDS)
def test_keras_run_holds_everything(tmp_path: Path, label: str, python: str | None) -> None:
    py = require_python(label, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    run_example(py, "train_keras.py", ["--epochs", str(EPOCHS), "--train-samples", str(SAMPLES),
                                       "--batch-size", str(BATCH), "--log-every", str(EVERY), "--lr", "0.003"],
                child_env(runs))
    rd = _one_run(runs)
    _check_fingerprint(rd, label, {"samples/*", "eval/predictions"})
    assert config_value(rd, "tfwb")["xla"]["model_jit_compile"] in (False, None)

    batch_steps = sorted(s for s, r in rd.rows.items() if "batch/loss" in r)
    assert batch_steps == list(range(EVERY, STEPS + 1, EVERY))
    for s in batch_steps:
        r = rd.rows[s]
        assert r["batch/batch_step"] == s
        assert r["batch/learning_rate"] == pytest.approx(0.003)
        assert r["perf/step_time_s"] > 0 and r["perf/examples_per_sec"] > 0
        assert 0.0 <= r["batch/accuracy"] <= 1.0
    epochs = {s: r["epoch/epoch"] for s, r in rd.rows.items() if "epoch/epoch" in r}
    assert epochs == {10: 0, 20: 1, 30: 2}
    val_losses = {rd.rows[s]["epoch/epoch"]: rd.rows[s]["epoch/val_loss"] for s in epochs}
    assert all(rd.row_count[s] == 1 for s in rd.rows)  # each step is one history row

    best = rd.summary["best_checkpoint"]
    best_epoch = min(val_losses, key=val_losses.get)
    assert best["monitor"] == "val_loss" and best["epoch"] == best_epoch
    assert best["value"] == pytest.approx(val_losses[best_epoch])
    assert Path(best["path"]).is_file() and best["path"].startswith(str(runs))
    _check_eval(rd, runs, n_val=200)


@pytest.mark.parametrize("label,python", PAIRS, ids=IDS)
def test_custom_loop_run_holds_everything(tmp_path: Path, label: str, python: str | None) -> None:
    py = require_python(label, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    # Forked with TensorFlow imported before the plugin's init (the Keras run above starts afresh
    # and imports it after): the fingerprint is whole either way.
    run_example(py, "train_custom_loop.py", ["--epochs", str(EPOCHS), "--train-samples", str(SAMPLES),
                                             "--batch-size", str(BATCH), "--log-every", str(EVERY)],
                child_env(runs), preloaded=True)
    rd = _one_run(runs)
    _check_fingerprint(rd, label, {"eval/predictions"})
    steps = sorted(s for s, r in rd.rows.items() if "train/loss" in r)
    assert steps == list(range(EVERY, STEPS + 1, EVERY))
    assert all(rd.rows[s]["perf/step_time_s"] > 0 and rd.rows[s]["train/learning_rate"] > 0 for s in steps)
    epochs = {s: r["epoch/epoch"] for s, r in rd.rows.items() if "epoch/epoch" in r}
    assert epochs == {10: 0, 20: 1, 30: 2}
    val = {rd.rows[s]["epoch/epoch"]: rd.rows[s]["epoch/val_accuracy"] for s in epochs}
    best = rd.summary["best_checkpoint"]
    assert best["monitor"] == "val_accuracy" and best["value"] == pytest.approx(max(val.values()))
    assert Path(best["path"]).is_file()
    _check_eval(rd, runs, n_val=200)
    # Everything wandb stages lives on the volume: no wandb dir in the (fake) home.
    assert not (tmp_path / "home" / ".cache" / "wandb").exists()
    assert (runs / "wandb-data").is_dir() and (runs / "wandb-config").is_dir()


NO_TF = """\
import sys, tfwb_trainer
run = tfwb_trainer.init(project="no-tf", config={"lr": 0.1})
run.log({"x": 1.0}, step=1)
assert "tensorflow" not in sys.modules, "init imported TensorFlow"
tfwb_trainer.finish()
assert "tensorflow" not in sys.modules, "finish imported TensorFlow"
"""


def test_a_run_that_never_imports_tensorflow_does_not_pay_for_it(tmp_path: Path) -> None:
    """The fingerprint takes TensorFlow's part only from a process that imported it (the Keras
    and custom-loop runs above import it after ``init`` and still carry it): a sweep trial of
    another kind does not load TensorFlow for four lines of config."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    runs.mkdir()
    p = subprocess.run([sys.executable, "-c", NO_TF], env=child_env(runs), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    tfwb = config_value(_one_run(runs), "tfwb")
    assert "tf_build" not in tfwb and "gpus" not in tfwb and tfwb["python"] and tfwb["packages"], tfwb
