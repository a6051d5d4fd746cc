"""The one way redaction opens a file under the run's files/ (``hasher.open_regular``), against
what a hostile or racing writer could put under the name: a symlink to a file outside the run, a
FIFO that would block a reader forever, a directory, a socket. Only a regular file opens."""
from __future__ import annotations

import os
import socket

from tfwb_agent.redact import hasher


def test_only_a_regular_file_opens_and_nothing_hangs_or_follows(tmp_path):
    secret = tmp_path / "outside.key"
    secret.write_bytes(b"not for the bundle")
    files = tmp_path / "files"
    files.mkdir()
    (files / "ok.png").write_bytes(b"png bytes")
    os.symlink(secret, files / "link.png")
    os.mkfifo(files / "fifo.png")  # a plain open() would wait for a writer forever
    (files / "dir.png").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(files / "sock.png"))
    try:
        for name in ("link.png", "fifo.png", "dir.png", "sock.png", "missing.png"):
            assert hasher.open_regular(str(files / name)) is None, name
        opened = hasher.open_regular(str(files / "ok.png"))
        assert opened is not None
        fd, st = opened
        try:
            assert st.st_size == 9 and os.read(fd, 100) == b"png bytes"
        finally:
            os.close(fd)
    finally:
        sock.close()
    # No descriptor leaked by the refusals: the next fd number is where it was.
    probe = os.open(os.devnull, os.O_RDONLY)
    os.close(probe)
    for _ in range(50):
        hasher.open_regular(str(files / "fifo.png"))
        hasher.open_regular(str(files / "dir.png"))
    again = os.open(os.devnull, os.O_RDONLY)
    os.close(again)
    assert again == probe
