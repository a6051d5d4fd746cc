"""Run the agent's CLI, and the tests' other Python programs, as real child processes that start
from a fork of the test worker.

The suite calls `tfwb-agent` several hundred times; a fresh `python -m tfwb_agent` spends most of a
short command's CPU starting Python and importing the agent. A forked child has that done already
and is still a process of its own: its own pid, environment, working directory, descriptors 0-2
(everything else closed, as ``close_fds`` does), exit code and signals, so it can be
SIGKILLed at any moment like any other. Before running the command it puts back what a fresh
interpreter has and a pytest worker changes: default signal handlers, Python's default warning
filters printing to stderr, no logging handlers, empty ``atexit`` and ``lru_cache`` state, and
``sys.std*`` on the new descriptors.

``ForkedPopen`` is ``subprocess.Popen`` (pipes, ``communicate``, ``wait``, ``send_signal`` all as
usual) for ``[sys.executable, "-m", "tfwb_agent", ...]`` only; anything else — a command behind a
prefix such as ``setpriv``, or ``TFWB_TEST_CLI=exec`` in the environment — starts for real, and so
does the CLI while this process has an SQLite database open (SQLite does not survive a fork).
A subclass names another program the same way (``accepts`` and ``load``): the wandb writer
scripts (``ForkedWriter``), a plain ``wandb sync`` (``ForkedWandbSync``) and the OpenWandb test
server (``openwandb_server.ForkedServer``), whose imports are most of their start.
``test_forks.py`` checks a forked writer's run and the forked CLI's answers against fresh ones.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from typing import Any, Callable, Mapping, Sequence

_SIGNALS_RESET = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD, signal.SIGUSR1,
                  signal.SIGUSR2, signal.SIGQUIT)


def forking_allowed() -> bool:
    return os.environ.get("TFWB_TEST_CLI") != "exec"


def is_agent_cli(argv: Sequence[str]) -> bool:
    return list(argv[:3]) == [sys.executable, "-m", "tfwb_agent"] and forking_allowed()


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **kwargs)``; forked when ``argv`` is the agent's CLI, one of the
    tests' wandb writer scripts (``ForkedWriter``) or a plain ``wandb sync`` (``ForkedWandbSync``)."""
    for forked in (ForkedPopen, ForkedWriter, ForkedWandbSync):
        if forked.accepts(argv, kwargs.get("env")):
            return forked(list(argv), **kwargs)
    return subprocess.Popen(list(argv), **kwargs)


def run(argv: Sequence[str], timeout: float | None = None, capture_output: bool = False,
        start: Callable[..., subprocess.Popen] | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, ...)`` through ``popen`` (or ``start``, another ``Popen``)."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with (start or popen)(list(argv), **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def run_cli(args: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run([python, "-m", "tfwb_agent", *args], capture_output=True, text=True,
    env=env, timeout=timeout)``, forked."""
    return run([sys.executable, "-m", "tfwb_agent", *args], timeout=timeout, capture_output=True,
               stdin=subprocess.DEVNULL, text=True, env=env)


class ForkedPopen(subprocess.Popen):
    """``Popen`` whose child is a fork of this process running the agent's CLI in it."""

    @staticmethod
    def accepts(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        """Whether ``args`` (run with ``env``, None: this process's) is the program this class runs in a fork."""
        return is_agent_cli(args)

    @staticmethod
    def load() -> Callable[[list[str]], None]:
        """Import the program here, once per worker (what every child then skips); return what
        runs it in the child, given the whole ``args``."""
        from tfwb_agent.cli.main import cli

        def run(args: list[str]) -> None:
            sys.argv = [sys.modules["tfwb_agent"].__file__.replace("__init__.py", "__main__.py"), *args[3:]]
            cli.main(args=args[3:], prog_name="tfwb-agent")
        return run

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       *rest) -> None:
        if not self.accepts(args, env) or shell or preexec_fn is not None:
            raise ValueError(f"{type(self).__name__} does not run {args!r}")
        if _sqlite_open():  # SQLite's per-process state would be shared: start afresh instead
            return super()._execute_child(args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                                          creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread,
                                          errwrite, *rest)
        # restore_signals, gid, gids, uid, umask, start_new_session[, process_group (3.11+)]
        new_session = bool(rest[5]) if len(rest) > 5 else False
        group = rest[6] if len(rest) > 6 and rest[6] is not None and rest[6] >= 0 else None
        run = self.load()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written twice by the child
        pid = os.fork()
        if pid == 0:
            _child(run, list(args), env, cwd, (p2cread, c2pwrite, errwrite), tuple(pass_fds), new_session, group)
        self.pid = pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # the child's ends


class ForkedWriter(ForkedPopen):
    """``python tests/writers/<script>.py ...``: a training process writing offline runs with real
    wandb, in a fork of this process with wandb imported once per worker (its import is most of
    a short writer's CPU). The script runs as ``__main__``, as ``python script.py`` runs it. Not
    while this process has set wandb up itself (its service would be the child's too)."""

    SCRIPTS = ("write_run.py", "pause_run.py")

    @staticmethod
    def accepts(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        if len(args) < 2 or args[0] != sys.executable or not forking_allowed():
            return False
        script = os.path.abspath(args[1])
        if os.path.dirname(script) != _WRITERS or os.path.basename(script) not in ForkedWriter.SCRIPTS:
            return False
        return _wandb_unset()

    @staticmethod
    def load() -> Callable[[list[str]], None]:
        import wandb  # noqa: F401

        def run(args: list[str]) -> None:
            _capture_own_console()
            run_python(args[1:])
        return run


def run_python(argv: list[str]) -> None:
    """Run what ``python ARGV...`` runs, here: ``script.py args...`` or ``-c CODE args...``, as
    ``__main__``, with the ``sys.argv`` and ``sys.path[0]`` the interpreter would give it."""
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        main = sys.modules["__main__"] = type(sys)("__main__")
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        return
    import runpy

    script = os.path.abspath(argv[0])
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


class ForkedWandbSync(ForkedPopen):
    """``wandb sync ...`` with the wandb beside this interpreter (the tests' plain syncs, the
    side the agent's deliveries are compared with), in a fork with wandb's CLI imported once
    per worker. Not while this process has set wandb up itself."""

    @staticmethod
    def accepts(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        # The wandb the child's own PATH finds (a test may put another interpreter's first).
        path = (os.environ if env is None else env).get("PATH")
        return (list(args[:2]) == ["wandb", "sync"] and forking_allowed() and _wandb_unset()
                and shutil.which("wandb", path=path) == os.path.join(os.path.dirname(sys.executable), "wandb"))

    @staticmethod
    def load() -> Callable[[list[str]], None]:
        from wandb.cli import cli as cli_mod
        from wandb.cli.cli import cli

        def run(args: list[str]) -> None:
            _capture_own_console()
            # wandb's CLI chose its debug log's place when this worker imported it; a fresh
            # `wandb` chooses it from its own environment: ``WANDB_DIR/wandb`` if that exists.
            wandb_dir = os.path.join(os.environ.get("WANDB_DIR") or os.getcwd(), "wandb")
            if os.path.isdir(wandb_dir):
                cli_mod._wandb_log_path = os.path.join(wandb_dir, os.path.basename(cli_mod._wandb_log_path))
            sys.argv = [shutil.which("wandb") or "wandb", *args[1:]]
            cli.main(args=list(args[1:]), prog_name="wandb")
        return run


def _wandb_unset() -> bool:
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    return setup is None or getattr(setup, "_singleton", None) is None


def _capture_own_console() -> None:
    """wandb patches sys.stdout's and sys.stderr's write() when it is first imported (its
    console capture); here that was the worker's: patch the child's own streams."""
    capture = sys.modules.get("wandb.sdk.lib.console_capture")
    if capture is not None:
        importlib.reload(capture)


_WRITERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "writers")


def _child(run: Callable[[list[str]], None], args: list[str], env: dict[str, str] | None, cwd: Any,
           fds: tuple[int, int, int], pass_fds: tuple[int, ...], new_session: bool, group: int | None) -> None:
    code: int = 1
    try:
        signal.set_wakeup_fd(-1)  # (a fork server's, see tf_forkserver)
        for target, fd in enumerate(fds):
            if fd != -1 and fd != target:
                os.dup2(fd, target)
        _close_other_fds(keep={0, 1, 2, *pass_fds})
        if new_session:
            os.setsid()
        if group is not None:
            os.setpgid(0, group)
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace", buffering=1)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr  # as a fresh interpreter's
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in _SIGNALS_RESET:
            signal.signal(sig, signal.SIG_DFL)
        _fresh_warnings()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        atexit._clear()
        _clear_agent_caches()
        run(args)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001 - what a fresh interpreter would print, and exit 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


_SQLITE_FILE = re.compile(r"\.(sqlite3?|db)(-wal|-shm|-journal)?$")


def _sqlite_open() -> bool:
    """Whether this process has an SQLite database open (a ledger, OpenWandb's tables). SQLite
    keeps per-process state about the files it has open (locks, the WAL index); a forked child
    would start with a copy of it, which SQLite does not support."""
    return any(_SQLITE_FILE.search(path) for path in _open_paths().values())


def _open_paths() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, already gone
    return out


def _close_other_fds(keep: set[int]) -> None:
    """Close what this process had open, as ``close_fds`` does: a lock the test holds through an
    open file (``flock``) must not stay held by the child, nor a pipe's end stay open in it."""
    for fd in _open_paths():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter does with sys.exit("message")
    return 1


def _fresh_warnings() -> None:
    """Python's own default filters, shown on stderr, instead of pytest's recording ones."""
    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings._showwarnmsg_impl = lambda msg: sys.stderr.write(warnings._formatwarnmsg_impl(msg))
    warnings.showwarning = warnings._showwarning_orig


def _clear_agent_caches() -> None:
    """Nothing an earlier in-process test computed (a proxy setting, a CA context) reaches the child."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in ("tfwb_agent", "tfwb_trainer") or module is None:
            continue
        for value in list(vars(module).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear):
                clear()
