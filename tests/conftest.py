"""Shared fixtures: a private copy of the corpus, agent configs, and running the real CLI."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from cli_fork import run_cli

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` go first, the longest (``slow(seconds=N)``: about N s on its own)
    first of all; the rest keep their order. pytest-xdist hands out work in this order, so no
    long test starts late and keeps the whole run waiting for it."""
    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.kwargs.get("seconds", 30))

    items.sort(key=lambda item: -seconds(item))  # stable: equal ones keep their order


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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(directory)`` run once per test session, shared by every pytest-xdist worker.

    The first worker to get here builds under an exclusive lock in the session's common temporary
    root (each worker's own base directory sits inside it); the others block on that lock and
    then read what it built. ``build`` returns something JSON can carry (e.g. a list of paths as
    strings); a build that raises leaves nothing behind, and the next caller builds again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    target, done = root / f"built-{name}", root / f"built-{name}.json"
    with open(root / f"built-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            done_tmp = done.with_suffix(".tmp")
            done_tmp.write_text(json.dumps(build(target)))
            done_tmp.replace(done)
        return json.loads(done.read_text())


def tree_state(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``paths``: compared before and after a test that only
    reads shared data, to show it did not change it for the tests that share it after it."""
    out = {}
    for top in paths:
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


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
    """Run the real `tfwb-agent` CLI in a process of its own: forked from this worker
    (tests/cli_fork.py), or started afresh with ``TFWB_TEST_CLI=exec``."""
    e = dict(os.environ, **(env or {}))
    if config is not None:
        e["TFWB_AGENT_CONFIG"] = str(config)
    proc = run_cli(args, e, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tfwb-agent {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def status(config: Path) -> dict:
    return json.loads(agent(config, "status", "--json").stdout)


def by_run_id(st: dict) -> dict[str, dict]:
    return {r["run_id"]: r for r in st["runs"]}
