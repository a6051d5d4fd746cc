"""wandb's Python service (wandb 0.15 to 0.17) tells its port before it listens.

The service binds its socket, writes the port file, and only then does its accept thread call
``listen()`` (``server_sock.SocketServer.start``). A training process that reads the port file
in between is refused, and ``wandb.init`` fails with ``ManagerConnectionRefusedError``; on a
loaded node (the kind a GPU node is) that happens. The service is alive and listens a moment
later, so the refused connect is tried again, for as long as wandb waits for its service to start
(its ``_service_wait`` setting, 30 s by default). Other errors, and a service that has died,
fail as before. wandb versions whose client has no ``SockClient`` (wandb-core's) are untouched.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

_RETRY_PAUSE = 0.05  # seconds between attempts: the window is a thread start, not a process start
_DEFAULT_WAIT = 30.0  # wandb's default _service_wait


def tolerate_late_listen() -> bool:
    """Make wandb's service client retry a refused connect; True when this wandb has that client.
    Idempotent."""
    try:
        from wandb.sdk.lib.sock_client import SockClient
    except ImportError:
        return False
    connect = SockClient.connect
    if getattr(connect, "_tfwb_retries", False):
        return True
    SockClient.connect = _retrying(connect)  # type: ignore[method-assign]
    return True


def _retrying(connect: Callable[..., None]) -> Callable[..., None]:
    def retrying_connect(self: Any, port: int) -> None:
        deadline = time.monotonic() + _service_wait()
        while True:
            try:
                return connect(self, port)
            except ConnectionRefusedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_RETRY_PAUSE)

    retrying_connect._tfwb_retries = True  # type: ignore[attr-defined]
    return retrying_connect


def _service_wait() -> float:
    try:
        return float(os.environ.get("WANDB__SERVICE_WAIT", _DEFAULT_WAIT))
    except ValueError:
        return _DEFAULT_WAIT
