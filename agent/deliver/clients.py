"""The wandb client that runs ``wandb sync`` for a target: the agent's own, a pinned version in a
venv of its own, or a Python a person names.

``[targets.NAME] wandb`` picks it:

* absent: the wandb installed beside the agent;
* ``"0.25.1"`` (a version): the agent installs exactly that wandb, once, into a venv of its own
  under ``<state_dir>/clients/wandb-0.25.1`` (from ``wandb_index``: a wheelhouse directory or a
  package index URL, else pip's own configuration) and runs ``wandb sync`` from there. The venv is
  built under a lock (several agents on one state dir build it once) and counts as built only
  when a marker written last is there; a half-built one is built again. A build that fails says
  why (pip's last words) and what to set, never with a traceback;
* ``"/path/to/python"``: that Python, which must import wandb (``python -m wandb sync``).

W&B's SDK drops old W&B Server releases as it moves on (its release notes: 0.26 needs server
0.63, 0.28 needs 0.65, 0.28.1 needs 0.70). ``too_new`` says when a client is too new for the
version a server reports, so that nothing is sent to a server whose client would not be understood
(``wandb sync`` exits 0 on that and the runs would be retried for ever).
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path

VERSION = re.compile(r"^\d+\.\d+\.\d+(?:(?:a|b|rc|\.post|\.dev)\d+)?$")

# The oldest W&B Server each wandb release (and every later one) still works with, from wandb's
# release notes ("This version drops compatibility with server versions older than ..."). Newest first.
MIN_SERVER: tuple[tuple[str, str], ...] = (
    ("0.28.1", "0.70.0"),
    ("0.28.0", "0.65.0"),
    ("0.26.0", "0.63.0"),
)

INSTALL_TIMEOUT = 1800.0


class ClientError(Exception):
    """The target's wandb client cannot be had (not installed, cannot be installed, not a wandb)."""


def vtuple(v: str) -> tuple[int, ...]:
    """A version as numbers to compare (``0.25.1rc1`` -> (0, 25, 1)); unreadable parts are 0."""
    out = []
    for part in v.strip().lstrip("v").split(".")[:3]:
        m = re.match(r"\d+", part)
        out.append(int(m.group()) if m else 0)
    return tuple(out + [0] * (3 - len(out)))


def min_server_for(client_version: str) -> str | None:
    """The oldest W&B Server this wandb client still works with (None: no floor known)."""
    cv = vtuple(client_version)
    for client, server in MIN_SERVER:
        if cv >= vtuple(client):
            return server
    return None


def too_new(client_version: str, server_version: str | None) -> str | None:
    """Why a wandb client is too new for a server reporting ``server_version`` (None: it is not,
    or the server's version is unknown)."""
    if not server_version:
        return None
    floor = min_server_for(client_version)
    if floor and vtuple(server_version) < vtuple(floor):
        first_too_new = min((c for c, s in MIN_SERVER if vtuple(server_version) < vtuple(s)), key=vtuple)
        return (f"wandb {client_version} is too new for this server: it needs W&B Server {floor} or newer and the "
                f"server reports {server_version}. Set wandb = \"VERSION\" under this target to a wandb older than "
                f"{first_too_new}, or upgrade the server")
    return None


@dataclass(frozen=True)
class Client:
    argv: tuple[str, ...]   # the wandb CLI: argv[0..] then "sync ..."
    version: str            # its wandb version
    how: str                # in words: where it comes from
    python: str | None = None  # its interpreter, when not the agent's own
    own: bool = True        # the wandb beside the agent

    def syncs_in_parallel(self) -> bool:
        """``wandb sync -n`` (several runs in one process) exists from wandb 0.30 on."""
        if self.own:
            return syncs_in_parallel()
        return vtuple(self.version) >= (0, 30, 0)

    def describe(self) -> str:
        return f"wandb {self.version} ({self.how})"


def wandb_exe() -> list[str]:
    """The wandb CLI installed beside this Python (the agent's own wandb), else on PATH."""
    beside = Path(sys.executable).parent / "wandb"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "wandb"]


@functools.lru_cache(maxsize=1)
def syncs_in_parallel() -> bool:
    """Whether the agent's own ``wandb sync`` takes ``-n`` (several runs at once in one process,
    wandb >= 0.30). Older ones get one process per run, as many at a time as allowed. Read from
    the installed version, not by importing wandb's CLI: that import is ~1.5 s, most of a small
    delivery's time."""
    return vtuple(_agent_wandb_version()) >= (0, 30, 0)


def _agent_wandb_version() -> str:
    try:
        return dist_version("wandb")
    except Exception:  # noqa: BLE001 - a wandb without metadata: ask the module itself
        try:
            import wandb  # lazy: heavy, and only for a wandb installed without its metadata
            return str(wandb.__version__)
        except Exception:  # noqa: BLE001
            return "unknown"


@functools.lru_cache(maxsize=1)
def agent_client() -> Client:
    """The wandb installed beside this Python (the agent's own), else ``python -m wandb``."""
    return Client(tuple(wandb_exe()), _agent_wandb_version(), "beside the agent")


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a client that is not the agent's own: nothing that would make its
    Python import the agent's packages instead of its own."""
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                                                      "PYTHONUSERBASE")}


def _version_of(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('wandb'))"],
                             capture_output=True, text=True, timeout=120, env=clean_env(dict(os.environ)),
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClientError(f"cannot run {python}: {exc}") from None
    if out.returncode != 0 or not out.stdout.strip():
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClientError(f"{python} has no wandb ({last[:200]})")
    return out.stdout.strip().splitlines()[-1]


def python_client(python: str) -> Client:
    """A Python a person named, which must import wandb."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ClientError(f"{python} is not an executable file")
    version = _version_of(python)
    beside = Path(python).parent / "wandb"
    argv = (str(beside),) if beside.is_file() and os.access(beside, os.X_OK) else (python, "-m", "wandb")
    return Client(argv, version, f"python {python}", python, own=False)


def venv_dir(state_dir: Path, version: str) -> Path:
    return Path(state_dir) / "clients" / f"wandb-{version}"


_MARKER = "tfwb-client.complete"


def _pip_index(index: str | None) -> tuple[list[str], dict[str, str]]:
    """pip's arguments and environment for ``index``. A package index goes by the environment
    (``PIP_INDEX_URL``), not the command line: its URL may carry a token (``https://u:T@host``),
    and a process's arguments are readable by every user of the host."""
    if not index:
        return [], {}
    if index.startswith(("http://", "https://", "file://")):
        return [], {"PIP_INDEX_URL": index}
    return ["--no-index", "--find-links", index], {}  # a wheelhouse: that directory alone


def installed(state_dir: Path, version: str) -> Client | None:
    root = venv_dir(state_dir, version)
    if not (root / _MARKER).is_file():
        return None
    py = root / "bin" / "python"
    exe = root / "bin" / "wandb"
    argv = (str(exe),) if exe.is_file() else (str(py), "-m", "wandb")
    return Client(argv, version, f"venv {root}", str(py), own=False)


def install(state_dir: Path, version: str, index: str | None = None, target: str | None = None,
            log=None) -> Client:
    """Exactly wandb ``version`` in its own venv under the state dir, built once (under a lock:
    several agents on one state dir, or a daemon and `targets check`, build it once)."""
    where = f"targets.{target}.wandb" if target else "wandb under [targets.NAME]"
    done = installed(state_dir, version)
    if done:
        return done
    root = venv_dir(state_dir, version)
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root.parent / f"wandb-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = installed(state_dir, version)
        if done:
            return done
        if log:
            log(f"installing wandb {version} into {root} (once; {where})")
        shutil.rmtree(root, ignore_errors=True)  # a half-built one from an interrupted build
        pip_log = root.parent / f"wandb-{version}.pip.log"
        index_args, index_env = _pip_index(index)
        steps = _build_steps(root, [*index_args, f"wandb=={version}"])
        env = clean_env(dict(os.environ))
        env.pop("PIP_REQUIRE_VIRTUALENV", None)
        env.update(index_env)
        for argv in steps:
            why = ""
            try:
                with open(pip_log, "ab") as out:
                    rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, timeout=INSTALL_TIMEOUT).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                rc, why = -1, str(exc)
            if rc != 0:
                said = _last_words(pip_log) or why
                shutil.rmtree(root, ignore_errors=True)
                raise ClientError(
                    f"cannot install wandb {version} for {where} into {root}"
                    + (f": pip said: {said}" if said else "")
                    + f" (full log: {pip_log}). Set wandb_index under this target to a wheelhouse directory or "
                    f"package index that has wandb {version} and its dependencies, or wandb = \"/path/to/python\" "
                    "of a Python that has it")
        got = _version_of(str(root / "bin" / "python"))
        if got != version:
            shutil.rmtree(root, ignore_errors=True)
            raise ClientError(f"asked for wandb {version} for {where}, pip installed {got}")
        (root / _MARKER).write_text(version + "\n")
    return installed(state_dir, version)  # type: ignore[return-value]


def _build_steps(root: Path, requirement: list[str]) -> list[list[str]]:
    """The commands that build the venv. With a pip of its own that can install into another
    Python (pip >= 22.3, ``--python``), the agent's pip fills a venv made without pip: no second
    pip is installed and nothing is byte-compiled up front (the venv's Python compiles what it
    imports, once), a fraction of the work. Otherwise the venv gets its own pip."""
    py = str(root / "bin" / "python")
    quiet = ["--disable-pip-version-check", "--no-input", "--quiet"]
    if _pip_version(sys.executable) >= (22, 3):
        return [[sys.executable, "-m", "venv", "--without-pip", str(root)],
                [sys.executable, "-m", "pip", "--python", py, "install", *quiet, "--no-compile", *requirement]]
    return [[sys.executable, "-m", "venv", str(root)], [py, "-m", "pip", "install", *quiet, *requirement]]


def _pip_version(python: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    parts = out.split()
    return vtuple(parts[1]) if len(parts) > 1 and parts[0] == "pip" else ()


def _last_words(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return " ".join((errors or lines)[-2:])[:400]


def for_target(t, state_dir: Path, *, install_missing: bool = True, log=None) -> Client:
    """The client that runs ``wandb sync`` for target ``t`` (installing a pinned one when missing)."""
    spec = getattr(t, "wandb", None)
    if not spec:
        return agent_client()
    if spec.startswith("/"):
        return python_client(spec)
    if not install_missing:
        c = installed(state_dir, spec)
        if c is None:
            raise ClientError(f"wandb {spec} for targets.{t.name}.wandb is not installed yet")
        return c
    return install(state_dir, spec, getattr(t, "wandb_index", None), t.name, log)


# --- which client each configured target uses ----------------------------------------------------
# ``settings.targets(cfg)`` registers the configured targets here (with the state dir their venvs
# live under), so that the probe (which knows a target by name) and ``upload.start`` (which knows
# it by base URL) find its client without every caller passing it along. Targets that share a
# base URL must name the same client (settings refuses a config where they do not).

_registry: dict[str, tuple[object, Path]] = {}     # target name -> (Target, state_dir)
_by_url: dict[str, str] = {}                        # base_url -> target name
_resolved: dict[str, Client] = {}                   # target name -> client, once had
_lock = threading.Lock()


def announce(message: str) -> None:
    """Said before a client is installed (the CLI says it on stderr; the daemon logs it)."""
    logging.getLogger("tfwb_agent.deliver").warning("%s", message)


def register(targets: dict, state_dir: Path) -> None:
    with _lock:
        for name, t in targets.items():
            prev = _registry.get(name)
            if prev and (prev[0] != t or prev[1] != Path(state_dir)):
                _resolved.pop(name, None)
            _registry[name] = (t, Path(state_dir))
            _by_url[t.base_url] = name


def client_for(name: str | None, *, log=None) -> Client | None:
    """The client of registered target ``name`` (installing a pinned one the first time); None
    for a name not registered. Raises ClientError when it cannot be had."""
    if not name:
        return None
    with _lock:
        got = _resolved.get(name)
        entry = _registry.get(name)
    if got is not None or entry is None:
        return got
    t, state_dir = entry
    c = for_target(t, state_dir, log=log or announce)
    with _lock:
        _resolved[name] = c
    return c


def client_for_url(base_url: str) -> Client | None:
    """The client for the target at ``base_url`` (None: not a registered target, or its client
    was never had: the agent's own then)."""
    with _lock:
        name = _by_url.get(base_url.rstrip("/"))
    if name is None:
        return None
    try:
        return client_for(name)
    except ClientError:
        return None
