"""The README's offline install path, run as written: a wheelhouse built with `pip wheel` on a
connected machine (here: from the registry that answers on this machine), installed into a
fresh venv with `pip install --no-index --find-links`, and `tfwb-agent` run from that venv.

The install step reads no pip configuration (PIP_CONFIG_FILE=/dev/null): this machine's pip
config names extra indexes and find-links, which would hide a wheel missing from the house.
A wheelhouse with one dependency taken out must fail to install: the check can fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def _run(argv: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow(seconds=120)
def test_wheelhouse_installs_with_no_index_into_a_fresh_venv(tmp_path):
    house = tmp_path / "wheelhouse"
    built = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(house), str(REPO)])
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert any(w.startswith("tfwb_agent-") for w in wheels) and any(w.startswith("wandb-") for w in wheels), wheels

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    # --no-compile: byte-compiling wandb's thousands of modules is most of the install's CPU,
    # and not what is checked here (which wheels the house holds, and that they install offline).
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-compile"]
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")

    partial = tmp_path / "partial"
    shutil.copytree(house, partial)
    (missing,) = list(partial.glob("pyrage-*.whl"))
    missing.unlink()
    short = _run([*pip, "--find-links", str(partial), "tfwb-agent"], env=offline)
    assert short.returncode != 0 and "pyrage" in short.stderr, short.stderr[-2000:]

    done = _run([*pip, "--find-links", str(house), "tfwb-agent"], env=offline)
    assert done.returncode == 0, done.stderr[-3000:]
    exe = venv / "bin" / "tfwb-agent"
    helped = _run([str(exe), "--help"], env=offline)
    assert helped.returncode == 0 and "Usage: tfwb-agent" in helped.stdout, helped.stderr
    where = _run([str(venv / "bin" / "python"), "-c", "import tfwb_agent, wandb; print(tfwb_agent.__file__)"],
                 env=offline)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where  # not this checkout
