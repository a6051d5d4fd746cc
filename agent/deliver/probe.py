"""Is a target reachable, and does it accept our key?

W&B (Cloud and Server) answers the GraphQL ``viewer`` query with 401 or a null viewer for a bad
key. Some compatible servers (OpenWandb) answer GraphQL for any key, but refuse a bad key on
their identity endpoint ``/api/v2/auth/me``; where that endpoint exists (not 404) its verdict
counts too, so a wrong key is caught before anything is uploaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import server as srv

ONLINE, OFFLINE, KEY_REJECTED, NO_KEY = "online", "offline", "key_rejected", "no_key"
NEEDS_A_PERSON = frozenset({KEY_REJECTED, NO_KEY})  # retrying by itself cannot help: someone fixes the key


@dataclass(frozen=True)
class ProbeResult:
    status: str         # online | offline | key_rejected (by the server) | no_key (none to send)
    detail: str         # in words; never contains the key
    viewer: str | None = None


def probe(base_url: str, api_key: str, timeout: float = 10.0) -> ProbeResult:
    if not api_key:
        return ProbeResult(NO_KEY, "the API key is empty")
    try:
        data = srv.graphql(base_url, api_key, "query Viewer { viewer { id username entity } }", timeout=timeout)
    except srv.KeyRejected as exc:
        return ProbeResult(KEY_REJECTED, f"key rejected: {exc}")
    except srv.Unreachable as exc:
        return ProbeResult(OFFLINE, f"unreachable: {exc}")
    except srv.ServerError as exc:
        return ProbeResult(OFFLINE, f"not answering as a W&B server: {exc}")
    viewer = data.get("viewer")
    if not viewer:
        return ProbeResult(KEY_REJECTED, f"key rejected: {base_url} knows no user for this API key")
    try:
        srv.request("GET", f"{base_url}/api/v2/auth/me", api_key, timeout=timeout)
    except srv.KeyRejected:
        return ProbeResult(KEY_REJECTED, f"key rejected: {base_url}/api/v2/auth/me refused this API key")
    except srv.Unreachable as exc:
        return ProbeResult(OFFLINE, f"unreachable: {exc}")
    except srv.ServerError:
        pass  # no such endpoint: a server that checks keys on GraphQL itself
    name = viewer.get("username") or viewer.get("entity") or "?"
    return ProbeResult(ONLINE, f"reachable; key accepted (user {name})", name)
