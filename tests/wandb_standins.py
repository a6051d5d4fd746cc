"""Stand-ins for W&B behaviour OpenWandb lacks, for the delivery tests of issue 16. All on 127.0.0.1.

Named as what they stand in for; none of them is a W&B server:

* ``WandbFrontDoor``: a stand-in for W&B's front door (its load balancer and API gateway), a
  reverse proxy in front of a real OpenWandb. What it adds is what W&B does and OpenWandb does
  not: 401 for a key W&B would not know (OpenWandb answers GraphQL for any key), 401 on REST
  paths it does not serve (``/api/...``), ``historyLineCount`` reported (OpenWandb says 0),
  ``directUrl`` of a run's files redirected to object storage on another host, 429 with
  ``Retry-After`` on the many-run query, and an aliased error in a 200 answer. It may serve
  TLS with a certificate from a private CA (``private_ca``). It records every request it sees.
* ``RecordingStorage``: a stand-in for object storage on a second host (S3-like presigned URLs):
  it records the headers of every request and answers 400 to one carrying an Authorization
  header, as S3 does to a presigned URL with a second credential.
* ``private_ca``: a CA and a server certificate for 127.0.0.1, made here with ``cryptography``.
"""
from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
        "proxy-authenticate", "host", "content-length"}


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


def _reply(h: BaseHTTPRequestHandler, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    h.send_response(code)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or refuses our certificate is what some tests are about


def _serve(handler: type, tls: ssl.SSLContext | None = None) -> tuple[_Server, str]:
    httpd = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    scheme = "https" if tls else "http"
    return httpd, f"{scheme}://127.0.0.1:{httpd.server_address[1]}"


# --- object storage on a second host ----------------------------------------------------------

class RecordingStorage:
    """A stand-in for object storage on another host: serves the blobs put into it under a
    presigned-looking URL; records every request's path and headers."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append((self.path, dict(self.headers.items())))
                if self.headers.get("Authorization"):
                    _reply(self, 400, b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                           b"allowed</Message></Error>")
                    return
                blob = outer.blobs.get(urlsplit(self.path).path.rsplit("/", 1)[-1])
                _reply(self, 200 if blob is not None else 404, blob or b"")

            def log_message(self, *a: object) -> None:
                pass

        self.httpd, self.url = _serve(H)

    def put(self, data: bytes) -> str:
        token = secrets.token_hex(8)
        self.blobs[token] = data
        return f"{self.url}/bucket/{token}?X-Amz-Signature={secrets.token_hex(16)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- W&B's front door ---------------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    authorized: bool          # carried the real key
    runs_asked: int = 0       # GraphQL: how many `run(name:` the query names
    files_asked: bool = False  # GraphQL: whether it asks for a run's files
    status: int = 0


@dataclass
class FrontDoorRules:
    check_keys: bool = True                 # 401 for any key but the real one, as W&B does
    rest_401: bool = True                   # 401 on /api/... (paths W&B does not serve to API keys)
    report_line_count: bool = False         # fill historyLineCount from the run's history file
    storage: RecordingStorage | None = None  # redirect history directUrls there (via a relative URL here)
    throttle_many_run_queries: int = 0      # this many many-run queries get 429 first
    retry_after: str = "1"
    alias_errors: dict[str, str] = field(default_factory=dict)  # run id -> error message (aliased, in a 200)
    alias_errors_left: int = 10 ** 9        # how many more times one is given
    alias_errors_given: int = 0
    alias_errors_on_files_only: bool = False  # given only to queries that ask for a run's files
    graphql_redirect_to: str | None = None  # answer /graphql with 302 to this URL (an SSO front door)


class WandbFrontDoor:
    """A stand-in for W&B's front door in front of a real OpenWandb at ``upstream``."""

    def __init__(self, upstream: str, api_key: str, rules: FrontDoorRules | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.upstream, self.api_key, self.rules = upstream, api_key, rules or FrontDoorRules()
        self.seen: list[Seen] = []
        self.redirects: dict[str, str] = {}
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                outer._handle(self)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = handle_any  # noqa: N815

            def log_message(self, *a: object) -> None:
                pass

        self.httpd, self.url = _serve(H, tls)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _good_key(self, h: BaseHTTPRequestHandler) -> bool:
        auth = h.headers.get("Authorization") or ""
        want = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        return auth == want

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        r = self.rules
        body = _read_body(h)
        path = urlsplit(h.path).path
        seen = Seen(h.command, path, self._good_key(h))
        with self.lock:
            self.seen.append(seen)
        if path.startswith("/_storage/"):  # a directUrl that W&B would hand out: off to object storage
            target = self.redirects.get(path.rsplit("/", 1)[-1])
            seen.status = 307 if target else 404
            _reply(h, seen.status, b"", {"Location": target} if target else {})
            return
        if r.rest_401 and path.startswith("/api/"):
            seen.status = 401
            _reply(h, 401, b'{"error":"unauthorized"}', {"Content-Type": "application/json"})
            return
        if path.rstrip("/") == "/graphql":
            if r.graphql_redirect_to:
                seen.status = 302
                _reply(h, 302, b"", {"Location": r.graphql_redirect_to})
                return
            if r.check_keys and not seen.authorized:
                seen.status = 401
                _reply(h, 401, b'{"errors":[{"message":"user is not logged in"}]}', {"Content-Type": "application/json"})
                return
            doc = json.loads(body or b"{}")
            query = doc.get("query") or ""
            seen.runs_asked = query.count("run(name:")
            seen.files_asked = "files(" in query
            with self.lock:  # requests are served on threads: throttle exactly as many as asked
                throttle = seen.runs_asked > 1 and r.throttle_many_run_queries > 0
                if throttle:
                    r.throttle_many_run_queries -= 1
            if throttle:
                seen.status = 429
                _reply(h, 429, b'{"errors":[{"message":"rate limit exceeded"}]}',
                       {"Content-Type": "application/json", "Retry-After": r.retry_after})
                return
        status, headers, answer = self._forward(h, body)
        if path.rstrip("/") == "/graphql" and status == 200:
            answer = self._rewrite(json.loads(body or b"{}"), answer)
        seen.status = status
        _reply(h, status, answer, headers)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        u = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            front = urlsplit(self.url)
            headers.update({"X-Forwarded-Host": front.netloc, "X-Forwarded-Proto": front.scheme,
                            "Host": u.netloc})
            conn.request(h.command, h.path, body=body if body or h.command in ("POST", "PUT") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
            return resp.status, out, data
        finally:
            conn.close()

    def _upstream_call(self, method: str, url: str, body: bytes | None = None) -> bytes:
        """The body of the upstream's answer (b"" unless 200) to a request of its own, with the key."""
        u = urlsplit(url)
        headers = {"Authorization": "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
            resp = conn.getresponse()
            return resp.read() if resp.status == 200 else b""
        finally:
            conn.close()

    def _upstream_history_lines(self, project: str | None, entity: str | None, run: str | None) -> int:
        """The non-empty lines of the run's history file upstream (0: none)."""
        query = ('query H($p: String!, $e: String, $r: String!) { project(name: $p, entityName: $e) { run(name: $r) '
                 '{ files(names: ["wandb-history.jsonl"]) { edges { node { name directUrl } } } } } }')
        doc = json.loads(self._upstream_call("POST", f"{self.upstream}/graphql", json.dumps(
            {"query": query, "variables": {"p": project, "e": entity, "r": run}}).encode()) or b"{}")
        found = (((doc.get("data") or {}).get("project") or {}).get("run") or {})
        for edge in (found.get("files") or {}).get("edges") or []:
            n = edge.get("node") or {}
            if n.get("name") == "wandb-history.jsonl" and n.get("directUrl"):
                return sum(1 for line in self._upstream_call("GET", n["directUrl"]).splitlines() if line.strip())
        return 0

    def _rewrite(self, req: dict[str, Any], raw: bytes) -> bytes:
        """W&B's answers where OpenWandb's differ: line counts, storage URLs, aliased errors."""
        r = self.rules
        try:
            doc = json.loads(raw)
        except ValueError:
            return raw
        data = doc.get("data")
        if not isinstance(data, dict):
            return raw
        variables = req.get("variables") or {}
        errors = list(doc.get("errors") or [])
        for alias, node in list(data.items()):
            run = (node or {}).get("run") if isinstance(node, dict) else None
            rid = variables.get(f"r{alias[1:]}") if alias.startswith("q") else None
            with self.lock:  # requests are served on threads: give each error once
                give = rid in r.alias_errors and r.alias_errors_left > 0 and \
                    (not r.alias_errors_on_files_only or "files(" in (req.get("query") or ""))
                if give:
                    r.alias_errors_left -= 1
                    r.alias_errors_given += 1
            if give:
                data[alias] = None
                errors.append({"message": r.alias_errors[rid], "path": [alias]})
                continue
            if not isinstance(run, dict):
                continue
            if r.report_line_count and "historyLineCount" in run and "files" not in run:
                # W&B keeps the count; here it is the lines of the history file upstream holds.
                run["historyLineCount"] = self._upstream_history_lines(
                    variables.get(f"p{alias[1:]}"), variables.get(f"e{alias[1:]}"), rid)
            if "files" not in run:
                continue
            for edge in (run.get("files") or {}).get("edges") or []:
                n = edge.get("node") or {}
                if n.get("name") != "wandb-history.jsonl" or not n.get("directUrl"):
                    continue
                if r.report_line_count and "historyLineCount" in run:
                    blob = self._upstream_call("GET", n["directUrl"])
                    run["historyLineCount"] = sum(1 for line in blob.splitlines() if line.strip())
                if r.storage is not None:
                    token = secrets.token_hex(8)
                    self.redirects[token] = r.storage.put(self._upstream_call("GET", n["directUrl"]))
                    n["directUrl"] = f"/_storage/{token}"  # relative, as a front door may hand it out
        if errors:
            doc["errors"] = errors
        return json.dumps(doc).encode()

    def graphql_runs_asked(self) -> list[tuple[int, int]]:
        """(runs named, status) of every GraphQL request that asked about runs, in order."""
        return [(s.runs_asked, s.status) for s in self.seen if s.path.rstrip("/") == "/graphql" and s.runs_asked]


# --- a private CA ----------------------------------------------------------------------------

@dataclass
class PrivateCA:
    ca_pem: Path
    server_context: ssl.SSLContext


def private_ca(root: Path) -> PrivateCA:
    """A CA of our own and a certificate for 127.0.0.1 it signed (no system trusts it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfwb test private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    ca_pem = root / "private-ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = root / "server-chain.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = root / "server-key.pem"
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key_pem)
    return PrivateCA(ca_pem, ctx)


class RecordingHost:
    """A stand-in for any other host a redirect may point to (an SSO login page, storage): it
    records each request's headers and answers 200 with a small HTML page."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                _read_body(self)
                outer.seen.append((self.command, self.path, dict(self.headers.items())))
                _reply(self, 200, b"<html>sign in</html>", {"Content-Type": "text/html"})

            do_GET = do_POST = handle_any  # noqa: N815

            def log_message(self, *a: object) -> None:
                pass

        self.httpd, self.url = _serve(H)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


Handler = Callable[[BaseHTTPRequestHandler], None]
