"""systemd's notify protocol (sd_notify(3)), in plain socket code: READY=1 once the daemon
watches, WATCHDOG=1 each turn of its loop. Outside systemd ($NOTIFY_SOCKET unset) it does nothing.

With ``WatchdogSec=`` systemd sets $WATCHDOG_USEC and kills (then restarts) a service that
stays silent that long; the daemon wakes at least every half of it to say it is alive.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # an abstract socket
            addr = "\0" + addr[1:]
        self.addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._sock: socket.socket | None = None

    def send(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False if there is no socket or it failed (never raises:
        a gone supervisor must not stop the agent)."""
        if self.addr is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.addr)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def alive(self) -> None:
        if self.watchdog_seconds is not None:
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def wake_within(self) -> float | None:
        """How long the loop may sleep before it must say it is alive again."""
        return self.watchdog_seconds / 2 if self.watchdog_seconds else None
