"""Is a target reachable, and does it accept our key?

Asked the way wandb's own client asks (its ``GetViewer`` query, over ``/graphql``): W&B (Cloud
and Server) answers a bad key with 401 or a null viewer. Nothing else is asked: no path that only
some compatible server serves, so whatever a W&B front door answers on other paths cannot turn
a good key into a rejected one. A certificate that does not verify is its own verdict
(``tls_failed``): a person sets ``ca_file``; retrying cannot help.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import server as srv

ONLINE, OFFLINE, KEY_REJECTED, NO_KEY, TLS_FAILED = "online", "offline", "key_rejected", "no_key", "tls_failed"
NEEDS_A_PERSON = frozenset({KEY_REJECTED, NO_KEY, TLS_FAILED})  # retrying by itself cannot help

VIEWER_QUERY = "query Viewer { viewer { id username entity } }"


@dataclass(frozen=True)
class ProbeResult:
    status: str         # online | offline | key_rejected (by the server) | no_key (none to send) | tls_failed
    detail: str         # in words; never contains the key
    viewer: str | None = None


def probe(base_url: str, api_key: str, timeout: float = 10.0, *, ca_file: str | None = None,
          target: str | None = None) -> ProbeResult:
    if not api_key:
        return ProbeResult(NO_KEY, "the API key is empty")
    try:
        data = srv.graphql(base_url, api_key, VIEWER_QUERY, timeout=timeout, ca_file=ca_file, target=target)
    except srv.KeyRejected as exc:
        return ProbeResult(KEY_REJECTED, f"key rejected: {exc}")
    except srv.TLSFailure as exc:
        return ProbeResult(TLS_FAILED, str(exc))
    except srv.Unreachable as exc:
        return ProbeResult(OFFLINE, f"unreachable: {exc}")
    except srv.ServerError as exc:
        return ProbeResult(OFFLINE, f"not answering as a W&B server: {exc}")
    viewer = data.get("viewer")
    if not viewer:
        return ProbeResult(KEY_REJECTED, f"key rejected: {base_url} knows no user for this API key")
    name = viewer.get("username") or viewer.get("entity") or "?"
    return ProbeResult(ONLINE, f"reachable; key accepted (user {name})", name)
