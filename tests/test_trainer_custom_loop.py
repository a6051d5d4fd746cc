"""The custom-loop logger reads no value on a step it does not log (counted, per interpreter)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_helpers import ROOT, child_env, require_python, run_training, trainer_interpreters

PAIRS = trainer_interpreters()


@pytest.mark.parametrize("label,python", PAIRS, ids=[l for l, _ in PAIRS])
def test_no_reads_on_steps_not_logged(tmp_path: Path, label: str, python: str | None) -> None:
    py = require_python(label, python)
    runs = tmp_path / "runs"
    runs.mkdir()
    steps, every = 23, 5
    p = run_training([py, str(ROOT / "tests" / "trainer_helpers.py"), "count-reads", str(runs), str(steps), str(every)],
                     child_env(runs), timeout=120, preloaded=True)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["logged"] == [5, 10, 15, 20]
    # One read of the tensor and one call of the lazy metric per logged step, none otherwise.
    assert out["reads"] == 4
    assert out["lazy_calls"] == 4
