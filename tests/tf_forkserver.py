"""Training processes forked from an interpreter that has TensorFlow imported already.

Importing TensorFlow, scikit-learn and their kin is most of what a short training process of the
tests costs (several seconds of CPU each, against one or two for the training itself), and the
trainer tests start a few dozen of them under three interpreters. A fork server per interpreter
(this file run as ``python tf_forkserver.py SOCKET WATCH_PID``, under that interpreter: it must
stay valid Python 3.8, and so must ``cli_fork``, whose child set-up it uses) imports them once;
``ForkServerPopen`` asks it for a child that runs a script as ``python script.py args...`` would,
with the caller's environment, working directory and descriptors 0-2 (passed over the socket).
The child is a real process of its own, in a new session, that the test can SIGKILL like any
other; its exit status comes back over the socket.

What differs from a fresh ``python script.py``: TensorFlow and scikit-learn are in ``sys.modules``
before the script starts, so code that imports TensorFlow late sees it loaded already. Tests whose
subject is a process's start (the trainer plugin's import order, a refused volume) start afresh.
TensorFlow's import starts no thread of its own; NumPy's OpenBLAS does, and re-creates its
threads in a forked child.

The servers are shared by the session's xdist workers (one socket per interpreter in a
directory named after the run), started by the first worker that needs one and ended when the
pytest process that started the session is gone.
"""
from __future__ import annotations

import array
import fcntl
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Optional

import cli_fork  # (this directory: sys.path[0] when run as a script under another interpreter)

_MAX = 1 << 20  # one request: argv, env and cwd as JSON


def serve(sock_path: str, watch_pid: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sklearn.datasets  # noqa: F401  (the examples' data)
    import tensorflow  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tmp = f"{sock_path}.{os.getpid()}"
    listener.bind(tmp)
    listener.listen(64)
    os.rename(tmp, sock_path)  # appears only once it accepts
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    waiting: dict = {}  # child pid -> the connection its status goes back on
    served = 0
    while True:
        ready, _, _ = select.select([listener, wake_r], [], [], 1.0)
        if not _alive(watch_pid):
            own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"fork server done: {served} children; CPU seconds: server {own.ru_utime + own.ru_stime:.1f}, "
                  f"children {children.ru_utime + children.ru_stime:.1f}", file=sys.stderr)
            _remove(sock_path)
            return
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(waiting)
        if listener in ready:
            conn, _ = listener.accept()
            try:
                pid = _spawn(conn, listener, wake_r, wake_w)
                if pid is None:  # a caller checking that the server answers
                    conn.close()
                    continue
                waiting[pid] = conn
                served += 1
                _send(conn, {"pid": pid})
            except Exception as exc:  # noqa: BLE001 - a bad request answers its caller, the server goes on
                _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
                conn.close()


def _spawn(conn: socket.socket, listener: socket.socket, wake_r: int, wake_w: int) -> Optional[int]:
    fds = array.array("i")
    msg, ancdata, _, _ = conn.recvmsg(_MAX, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not msg and not fds:
        return None
    try:
        req = json.loads(msg)
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for s in (listener, conn):
                s.close()
            for fd in (wake_r, wake_w):
                os.close(fd)
            _child(req, list(fds))
        return pid
    finally:
        for fd in fds:
            os.close(fd)


def _child(req: dict, fds: list) -> None:
    """The request's program, as ``cli_fork`` runs a forked one: descriptors 0-2 the caller's,
    everything else closed, a session of its own, fresh signal handlers and streams."""
    cli_fork._child(cli_fork.run_python, list(req["argv"]), req["env"], req["cwd"],
                    tuple(fds), (), True, None)


def _reap(waiting: dict) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            _send(conn, {"exit": code})
            conn.close()


def _remove(sock_path: str) -> None:
    """The session is over: this server's socket, lock and log go, and the directory with the
    last server's (the log of a server that failed to start is read before then)."""
    base = sock_path[:-len(".sock")]
    for path in (sock_path, base + ".lock", base + ".log"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    root = os.path.dirname(sock_path)
    if not any(name.endswith(".sock") for name in os.listdir(root)):
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _send(conn: socket.socket, obj: dict) -> None:
    try:
        conn.send(json.dumps(obj).encode())
    except OSError:
        pass  # the caller is gone; its child (if any) runs on, as an orphan would


# --- the tests' side ------------------------------------------------------------------------------

def _server_dir() -> str:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{_session_pid()}"
    path = os.path.join(tempfile.gettempdir(), f"tfwb-tf-forkserver-{run}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _session_pid() -> int:
    """The pytest process the session belongs to: an xdist worker's parent, else this one."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def server_socket(python: str) -> str:
    """The socket of ``python``'s fork server, started here if no worker has started it yet."""
    root = _server_dir()
    # A venv's python is a symlink to its base interpreter: keyed as given, not resolved.
    key = hashlib.sha256(os.path.abspath(python).encode()).hexdigest()[:16]
    sock_path = os.path.join(root, f"{key}.sock")
    with open(os.path.join(root, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock_path):
            return sock_path
        home = os.path.join(root, "home")
        os.makedirs(home, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PYTEST_"))}
        env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", HOME=home, PYTHONUNBUFFERED="1")
        with open(os.path.join(root, f"{key}.log"), "ab") as log:
            server = subprocess.Popen([python, os.path.abspath(__file__), sock_path, str(_session_pid())],
                                      env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=log, start_new_session=True)
        assert server.stdout is not None
        line = server.stdout.readline()  # blocks until it listens, or has died
        server.stdout.close()
        if line != b"ready\n":
            server.wait()
            with open(os.path.join(root, f"{key}.log"), errors="replace") as f:
                raise RuntimeError(f"the fork server for {python} did not start (exit {server.returncode}):\n"
                                   f"{f.read()[-3000:]}")
        return sock_path


def _answers(sock_path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(sock_path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class ForkServerPopen(subprocess.Popen):
    """``subprocess.Popen([python, script, *args], ...)`` (or ``[python, "-c", code, *args]``)
    whose child the fork server of ``python`` forks (pipes, ``communicate``, ``wait`` and
    ``send_signal`` as usual). The child always starts a new session (as ``start_new_session=True``)."""

    _conn: Optional[socket.socket] = None

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       *rest) -> None:
        if shell or preexec_fn is not None or pass_fds or len(args) < 2 or (args[1] == "-c" and len(args) < 3):
            raise ValueError(f"ForkServerPopen runs `python script.py ...` or `python -c CODE ...` only, not {args!r}")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(server_socket(args[0]))
            req = {"argv": [os.fspath(a) for a in args[1:]], "cwd": os.fspath(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env)}
            fds = array.array("i", [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                                    errwrite if errwrite != -1 else 2])
            conn.sendmsg([json.dumps(req).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            answer = self._answer(conn)
        except BaseException:
            conn.close()
            raise
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # the child's ends
        if "pid" not in answer:
            conn.close()
            raise OSError(f"the fork server refused {args!r}: {answer.get('error')}")
        self.pid = answer["pid"]
        self._child_created = True
        self._conn = conn

    @staticmethod
    def _answer(conn: socket.socket) -> dict:
        data = conn.recv(_MAX)
        if not data:
            raise OSError("the fork server closed the connection (did it die? see its .log beside its socket)")
        return json.loads(data)

    def _internal_poll(self, _deadstate: Any = None, *args: Any, **kwargs: Any) -> Optional[int]:
        if self.returncode is None and self._conn is not None:
            conn = self._conn
            ready, _, _ = select.select([conn], [], [], 0)
            if ready:
                self._status(conn)
        return self.returncode

    def _wait(self, timeout: Optional[float]) -> int:
        if self.returncode is None and self._conn is not None:
            conn = self._conn
            ready, _, _ = select.select([conn], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._status(conn)
        return self.returncode

    def _status(self, conn: socket.socket) -> None:
        answer = self._answer(conn)
        conn.close()
        self._conn = None
        self.returncode = answer["exit"]


def run(argv: list, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, ...)`` with the child forked by ``argv[0]``'s fork server."""
    return cli_fork.run(argv, start=ForkServerPopen, **kwargs)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
