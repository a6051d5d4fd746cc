"""Upload prepared run directories with the installed wandb's own ``wandb sync``.

The server URL and API key travel in the child's environment only, never on its command line
(``ps`` shows argv to every user) and never in a log. wandb's own config, cache and data
directories and its CLI's debug log point into the private work directory, so the child neither
reads nor writes the agent user's ``~/.netrc`` or ``~/.config/wandb``, nor the system's
temporary directory. The child runs in its own session: if the
agent is killed mid-upload, the upload finishes by itself, and the next agent waits for it
(its pid and start time are in the ledger) before asking the server what arrived. An agent that
is *stopped* (SIGTERM, SIGINT, its --timeout) stops its uploads itself: ``stop_all`` kills each
one's whole process group (wandb sync and what it started), and no new one starts.
"""
from __future__ import annotations

import json
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import certifi

from .clients import clean_env, client_for_url, wandb_exe
from .server import ca_bundle

# The agent's own ``WANDB_*`` variables do not reach wandb sync: each may change what it does
# or add to what it sends (``WANDB_USERNAME`` and ``WANDB_USER_EMAIL`` go out as request headers:
# the delivering host's user). Only these, which say how to talk to the server and nothing about
# anyone, are passed on.
_PASSED_WANDB = frozenset({"WANDB_HTTP_TIMEOUT", "WANDB__SERVICE_WAIT", "WANDB_INIT_TIMEOUT", "WANDB_DEBUG",
                           "WANDB_CORE_DEBUG"})


def ca_bundle_for_child(ca_file: str | None, home: Path) -> str | None:
    """The CA bundle the ``wandb sync`` child trusts: None (its defaults) unless a CA is set
    (``ca_file``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``). Then one file holding the system's
    CAs and the site's: wandb-core (Go) reads ``SSL_CERT_FILE`` *instead of* the system store,
    and the same upload may go on to a storage host signed by a public CA."""
    ca = ca_bundle(ca_file)
    if not ca:
        return None
    parts = []
    system = ssl.get_default_verify_paths().openssl_cafile
    system = system if os.path.isfile(system) else certifi.where()
    for path in (ca, system):
        try:
            parts.append(Path(path).read_bytes())
        except OSError:
            continue
    out = home / "ca-bundle.pem"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.write_bytes(b"\n".join(parts))
    return str(out)


def sync_env(base_url: str, api_key: str, home: Path, ca_file: str | None = None,
             own_client: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") or k in _PASSED_WANDB}
    if not own_client:  # a target's own wandb (clients.py) must not import the agent's packages
        env = clean_env(env)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = ca_bundle_for_child(ca_file, home)
    if bundle:  # wandb's Python side reads REQUESTS_CA_BUNDLE; wandb-core (Go) reads SSL_CERT_FILE
        env.update(REQUESTS_CA_BUNDLE=bundle, SSL_CERT_FILE=bundle)
    # wandb's CLI appends its debug log to ``WANDB_DIR/wandb/debug-cli.<user>.log`` if that
    # directory exists, else to one file in the system's temporary directory, readable by every
    # user and never rotated (the work directories' paths, file names, tracebacks of every
    # upload): here it goes into the private directory, removed with it.
    (home / "wandb").mkdir(exist_ok=True, mode=0o700)
    env.update(WANDB_DIR=str(home), WANDB_BASE_URL=base_url, WANDB_API_KEY=api_key,
               WANDB_CONFIG_DIR=str(home / "config"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_DATA_DIR=str(home / "data"), WANDB_NETRC=str(home / "netrc"), WANDB_SILENT="false",
               WANDB_DISABLE_GIT="true", WANDB_ERROR_REPORTING="false", WANDB_X_ERROR_REPORTING="false",
               # Otherwise the server records this host's path to the wandb executable as the
               # run's program: a local path of the delivering host.
               WANDB_PROGRAM="tfwb-agent sync")
    return env


def sync_argv(run_dirs: Sequence[Path], project: str, entity: str | None, parallel: int = 1,
              exe: Sequence[str] | None = None) -> list[str]:
    argv = [*(exe or wandb_exe()), "sync", "--include-synced", "--include-online", "--project", project]
    if entity:
        argv += ["--entity", entity]
    if len(run_dirs) > 1 and parallel:  # parallel 0: a wandb without `-n` (before 0.30)
        argv += ["-n", str(max(1, parallel))]
    return argv + [str(d) for d in run_dirs]


class Stopped(Exception):
    """This process is stopping: no new upload starts."""


stopping = threading.Event()
_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()


def stop_all() -> int:
    """Stop every upload this process started (its whole process group) and start no more.
    Returns how many were still running. Safe from a signal handler."""
    stopping.set()
    with _running_lock:
        procs = list(_running.values())
    stopped = 0
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the upload's alone
                stopped += 1
            except ProcessLookupError:
                pass
    return stopped


def kill(up: "Upload") -> None:
    """Kill one upload, its whole process group (wandb sync starts helpers of its own)."""
    try:
        os.killpg(up.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    up.proc.wait()


def finished(up: "Upload") -> None:
    with _running_lock:
        _running.pop(up.pid, None)


@dataclass
class Upload:
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


# A ``wandb sync`` started before its runs are known: it imports wandb's CLI (~1 s of CPU, most
# of a small delivery's time) and starts wandb's service process (wandb-core, ~0.2 s), which
# `wandb sync` would otherwise start only once it has its runs, while the agent opens bundles and
# asks the server; then it reads its arguments, one JSON line, from stdin and runs the same CLI
# entry point as the ``wandb`` script (which finds the service started and uses it). Starting the
# service sends nothing to anyone; if it fails here, `wandb sync` tries again and says why. An
# empty stdin (the agent died or needed it no more) ends it without a request to anyone; the
# service notices its parent gone and ends too.
# Once the CLI returns, wandb is torn down as its own exit handler would (the service is told to
# finish and waited for), and the process ends without the interpreter's finalization of wandb's
# modules: that took 0.15-0.2 s after the upload was over, time the agent spent waiting before it
# could ask the server. An exception other than the CLI's exit ends the process as usual.
# The interpreter's exit would also have removed wandb's temporary directories (its media and
# artifacts scratch, made when wandb is imported, in the system's temporary directory): they are
# removed here, or a daemon's private /tmp gained two empty directories per upload for as long
# as it ran. (The agent's own process does not import the ``wandb`` package, only its protobuf
# types: it makes none.)
# wandb waits for its service's port file in sleeps of 0.2 s, where the service is up in ~0.02 s:
# since the sync is started ahead (``ahead.py``), this start-up is the delivery's critical path,
# so the wait looks every 10 ms (its ``_SLEEP`` hook; a wandb without it just waits as before).
_WARM_MAIN = ("import json, logging, os, sys, time\n"
              "from wandb.cli.cli import cli\n"
              "from wandb.sdk import wandb_setup\n"
              "try:\n"
              "    from wandb.sdk.lib.service import service_port_file\n"
              "    if hasattr(service_port_file, '_SLEEP'):\n"
              "        service_port_file._SLEEP = lambda s: time.sleep(min(s, 0.01))\n"
              "except ImportError:\n"
              "    pass\n"
              "try:\n"
              "    wandb_setup.singleton().ensure_service()\n"
              "except Exception:\n"
              "    pass\n"
              "line = sys.stdin.readline()\n"
              "if not line.strip():\n"
              "    sys.exit(0)\n"
              "sys.argv = ['wandb', *json.loads(line)]\n"
              "try:\n"
              "    cli()\n"
              "    code = 0\n"
              "except SystemExit as exc:\n"
              "    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1\n"
              "    if isinstance(exc.code, str):\n"
              "        print(exc.code, file=sys.stderr)\n"
              "wandb_setup.teardown(code)\n"
              "import tempfile\n"
              "for name, attr in (('wandb.sdk.data_types._private', 'MEDIA_TMP'),\n"
              "                   ('wandb.sdk.artifacts.artifact', 'Artifact')):\n"
              "    tmp = getattr(sys.modules.get(name), attr, None)\n"
              "    tmp = getattr(tmp, '_TMP_DIR', tmp)\n"
              "    if isinstance(tmp, tempfile.TemporaryDirectory):\n"
              "        tmp.cleanup()\n"
              "logging.shutdown()\n"
              "sys.stdout.flush()\n"
              "sys.stderr.flush()\n"
              "os._exit(code)\n")


@dataclass
class Warm:
    """A ``wandb sync`` process waiting for its arguments, with its private directory."""
    proc: subprocess.Popen
    home: Path      # wandb's config/cache/data and the process's cwd
    log_path: Path  # its stdout and stderr
    spent: bool = False  # given its runs (``start_warm``, an upload now) or discarded: nothing left to end

    def discard(self) -> None:
        """End it unused (its whole process group) and forget it; nothing once it is an upload
        (its pid may be reaped and reused by now) or discarded already."""
        if self.spent:
            return
        self.spent = True
        # wandb starts its service in a session of its own, outside the group killed here: left
        # to notice its parent gone, it went on writing its log into ``home`` after the caller
        # had removed it. It is ended too, and waited for (a pidfd names it for sure).
        service = _pidfds(_children(self.proc.pid))
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        with _running_lock:
            _running.pop(self.proc.pid, None)
        for fd in service:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                select.select([fd], [], [], 10.0)
            except OSError:
                pass  # ended already
            finally:
                os.close(fd)


def _children(pid: int) -> list[int]:
    """The processes ``pid``'s threads started that still run (Linux's /proc children lists)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def _pidfds(pids: list[int]) -> list[int]:
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            pass  # ended meanwhile
    return fds


def warm(base_url: str, api_key: str, root: Path, ca_file: str | None = None) -> Warm | None:
    """Start a ``wandb sync`` of the agent's own wandb in ``root`` (made private) that waits for
    its runs; None where the target has a wandb of its own (started cold, as before)."""
    client = client_for_url(base_url)
    if (client is not None and not client.own) or stopping.is_set():
        return None
    home = root / "wandb-home"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = root / "wandb-sync.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", _WARM_MAIN], env=sync_env(base_url, api_key, home, ca_file),
                                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=str(home),
                                start_new_session=True, close_fds=True)
    with _running_lock:
        _running[proc.pid] = proc
    if stopping.is_set():
        stop_all()
    return Warm(proc, home, log_path)


def start_warm(w: Warm, run_dirs: Sequence[Path], project: str, entity: str | None, parallel: int = 1) -> Upload:
    """Hand ``w`` its runs: from here it is an upload like one ``start`` began."""
    if stopping.is_set():
        raise Stopped("stopping: no new upload")
    argv = sync_argv(run_dirs, project, entity, parallel, exe=["wandb"])[1:]
    assert w.proc.stdin is not None and not w.spent
    w.spent = True
    try:
        w.proc.stdin.write((json.dumps(argv) + "\n").encode())
        w.proc.stdin.close()
    except BrokenPipeError:  # it died while waiting: its log says why; the server is asked after
        pass
    return Upload(w.proc, w.log_path)


def start(run_dirs: Sequence[Path], base_url: str, api_key: str, project: str, entity: str | None,
          home: Path, log_path: Path, parallel: int = 1, ca_file: str | None = None, client=None) -> Upload:
    """Start one ``wandb sync`` of ``run_dirs`` (private copies: sync writes into them), up to
    ``parallel`` of them at a time. One process for many runs: each wandb process costs about a
    second of CPU to start, which on a small node was most of the time a batch took. ``client``
    (``clients.Client``): the target's wandb; None: the one beside the agent."""
    if stopping.is_set():
        raise Stopped("stopping: no new upload")
    if client is None:  # the client configured for this target ([targets.NAME] wandb), else the agent's
        client = client_for_url(base_url)
    own = client is None or client.own
    exe = None if client is None else client.argv
    if client is not None and not own and not client.syncs_in_parallel():
        parallel = 0  # no `-n` before wandb 0.30: it takes several paths and syncs them one by one
    log = open(log_path, "ab")
    try:
        if client is not None:
            log.write(f"tfwb-agent: wandb sync by {client.describe()}\n".encode())
            log.flush()
        proc = subprocess.Popen(sync_argv(run_dirs, project, entity, parallel, exe),
                                env=sync_env(base_url, api_key, home, ca_file, own),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(home), start_new_session=True, close_fds=True)
    finally:
        log.close()
    with _running_lock:
        _running[proc.pid] = proc
    if stopping.is_set():  # stopped between the check above and here
        stop_all()
    return Upload(proc, log_path)
