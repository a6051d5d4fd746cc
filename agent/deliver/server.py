"""Talking to a W&B-compatible server over HTTP: GraphQL and file downloads.

The API key goes in an ``Authorization`` header only; it never appears in a URL, an
exception message or a log line. Network trouble raises ``Unreachable``; 401/403 raise
``KeyRejected``; anything else unexpected raises ``ServerError``.
"""
from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from typing import Any


class ServerError(Exception):
    pass


class Unreachable(ServerError):
    pass


class KeyRejected(ServerError):
    pass


class NotFound(ServerError):
    pass


def _headers(api_key: str) -> dict[str, str]:
    token = base64.b64encode(f"api:{api_key}".encode()).decode()
    return {"Authorization": f"Basic {token}", "User-Agent": "tfwb-agent"}


def request(method: str, url: str, api_key: str, body: bytes | None = None, timeout: float = 20.0,
            content_type: str | None = None) -> bytes:
    headers = _headers(api_key)
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise KeyRejected(f"HTTP {exc.code} from {_where(url)}: the API key was not accepted") from None
        if exc.code == 404:
            raise NotFound(f"HTTP 404 from {_where(url)}") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise Unreachable(f"HTTP {exc.code} from {_where(url)}") from None
        raise ServerError(f"HTTP {exc.code} from {_where(url)}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise Unreachable(f"{_where(url)}: {why}") from None


def _where(url: str) -> str:
    return url.split("?", 1)[0]  # a query string could carry anything; never echo it


def graphql(base_url: str, api_key: str, query: str, variables: dict[str, Any] | None = None,
            timeout: float = 20.0) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    raw = request("POST", f"{base_url}/graphql", api_key, body, timeout, "application/json")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ServerError(f"{base_url}/graphql answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise ServerError(f"{base_url}/graphql answered with unexpected JSON")
    errors = doc.get("errors") or []
    for e in errors:
        msg = str(e.get("message", "")) if isinstance(e, dict) else str(e)
        if any(w in msg.lower() for w in ("unauthorized", "not authenticated", "invalid api key", "permission denied")):
            raise KeyRejected(f"{base_url}/graphql: {msg[:200]}")
    if errors and not doc.get("data"):
        first = errors[0].get("message") if isinstance(errors[0], dict) else errors[0]
        raise ServerError(f"{base_url}/graphql: {str(first)[:300]}")
    return doc.get("data") or {}
