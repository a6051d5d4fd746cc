"""Shared fixtures: a private copy of the corpus, agent configs, and running the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
if not CORPUS.is_dir():  # CI lays shared/ beside the clone; a developer's checkout too
    CORPUS = Path(os.environ.get("TFWB_CORPUS", "/work/shared/corpus"))

CORPUS_RUNS = {
    "itokze55": ("0.15.12", "finished"),
    "5okzpcus": ("0.15.12", "crashed"),
    "3salp52t": ("0.31.0", "finished"),
    "s900mviu": ("0.31.0", "crashed"),
}


@pytest.fixture(autouse=True)
def _no_stray_daemons():
    """A test that fails midway must not leave daemons running into the next one."""
    yield
    from daemon_helpers import STARTED

    while STARTED:
        d = STARTED.pop()
        if d.alive():
            d.kill()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A writable copy of shared/corpus whose files look long untouched (mtimes an hour back)."""
    dst = tmp_path / "runs"
    shutil.copytree(CORPUS, dst, symlinks=True)
    old = time.time() - 3600
    for dirpath, dirnames, filenames in os.walk(dst):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.utime(p, (old, old))
    for p in dst.iterdir():
        if p.is_dir():
            os.chmod(p, 0o755)
    return dst


def write_config(path: Path, state_dir: Path, roots: list[Path], extra: str = "", **watch: object) -> Path:
    lines = [f'state_dir = "{state_dir}"']
    if "node_name" in watch:
        lines.append(f'node_name = "{watch.pop("node_name")}"')
    lines.append("[watch]")
    lines.append("roots = [" + ", ".join(f'"{r}"' for r in roots) + "]")
    for k, v in watch.items():
        lines.append(f"{k} = {json.dumps(v)}")
    if roots:
        lines += ["[path_map]", f'"/runs" = "{roots[0]}"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def make_config(tmp_path: Path):
    def make(roots: list[Path], name: str = "agent", extra: str = "", **watch: object) -> Path:
        return write_config(tmp_path / f"{name}.toml", tmp_path / f"state-{name}", roots, extra, **watch)
    return make


def agent(config: Path | None, *args: str, check: bool = True, env: dict | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `tfwb-agent` CLI in a subprocess."""
    e = dict(os.environ, **(env or {}))
    if config is not None:
        e["TFWB_AGENT_CONFIG"] = str(config)
    proc = subprocess.run([sys.executable, "-m", "tfwb_agent", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tfwb-agent {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def status(config: Path) -> dict:
    return json.loads(agent(config, "status", "--json").stdout)


def by_run_id(st: dict) -> dict[str, dict]:
    return {r["run_id"]: r for r in st["runs"]}
