"""Is a target reachable, and does it accept our key?

Asked the way wandb's own client asks (its ``GetViewer`` query, over ``/graphql``): W&B (Cloud
and Server) answers a bad key with 401 or a null viewer. Nothing else is asked: no path that only
some compatible server serves, so whatever a W&B front door answers on other paths cannot turn
a good key into a rejected one. A certificate that does not verify is its own verdict
(``tls_failed``): a person sets ``ca_file``; retrying cannot help.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import clients
from . import server as srv

ONLINE, OFFLINE, KEY_REJECTED, NO_KEY, TLS_FAILED = "online", "offline", "key_rejected", "no_key", "tls_failed"
CLIENT_TOO_NEW, NO_CLIENT = "client_too_new", "no_client"
# retrying by itself cannot help
NEEDS_A_PERSON = frozenset({KEY_REJECTED, NO_KEY, TLS_FAILED, CLIENT_TOO_NEW, NO_CLIENT})

VIEWER_QUERY = "query Viewer { viewer { id username entity } }"
# What wandb's own client asks for the server's version (its ``ServerInfo`` query, in
# ``wandb/apis/public/api.py`` and ``sdk/internal/internal_api.py``); the second form for a
# server that does not know ``cliVersionInfo``.
SERVER_INFO_QUERIES = (
    "query ServerInfo { serverInfo { cliVersionInfo latestLocalVersionInfo { versionOnThisInstanceString } } }",
    "query ServerInfo { serverInfo { latestLocalVersionInfo { versionOnThisInstanceString } } }",
)


@dataclass(frozen=True)
class ProbeResult:
    status: str         # online | offline | key_rejected (by the server) | no_key (none to send) | tls_failed
                        # | client_too_new (the target's wandb is too new for the server's version) | no_client
    detail: str         # in words; never contains the key
    viewer: str | None = None
    server_version: str | None = None   # what serverInfo said (None: it did not say)


def server_version(base_url: str, api_key: str, timeout: float = 10.0, *, ca_file: str | None = None,
                   target: str | None = None) -> tuple[str | None, str | None]:
    """The server's version (``serverInfo.latestLocalVersionInfo.versionOnThisInstanceString``)
    and the newest wandb it names (``cliVersionInfo.max_cli_version``); (None, None) when it does
    not say (W&B Cloud, a server without serverInfo such as OpenWandb). Raises only on
    transport trouble, as ``graphql`` does."""
    for query in SERVER_INFO_QUERIES:
        try:
            ans = srv.graphql_answer(base_url, api_key, query, timeout=timeout, ca_file=ca_file, target=target)
        except srv.KeyRejected:
            raise
        except (srv.Unreachable, srv.TLSFailure):
            raise
        except srv.ServerError:
            continue  # the server does not know this field: ask the smaller form, then give up
        info = ans.data.get("serverInfo")
        if not isinstance(info, dict):
            continue
        local = info.get("latestLocalVersionInfo")
        version = local.get("versionOnThisInstanceString") if isinstance(local, dict) else None
        cli = info.get("cliVersionInfo")
        if not (isinstance(cli, dict) and ("max_cli_version" in cli or "min_cli_version" in cli)):
            # Not W&B Server's answer (it gives cliVersionInfo as wandb's client reads it, with
            # max_cli_version): a compatible server (OpenWandb names its own release here) whose
            # number is no W&B Server version. Taken as unknown.
            return None, None
        max_cli = cli.get("max_cli_version")
        return (str(version) if version else None), (str(max_cli) if max_cli else None)
    return None, None


def check_client(res: ProbeResult, base_url: str, api_key: str, client_version: str, client_how: str,
                 timeout: float = 10.0, *, ca_file: str | None = None, target: str | None = None) -> ProbeResult:
    """An online probe's result with the server's version read and held against the target's
    wandb client: ``client_too_new`` (nothing is sent) when the server reports a version that
    client no longer supports; still online, with the version unknown, when it does not say."""
    if res.status != ONLINE:
        return res
    try:
        version, max_cli = server_version(base_url, api_key, timeout, ca_file=ca_file, target=target)
    except srv.ServerError as exc:
        return ProbeResult(OFFLINE, f"reachable, but asking its version failed: {exc}", res.viewer)
    client = f"client wandb {client_version} ({client_how})"
    if version is None:
        return ProbeResult(ONLINE, f"{res.detail}; server version unknown (it does not answer serverInfo); "
                           f"{client}", res.viewer)
    why = clients.too_new(client_version, version)
    if why:
        return ProbeResult(CLIENT_TOO_NEW, f"refused before sending anything: {why}", res.viewer, version)
    note = ""
    if max_cli and _newer(client_version, max_cli):
        note = f" (newer than the newest wandb the server names, {max_cli}: it may still work)"
    return ProbeResult(ONLINE, f"{res.detail}; server {version}; {client}{note}", res.viewer, version)


def _newer(a: str, b: str) -> bool:
    return clients.vtuple(a) > clients.vtuple(b)


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
    res = ProbeResult(ONLINE, f"reachable; key accepted (user {name})", name)
    # The target's wandb client ([targets.NAME] wandb; installed the first time) against the
    # server's version: a client too new for it is refused here, before anything is sent.
    try:
        client = clients.client_for(target)
    except clients.ClientError as exc:
        return ProbeResult(NO_CLIENT, f"reachable; key accepted; but no wandb client: {exc}", name)
    if client is None:
        return res
    return check_client(res, base_url, api_key, client.version, client.how, timeout, ca_file=ca_file, target=target)
