"""Talking to a W&B server over HTTP: GraphQL and file downloads. The agent's one HTTP layer.

Its rules, in one place:

* **Auth.** ``Authorization: Basic base64("api:KEY")``, as wandb's own client sends it, and only
  to the target's own origin (scheme, host and port of its ``base_url``). An empty key sends no
  Authorization header at all. The key never appears in a URL, an exception message or a log line.
* **Redirects** are followed here, not by urllib (which forwards every header to wherever a
  redirect points). A redirect to the same origin keeps the key; one to another host or scheme
  (an SSO front door, object storage) never gets it. A GraphQL request redirected to another
  host is refused with a message saying so (an SSO front door answers there, not W&B). A file
  download (``directUrl``) follows it without any Authorization header: a presigned URL carries
  its own signature and refuses a second one. A relative ``directUrl`` is resolved against the
  base URL.
* **TLS.** Certificates are verified against ``ca_file`` (``[targets.NAME] ca_file``), else
  ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``, else the system's store. A failed verification
  raises ``TLSFailure`` with what to set, never a retried "unreachable".
* **Proxies**: ``https_proxy``/``http_proxy``/``no_proxy`` from the environment (urllib's rules).
* **Errors.** Network trouble raises ``Unreachable``; 429, 408, 5xx and timeouts raise ``Busy``
  (an ``Unreachable`` that says how long the server asked us to wait: ``Retry-After`` or
  ``RateLimit-Reset``, capped); 401/403 from the target itself raise ``KeyRejected``; anything
  else unexpected raises ``ServerError``.
"""
from __future__ import annotations

import base64
import email.utils
import functools
import json
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5
WAIT_CAP = 120.0  # never wait longer than this on one Retry-After / RateLimit-Reset


class ServerError(Exception):
    pass


class Unreachable(ServerError):
    pass


class Busy(Unreachable):
    """429, 408, 5xx or a timeout: the server is there but wants less from us, or later."""

    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class TLSFailure(ServerError):
    """The server's certificate did not verify: a person sets ca_file; retrying cannot help."""


class KeyRejected(ServerError):
    pass


class NotFound(ServerError):
    pass


@dataclass(frozen=True)
class GraphQLError:
    message: str
    alias: str | None          # the top-level field (alias) the error is about, if the server said
    kind: str = "other"        # permission | other


@dataclass(frozen=True)
class Answer:
    data: dict[str, Any]
    errors: tuple[GraphQLError, ...] = field(default_factory=tuple)

    def errors_for(self, alias: str) -> list[GraphQLError]:
        return [e for e in self.errors if e.alias == alias]


def origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return u.scheme.lower(), (u.hostname or "").lower(), port


def ca_bundle(ca_file: str | None = None) -> str | None:
    """The CA bundle in force: the target's own, else what wandb's and requests' docs point to."""
    return ca_file or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


@functools.lru_cache(maxsize=16)
def _context(cafile: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # the system's store, and the site's CA beside it
    try:
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        return ctx
    except (OSError, ssl.SSLError) as exc:
        raise TLSFailure(f"cannot read the CA file {cafile}: {exc}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - urllib's hook
        return None  # a 3xx comes back as an HTTPError: request() decides where the key may go


@functools.lru_cache(maxsize=16)
def _opener(cafile: str | None, tls: bool = True) -> urllib.request.OpenerDirector:
    """``tls``: the request may speak TLS (an https URL, or an https proxy). Without it no TLS
    context is made: loading the system's CA store costs ~55 ms of CPU, on the way to a plain
    http target's first request (while the agent's ``wandb sync`` started ahead is starting)."""
    if not tls:
        return urllib.request.build_opener(urllib.request.ProxyHandler(), _NoRedirect())
    return urllib.request.build_opener(urllib.request.ProxyHandler(), _NoRedirect(),
                                       urllib.request.HTTPSHandler(context=_context(cafile)))


def _may_use_tls(scheme: str) -> bool:
    return scheme == "https" or urllib.request.getproxies().get(scheme, "").lower().startswith("https")


def _auth(api_key: str) -> dict[str, str]:
    if not api_key:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()}


def _where(url: str) -> str:
    """A URL as messages show it: never its query string (a presigned URL's signature) nor
    credentials written into it (``https://api:KEY@host/…``)."""
    return _USERINFO.sub(r"\1", url.split("?", 1)[0].split("#", 1)[0])


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@")


def _without_key(text: str, api_key: str) -> str:
    """Text a server wrote (an error's message), the key masked should the server echo it."""
    return text.replace(api_key, "[the API key]") if api_key and len(api_key) >= 8 else text


def _host(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}"


def wait_hint(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date;
    ``RateLimit-Reset``: seconds), capped at WAIT_CAP; None when it did not say."""
    if headers is None:
        return None
    for name in ("Retry-After", "RateLimit-Reset", "X-RateLimit-Reset"):
        raw = headers.get(name)
        if not raw:
            continue
        raw = raw.strip()
        try:
            secs = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw).timestamp()
            except (TypeError, ValueError, IndexError):
                continue
            secs = when - (time.time() if now is None else now)
        if name == "X-RateLimit-Reset" and secs > 10 ** 9:  # an epoch time, not a delay
            secs -= time.time() if now is None else now
        return max(0.0, min(WAIT_CAP, secs))
    return None


def request(method: str, url: str, api_key: str, body: bytes | None = None, timeout: float = 20.0,
            content_type: str | None = None, *, base_url: str | None = None, ca_file: str | None = None,
            target: str | None = None, follow_other_hosts: bool = False) -> bytes:
    """One HTTP request, redirects followed by the rules above. ``base_url``: the target's (whose
    origin may see the key; default: ``url``'s own). ``follow_other_hosts``: follow a redirect to
    another origin (without the key) instead of refusing it."""
    home = origin(base_url or url)
    cafile = ca_bundle(ca_file)
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            here = origin(url)
        except ValueError:
            raise ServerError(f"not a usable URL: {_where(url)[:200]}") from None
        if here[0] not in ("http", "https") or not here[1]:
            raise ServerError(f"not an http(s) URL: {_where(url)[:200]}")
        with_key = here == home
        headers = {"User-Agent": "tfwb-agent", **(_auth(api_key) if with_key else {})}
        if content_type and body is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with _opener(cafile, _may_use_tls(here[0])).open(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
            if code in (301, 302, 303, 307, 308):
                loc = exc.headers.get("Location") if exc.headers else None
                exc.close()
                if not loc:
                    raise ServerError(f"HTTP {code} from {_where(url)} with nowhere to go") from None
                try:
                    nxt = urljoin(url, loc)
                    origin(nxt)
                except ValueError:
                    raise ServerError(f"HTTP {code} from {_where(url)} to an unusable URL") from None
                if "@" in urlsplit(nxt).netloc:     # userinfo: credentials in the URL
                    raise ServerError(f"HTTP {code} from {_where(url)} to a URL with credentials in it: not "
                                      "followed (a misconfigured proxy or front door?)") from None
                if origin(nxt) != home and not follow_other_hosts:
                    raise ServerError(
                        f"{_where(url)} redirected to {_host(nxt)} (HTTP {code}), another host: a single sign-on "
                        "front door? The API key is never sent there; set base_url to the address that serves "
                        "W&B's API to API keys") from None
                if code == 303 or (code in (301, 302) and method == "POST"):
                    method, body = "GET", None
                url = nxt
                continue
            hint = wait_hint(exc.headers)
            exc.close()
            if code in (401, 403) and with_key:
                raise KeyRejected(f"HTTP {code} from {_where(url)}: the API key was not accepted") from None
            if code == 404:
                raise NotFound(f"HTTP 404 from {_where(url)}") from None
            if code >= 500 or code in (408, 429):
                raise Busy(f"HTTP {code} from {_where(url)}", hint) from None
            raise ServerError(f"HTTP {code} from {_where(url)}") from None
        except (socket.timeout, TimeoutError):
            raise Busy(f"{_where(url)}: timed out after {timeout:g}s") from None
        except urllib.error.URLError as exc:
            why = exc.reason
            if isinstance(why, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(why):
                raise TLSFailure(tls_message(url, target, getattr(why, "verify_message", None) or str(why))) from None
            if isinstance(why, (socket.timeout, TimeoutError)):
                raise Busy(f"{_where(url)}: timed out after {timeout:g}s") from None
            raise Unreachable(f"{_where(url)}: {why}") from None
        except ssl.SSLCertVerificationError as exc:
            raise TLSFailure(tls_message(url, target, exc.verify_message or str(exc))) from None
        except (ConnectionError, OSError) as exc:
            raise Unreachable(f"{_where(url)}: {exc}") from None
        except ValueError:  # urllib refuses the URL itself
            raise ServerError(f"not a usable URL: {_where(url)[:200]}") from None
    raise ServerError(f"{_where(url)}: more than {MAX_REDIRECTS} redirects")


def tls_message(url: str, target: str | None, why: str = "") -> str:
    where = f"targets.{target}.ca_file" if target else "ca_file under [targets.NAME]"
    return (f"certificate verify failed for {_host(url)}" + (f" ({why})" if why else "")
            + f": set {where} to the CA that signed the server's certificate (or REQUESTS_CA_BUNDLE)")


_PERMISSION = ("permission denied", "not authorized", "unauthorized", "forbidden", "not authenticated",
               "invalid api key", "access denied")


def _error(e: Any, api_key: str) -> GraphQLError:
    if not isinstance(e, dict):
        return GraphQLError(_without_key(str(e), api_key)[:300], None)
    msg = _without_key(str(e.get("message", "")), api_key)[:300]
    path = e.get("path")
    alias = str(path[0]) if isinstance(path, list) and path else None
    kind = "permission" if any(w in msg.lower() for w in _PERMISSION) else "other"
    return GraphQLError(msg, alias, kind)


def graphql_answer(base_url: str, api_key: str, query: str, variables: dict[str, Any] | None = None,
                   timeout: float = 20.0, *, ca_file: str | None = None, target: str | None = None) -> Answer:
    """A GraphQL request; its data and its errors, each error with the alias it is about. Raises
    only when the answer carries no data at all (then a permission error means a rejected key)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    raw = request("POST", f"{base_url}/graphql", api_key, body, timeout, "application/json",
                  base_url=base_url, ca_file=ca_file, target=target)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ServerError(f"{base_url}/graphql answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise ServerError(f"{base_url}/graphql answered with unexpected JSON")
    errors = tuple(_error(e, api_key) for e in (doc.get("errors") or []))
    data = doc.get("data")
    if not isinstance(data, dict) or not data:
        for e in errors:
            if e.kind == "permission":
                raise KeyRejected(f"{base_url}/graphql: {e.message[:200]}")
        if errors:
            raise ServerError(f"{base_url}/graphql: {errors[0].message}")
        data = {}
    return Answer(data, errors)


def graphql(base_url: str, api_key: str, query: str, variables: dict[str, Any] | None = None,
            timeout: float = 20.0, *, ca_file: str | None = None, target: str | None = None) -> dict[str, Any]:
    """The data of a GraphQL answer (errors that came with data are the caller's to read through
    ``graphql_answer``)."""
    return graphql_answer(base_url, api_key, query, variables, timeout, ca_file=ca_file, target=target).data


def download(base_url: str, api_key: str, url: str, timeout: float = 20.0, *, ca_file: str | None = None,
             target: str | None = None) -> bytes:
    """A file the server names (``directUrl``): relative URLs are the server's own; the key goes
    only to the server's origin, and a redirect elsewhere (object storage) is followed without it."""
    try:
        full = urljoin(base_url.rstrip("/") + "/", url)
    except ValueError:
        raise ServerError(f"the server named a file URL that is not usable: {_where(url)[:200]}") from None
    return request("GET", full, api_key, timeout=timeout, base_url=base_url, ca_file=ca_file, target=target,
                   follow_other_hosts=True)
