"""What a ``wandb sync`` log says: its last words, and whether they name something a person must
fix (it exits 0 on these). Read after an upload ends, whatever the server then answers."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .server import tls_message


def tail(log_path: Path, n: int = 2000) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


_TLS_SIGNS = ("x509:", "certificate signed by unknown authority", "certificate verify failed",
              "CERTIFICATE_VERIFY_FAILED", "failed to verify certificate")


# What a server says to a client newer than it (GraphQL validation of fields and arguments it
# does not have), as wandb sync logs it before exiting 0.
_TOO_NEW_SIGNS = ("Cannot query field", "Unknown argument", "Unknown type", "not supported by this server",
                  "upgrade your server")


def diagnose(log_text: str, base_url: str, target: str) -> str | None:
    """What a ``wandb sync`` log says went wrong, when it is something a person must fix (it
    exits 0 on these): a certificate its TLS did not trust; a server that did not understand
    the client (too new for it)."""
    if any(sign in log_text for sign in _TLS_SIGNS):
        return "wandb sync: " + tls_message(base_url, target)
    if any(sign.lower() in log_text.lower() for sign in _TOO_NEW_SIGNS):
        m = re.search(r"tfwb-agent: wandb sync by (wandb \S+)", log_text)
        who = m.group(1) if m else "the wandb client"
        return (f"wandb sync: {base_url} did not understand {who}'s requests: the client is likely too new for "
                f"this server; set targets.{target}.wandb to an older wandb (`tfwb-agent targets check {target}` "
                "shows the server's version and the client's), or upgrade the server")
    return None
