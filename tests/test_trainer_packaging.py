"""Two distributions from one source: the agent (Python >= 3.11) and the plugin alone
(tfwb-trainer, trainer_plugin/pyproject.toml, Python >= 3.8), checked with the seed image's own
interpreter (Python 3.8 + TF 2.13.1 + wandb 0.15.12)."""
from __future__ import annotations

import json
import subprocess

from trainer_helpers import PY38_LABEL, ROOT, require_python, interpreters

PY38 = dict(interpreters())[PY38_LABEL]


def test_plugin_alone_on_python38_without_the_agent() -> None:
    py = require_python(PY38_LABEL, PY38)
    probe = ("import json, sys, importlib.util as u, importlib.metadata as m, tfwb_trainer, tfwb_trainer._wandb_log;"
             "print(json.dumps({'py': sys.version_info[:2], 'dist': m.distribution('tfwb-trainer').metadata['Requires-Python'],"
             "'agent': u.find_spec('tfwb_agent') is not None, 'file': tfwb_trainer.__file__,"
             "'sweep': callable(tfwb_trainer.sweep)}))")
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["py"] == [3, 8] and got["dist"] == ">=3.8" and got["agent"] is False and got["sweep"] is True, got
    # One copy of the code: the distribution is this checkout's trainer_plugin/ (editable).
    assert got["file"] == str(ROOT / "trainer_plugin" / "__init__.py"), got


def test_agent_refused_on_python38_with_a_clear_error() -> None:
    py = require_python(PY38_LABEL, PY38)
    res = subprocess.run([py, "-m", "pip", "install", "--dry-run", "--no-deps", "--disable-pip-version-check",
                          str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "Package 'tfwb-agent' requires a different Python: 3.8" in res.stderr and "not in '>=3.11'" in res.stderr, \
        res.stderr[-2000:]
    assert "Traceback" not in res.stderr
