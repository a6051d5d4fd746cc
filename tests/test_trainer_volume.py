"""The trainer refuses to start when the shared volume is missing or read-only."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import tfwb_trainer
from trainer_helpers import EXAMPLES, ROOT, child_env, interpreters, readonly, require_python


def test_missing_volume_refused_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "not-mounted"
    monkeypatch.setenv("TFWB_RUNS_DIR", str(missing))
    with pytest.raises(tfwb_trainer.RunsDirError) as err:
        tfwb_trainer.init(project="p")
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "TFWB_RUNS_DIR" in msg and "Mount the shared volume" in msg
    # Refusing must not create the mount point (that would hide the missing mount).
    assert not missing.exists()


def test_file_instead_of_volume_refused(tmp_path: Path) -> None:
    f = tmp_path / "runs"
    f.write_text("")
    with pytest.raises(tfwb_trainer.RunsDirError, match="is not a directory"):
        tfwb_trainer.init(project="p", runs_dir=f)


@pytest.mark.parametrize("label,python", interpreters(), ids=[l for l, _ in interpreters()])
def test_readonly_volume_refused_before_training(tmp_path: Path, label: str, python: str | None) -> None:
    py = require_python(label, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = readonly(runs, [py, str(EXAMPLES / "train_keras.py"), "--epochs", "1", "--train-samples", "64"])
    p = subprocess.run(argv, env=child_env(runs), cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, p.stdout
    assert "RunsDirError" in p.stderr and "refusing to start training" in p.stderr, p.stderr[-3000:]
    assert "not writable" in p.stderr
    # "START" is printed once the model is built: the refusal came before any training.
    assert "START" not in p.stdout
    assert list(runs.iterdir()) == []
