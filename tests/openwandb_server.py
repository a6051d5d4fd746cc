"""A real W&B-compatible server for tests: OpenWandb, started on a free port.

    server = start_openwandb(tmp_path)
    try:
        ... WANDB_BASE_URL=server.url WANDB_API_KEY=server.api_key wandb sync ...
        rows = server.query("SELECT ... FROM metrics WHERE run_id = ?", (run_id,))
    finally:
        server.stop()

Readiness is observed, never assumed: the key is read from the server's own start-up output,
and the helper polls the HTTP port until it answers. OpenWandb is test-only (its licence is
non-commercial); nothing in the agent imports this.

The server runs as ``openwandb serve`` does, through this file (``python openwandb_server.py serve
...``, at the bottom; started as a fork of the test worker, ``ForkedServer``), with one change: an
API key is checked with bcrypt once, not on every request. OpenWandb checks the key of each request with ``bcrypt.checkpw`` (about 0.3 s of CPU
each), which made the test server the costliest process of every delivery test (55 of the 95 CPU
seconds of a 20-run delivery). A key that failed its check fails again, from the same memo.
A test whose timing was chosen against the stock server's pace (the delivery kill test) asks for
it with ``key_check_seconds``: each check then holds its request that long, as bcrypt did,
without the CPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cli_fork as forks
from cli_fork import ForkedPopen, forking_allowed

ENTITY = "admin"  # OpenWandb's default user; runs synced with this key land under it
_KEY_RX = re.compile(r"WANDB_API_KEY=(\S+)")


@dataclass
class Server:
    url: str
    api_key: str
    db_path: Path
    data_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    entity: str = ENTITY

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s). Safe to call twice."""
        stop_process(self.process)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read what arrived from the server's SQLite database (tables runs, metrics, files)."""
        # An ordinary connection (it only reads): a read-only one may not map the server's WAL
        # index and then reads the main file alone, without the rows still in the WAL.
        con = sqlite3.connect(self.db_path, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + _basic("api", self.api_key)})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def sync_env(self) -> dict[str, str]:
        """Environment for a `wandb sync` subprocess aimed at this server. Its CLI debug log goes
        beside the server's data (``WANDB_DIR``, its ``wandb/`` made first), not into the one
        world-readable file in /tmp that wandb appends to otherwise."""
        client = self.data_dir.parent / "wandb-client"
        (client / "wandb").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(WANDB_BASE_URL=self.url, WANDB_API_KEY=self.api_key, WANDB_SILENT="true", WANDB_DIR=str(client))
        env.pop("WANDB_MODE", None)
        return env


def _basic(user: str, password: str) -> str:
    import base64
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return False


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s. Safe to call twice."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


_PACE_ENV = "TFWB_TEST_OPENWANDB_KEY_CHECK_SECONDS"
_DIE_ENV = "TFWB_TEST_OPENWANDB_DIE_AFTER_CHUNKS"
# Benchmark mode, off unless set to 1 in the environment of whoever starts the server (see
# ``_shim_history_line_count``); the tests run the stock answer.
HISTORY_LINE_COUNT_ENV = "TFWB_TEST_OPENWANDB_HISTORY_LINE_COUNT"


def launch(port: int, data_dir: Path, log_path: Path, key_check_seconds: float = 0.0,
           die_after_chunks: int = 0) -> subprocess.Popen:
    """``openwandb serve`` on 127.0.0.1:``port`` with its data in ``data_dir``, output to ``log_path``;
    ``key_check_seconds``: how long each key check holds its request (stock OpenWandb: ~0.3);
    ``die_after_chunks`` N > 0: the server SIGKILLs itself once it has stored its Nth chunk of
    rows, before answering it (the worst moment to lose it: see ``_answer_retries_once``)."""
    if importlib.util.find_spec("openwandb") is None:
        raise RuntimeError("openwandb is not installed (pip install -e '.[test]')")
    env = dict(os.environ, **{_PACE_ENV: str(key_check_seconds), _DIE_ENV: str(die_after_chunks)})
    argv = [sys.executable, __file__, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--log-level", "warning"]
    with open(log_path, "wb") as log:
        return (ForkedServer if ForkedServer.accepts(argv, env) else subprocess.Popen)(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


class ForkedServer(ForkedPopen):
    """``python openwandb_server.py serve ...`` in a fork of this process (see ``cli_fork``): the
    libraries OpenWandb serves with (FastAPI, Strawberry, uvicorn: most of its start-up CPU) are
    imported here once; OpenWandb's own modules are not, since they read their configuration
    from the environment at their first import, which happens in the child as before."""

    @staticmethod
    def accepts(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        return list(args[:3]) == [sys.executable, __file__, "serve"] and forking_allowed()

    @staticmethod
    def load() -> Callable[[list[str]], None]:
        import bcrypt  # noqa: F401
        import fastapi.templating  # noqa: F401
        import strawberry.fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        def run(args: list[str]) -> None:
            sys.argv = list(args[1:])
            _serve()
        return run


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> str | None:
    """The API key, once the server printed it and its port answers; None if it exited or the
    time ran out."""
    deadline = time.monotonic() + timeout
    key = None
    while time.monotonic() < deadline and proc.poll() is None:
        if key is None:
            m = _KEY_RX.search(log_path.read_text(errors="replace"))
            key = m.group(1) if m else None
        if key is not None and _answers(url):
            return key
        time.sleep(0.1)  # polling interval between observations, not a wait for readiness
    return None


def start_openwandb(tmp_path: Path, timeout: float = 60.0) -> Server:
    """Start ``openwandb serve`` with its data under ``tmp_path``; return once it answers."""
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = _free_port()
        data_dir = Path(tmp_path) / f"openwandb-{port}"
        data_dir.mkdir(parents=True)
        log_path = data_dir.parent / f"openwandb-{port}.log"
        proc = launch(port, data_dir, log_path)
        url = f"http://127.0.0.1:{port}"
        key = wait_ready(proc, url, log_path, timeout)
        if key is not None:
            return Server(url, key, data_dir / "openwandb.db", data_dir, log_path, proc)
        last_error = log_path.read_text(errors="replace")[-2000:]
        if proc.poll() is None:
            stop_process(proc)
            raise RuntimeError(f"openwandb did not answer on {url} within {timeout:.0f}s:\n{last_error}")
    raise RuntimeError(f"openwandb exited at start three times; last output:\n{last_error}")


def wandb_sync(server: Server, run_dir: Path, project: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """`wandb sync` one run directory (a copy: sync writes into it) to the server."""
    return forks.run(["wandb", "sync", "--project", project, "--entity", server.entity, str(run_dir)],
                     env=server.sync_env(), capture_output=True, text=True, timeout=timeout)


def _configure_from_argv() -> None:
    """OpenWandb reads its config once, at its first import: set it as `openwandb serve` would,
    before the changes below import it."""
    argv = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    os.environ.update(OPENWANDB_DATA_DIR=str(Path(argv["--data-dir"]).resolve()), OPENWANDB_HOST=argv["--host"],
                      OPENWANDB_PORT=argv["--port"], OPENWANDB_LOG_LEVEL=argv["--log-level"].upper())


def _reject_wrong_keys() -> None:
    """A request that presents an API key the server does not know is answered 401, as W&B
    answers it. Stock OpenWandb serves it as its admin user ("permissive mode"), so a wrong key
    would deliver. A request with no key at all is still served as before (OpenWandb's upload
    URLs carry none)."""
    from fastapi import HTTPException
    from openwandb import auth

    authenticate = auth.authenticate

    def authenticate_strictly(request):
        if auth.extract_api_key(request) and auth.get_current_user(request) is None:
            raise HTTPException(status_code=401, detail="invalid API key")
        return authenticate(request)

    auth.authenticate = authenticate_strictly


def _answer_retries_once() -> None:
    """A ``file_stream`` request that arrives again, byte for byte, from the same ``wandb sync``
    is answered without its rows being stored twice.

    W&B's server is idempotent there (each chunk names the line ``offset`` it starts at); stock
    OpenWandb appends every chunk it gets. When the server dies after storing a chunk but
    before answering, wandb retries the same request against the restarted server, and
    OpenWandb alone would hold those rows twice: a duplicate no agent could avoid, and not one
    W&B makes. So a chunk's metric rows and the memo that it arrived are committed in one
    transaction, after its lines reached the run's history file (a kill between the two leaves
    an extra line in that file, which only makes the server's row count larger, never rows
    twice in ``metrics``). The memo lives in the server's database (it must survive the kill)
    and is forgotten for a run whenever the run is upserted, i.e. when a new ``wandb sync``
    begins sending it: a chunk an agent *re-sends* in a later sync is stored again, so
    duplicates the agent causes still show. Only what this server process stored is forgotten:
    after a restart the same ``wandb sync`` may upsert the run again before it retries the chunk
    the kill left unanswered, and that chunk was stored by the server before the restart."""
    import hashlib
    import uuid

    from openwandb import database, file_stream

    boot = uuid.uuid4().hex  # this server process, apart from the ones before a restart
    die_after = int(os.environ.get(_DIE_ENV) or 0)
    stored = [0]
    with database.get_db() as con:
        con.execute("CREATE TABLE IF NOT EXISTS test_stream_chunks (run_id TEXT, digest TEXT, boot TEXT, "
                    "PRIMARY KEY (run_id, digest))")
    process, upsert_run = file_stream.process_file_stream, database.upsert_run
    held: list[tuple[str, list[dict]]] = []  # one request at a time: the endpoint runs on the event loop

    def process_once(entity, project, run_id, payload, user_id=None):
        if not payload.get("files"):  # a heartbeat or the final word: storing it twice is harmless
            return process(entity, project, run_id, payload, user_id=user_id)
        # Each file's chunk names its offset, so equal lines at two offsets differ here.
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        with database.get_db() as con:
            if con.execute("SELECT 1 FROM test_stream_chunks WHERE run_id = ? AND digest = ?",
                           (run_id, digest)).fetchone():
                return {"exitcode": None, "limits": {}}
        held.clear()
        database.insert_metrics = lambda rid, rows: held.append((rid, rows))
        try:
            answer = process(entity, project, run_id, payload, user_id=user_id)
        finally:
            database.insert_metrics = insert_metrics
        with database.get_db() as con:
            for rid, rows in held:
                con.executemany("INSERT INTO metrics (run_id, key, step, value, wall_time) VALUES (?,?,?,?,?)",
                                [(rid, m["key"], m["step"], m["value"], m["wall_time"]) for m in rows])
            con.execute("INSERT OR IGNORE INTO test_stream_chunks VALUES (?, ?, ?)", (run_id, digest, boot))
        # A chunk of rows: a chunk of console output or system metrics alone does not count
        # (which runs a wandb sync starts with is its own choice, and some begin with those).
        if any(rows for _rid, rows in held):
            stored[0] += 1
            if stored[0] == die_after:  # stored, not answered: the client can only send it again
                os.kill(os.getpid(), signal.SIGKILL)
        return answer

    def upsert_forgetting(project_id, run_id, *args, **kwargs):
        with database.get_db() as con:
            con.execute("DELETE FROM test_stream_chunks WHERE run_id = ? AND boot = ?", (run_id, boot))
        return upsert_run(project_id, run_id, *args, **kwargs)

    insert_metrics = database.insert_metrics
    file_stream.process_file_stream = process_once
    database.upsert_run = upsert_forgetting


def _shim_history_line_count() -> None:
    """A shim, for benchmarks only: a run's ``historyLineCount`` answered with the lines of the
    history the server holds for it, as W&B Server answers it. Stock OpenWandb answers 0, so a
    client that needs the count (the agent, to know what the server holds) downloads the whole
    history file instead: a cost W&B users do not pay, which bounded the delivery benchmark's
    figure. The count is memoised per file size (W&B keeps it as a counter; rereading the file
    on every question would charge the server's CPU what W&B does not)."""
    from openwandb import graphql_schema, storage

    to_type = graphql_schema._run_to_type
    counted: dict[str, tuple[int, int]] = {}  # history file -> (its size, its non-empty lines)

    def with_line_count(run: dict):
        t = to_type(run)
        path = storage.get_run_files_dir(t._entity_name, t._project_name, t.name) / "wandb-history.jsonl"
        try:
            size = path.stat().st_size
        except OSError:
            return t
        memo = counted.get(str(path))
        if memo is None or memo[0] != size:
            with open(path, "rb") as f:
                memo = (size, sum(1 for line in f if line.strip()))
            counted[str(path)] = memo
        t.history_line_count = memo[1]
        return t

    graphql_schema._run_to_type = with_line_count


def _serve() -> None:
    """``openwandb serve`` with each API key checked once (see the top of this file), at the
    stock server's pace if asked; bcrypt hashes made at start-up (the admin password, the default
    key) take its fewest rounds."""
    import functools

    import bcrypt

    checked = functools.lru_cache(maxsize=256)(bcrypt.checkpw)
    pace = float(os.environ.get(_PACE_ENV) or 0)

    def checkpw(password: bytes, hashed: bytes) -> bool:
        if pace:
            time.sleep(pace)  # the stock server's pace when a test asks for it (see the top)
        return checked(password, hashed)

    bcrypt.checkpw = checkpw
    gensalt = bcrypt.gensalt
    bcrypt.gensalt = lambda rounds=4, prefix=b"2b": gensalt(rounds, prefix)
    _configure_from_argv()
    _answer_retries_once()
    _reject_wrong_keys()
    if os.environ.get(HISTORY_LINE_COUNT_ENV) == "1":
        _shim_history_line_count()
    from openwandb.cli import main

    main(prog_name="openwandb")


if __name__ == "__main__":
    _serve()
