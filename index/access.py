"""Access control and limits of the query API (see README "Access control and limits").

- Bearer tokens with a scope: ``read`` (every ``/v1/*`` query) or ``admin`` (also ``/v1/admin/*``; admin implies
  read). Entries are ``name:scope:token`` strings from ``index.tokens`` (``DRIFTRAG_INDEX__TOKENS``) and/or
  ``index.token_file`` (one entry a line, ``#`` comments). Only SHA-256 digests are kept, compared with
  :func:`hmac.compare_digest` against every configured token (no early exit, no length leak). Names appear in
  logs and 403 details; tokens never do.
- Anonymous access (no tokens configured) only on a loopback host unless ``index.allow_anonymous``
  (:func:`check_exposure`).
- :class:`AccessMiddleware` and :class:`BodyLimitMiddleware` are plain ASGI layers, so every route, including any
  ``/v1/*`` route added later, is covered without opting in; :class:`Slots` bounds the text searches in flight.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.live import QueryError

__all__ = ["SCOPES", "AccessMiddleware", "BodyLimitMiddleware", "PayloadTooLarge", "Slots", "Token", "TokenTable",
           "check_exposure", "is_loopback", "load_tokens", "parse_token", "required_scope"]

log = logging.getLogger(__name__)

SCOPES = ("read", "admin")
MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

HTTP_REJECTED = PromCounter("driftrag_http_rejected_total", "Query API requests refused before they ran",
                            ["reason"])  # unauthorized | forbidden | payload_too_large | busy
TEXT_SEARCHES = Gauge("driftrag_http_text_searches_in_flight", "Text searches running or queued on the model")


class PayloadTooLarge(QueryError):
    status, error = 413, "payload_too_large"


@dataclass(frozen=True)
class Token:
    """One configured token: its name, scope and SHA-256 digest (the token itself is not kept)."""

    name: str
    scope: str
    digest: bytes = field(repr=False)

    def allows(self, needed: str) -> bool:
        return self.scope == "admin" or needed == "read"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_token(entry: str, where: str = "index.tokens") -> Token:
    """A ``name:scope:token`` entry (the token may itself contain ``:``); ``ValueError`` names the entry by its
    position and name only, never by its token."""
    parts = entry.strip().split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{where}: an entry is not name:scope:token (got {len(parts)} field(s))")
    name, scope, token = parts
    if not _NAME.match(name):
        raise ValueError(f"{where}: token name {name[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if name == "driftrag-internal":
        raise ValueError(f"{where}: the token name 'driftrag-internal' is reserved (the process's own token)")
    if scope not in SCOPES:
        raise ValueError(f"{where}: token {name!r} has scope {scope[:20]!r}; scopes: {', '.join(SCOPES)}")
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ValueError(f"{where}: token {name!r} is shorter than {MIN_TOKEN_CHARS} characters or has spaces "
                         "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return Token(name, scope, _digest(token))


def load_tokens(entries: Iterable[Any] = (), token_file: Path | None = None) -> list[Token]:
    """Tokens from setting entries (``str`` or pydantic ``SecretStr``) and a token file; names must be unique."""
    tokens = []
    for n, e in enumerate(entries, 1):
        raw = e.get_secret_value() if hasattr(e, "get_secret_value") else str(e)
        tokens.append(parse_token(raw, f"index.tokens entry {n}"))
    if token_file is not None:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"index.token_file {token_file}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                tokens.append(parse_token(line, f"index.token_file {token_file} line {n}"))
    names = [t.name for t in tokens]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"token names must be unique; repeated: {', '.join(dup)}")
    return tokens


class TokenTable:
    """The configured tokens; :meth:`verify` compares a presented token with every one in constant time."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self.tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def verify(self, presented: str) -> Token | None:
        digest = _digest(presented)
        found = None
        for t in self.tokens:  # every token compared, whichever matches: the time does not tell which or whether
            if hmac.compare_digest(digest, t.digest):
                found = t
        return found


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts local connections.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "[::1]")]
    [True, True, True, True, True]
    >>> [is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5", "example.com")]
    [False, False, False, False, False]
    """
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address


def check_exposure(host: str, table: TokenTable, allow_anonymous: bool) -> None:
    """Refuse (``ValueError``, one line) to serve without tokens on a non-loopback host unless allowed."""
    if table or allow_anonymous or is_loopback(host):
        return
    raise ValueError(
        f"refusing to serve the query API on {host or '*'} without access control: configure tokens "
        "(DRIFTRAG_INDEX__TOKENS or DRIFTRAG_INDEX__TOKEN_FILE), bind a loopback host (127.0.0.1), or allow "
        "anonymous access explicitly (--allow-anonymous, DRIFTRAG_INDEX__ALLOW_ANONYMOUS=true)")


def required_scope(path: str, metrics_require_token: bool = False) -> str | None:
    """The scope a request path needs, or None for a public one.

    Cases: ``/v1/admin/...`` -> admin; any other ``/v1/...`` (present or future routes, and unknown ones, so a 404
    tells a stranger nothing) -> read; ``/metrics`` -> read when ``metrics_require_token`` else public; anything
    else (``/healthz``, ``/readyz``, ``/dashboard...``) -> public.

    >>> [required_scope(p) for p in ("/v1/context", "/v1/admin/snapshot", "/v1", "/healthz", "/metrics")]
    ['read', 'admin', 'read', None, None]
    >>> required_scope("/metrics", metrics_require_token=True), required_scope("/v10/x")
    ('read', None)
    """
    if path == "/v1" or path.startswith("/v1/"):
        return "admin" if path == "/v1/admin" or path.startswith("/v1/admin/") else "read"
    if path == "/metrics" and metrics_require_token:
        return "read"
    return None


async def _send_error(send: Send, status: int, error: str, detail: str,
                      headers: dict[str, str] | None = None) -> None:
    body = orjson.dumps({"error": error, "detail": detail})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


def _refusal_headers(scope: Scope, headers: dict[str, str]) -> dict[str, str]:
    """A refused request with a body it did not read: close the connection rather than drain the body."""
    length = _header(scope, b"content-length")
    if _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in (b"0", b"")):
        return {**headers, "connection": "close"}
    return headers


class AccessMiddleware:
    """401 (``WWW-Authenticate: Bearer``) for a missing or unknown token on a path that needs one, 403 for a token
    without the path's scope; with no tokens configured every request passes (see :func:`check_exposure`). The
    token's name is put in ``scope["state"]["token"]`` for the routes."""

    def __init__(self, app: ASGIApp, table: TokenTable, metrics_require_token: bool = False) -> None:
        self.app = app
        self.table = table
        self.metrics_require_token = metrics_require_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.table:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"], self.metrics_require_token)
        if needed is None:
            await self.app(scope, receive, send)
            return
        auth = _header(scope, b"authorization")
        scheme, _, presented = (auth or b"").decode("latin-1").strip().partition(" ")
        if auth is None or scheme.lower() != "bearer" or not presented.strip():
            HTTP_REJECTED.labels("unauthorized").inc()
            await _send_error(send, 401, "unauthorized", "this path needs a token: send 'Authorization: Bearer "
                              "<token>'", _refusal_headers(scope, {"www-authenticate": 'Bearer realm="driftrag"'}))
            return
        token = self.table.verify(presented.strip())
        if token is None:
            HTTP_REJECTED.labels("unauthorized").inc()
            log.info("refused %s %s: unknown token", scope.get("method"), scope["path"][:100])
            await _send_error(send, 401, "unauthorized", "unknown token", _refusal_headers(
                scope, {"www-authenticate": 'Bearer realm="driftrag", error="invalid_token"'}))
            return
        if not token.allows(needed):
            HTTP_REJECTED.labels("forbidden").inc()
            await _send_error(send, 403, "forbidden", f"token {token.name!r} has scope {token.scope!r}; "
                              f"{scope['path'][:100]} needs {needed!r}", _refusal_headers(scope, {}))
            return
        scope.setdefault("state", {})["token"] = token.name
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Request bodies of at most ``limit`` bytes, checked while they are read: a ``Content-Length`` above it is
    refused before reading anything, and a body without one (chunked) is refused as soon as its running size
    passes it, so the server never holds more than ``limit`` plus one chunk. The refusal is a 413
    ``payload_too_large`` with ``Connection: close`` (the rest of the body is not read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        detail = f"request body is over {limit:,} bytes (index.max_body_bytes)"
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False  # the server's parser refuses a malformed length before we get here
            if too_big:
                HTTP_REJECTED.labels("payload_too_large").inc()
                await _send_error(send, 413, "payload_too_large", detail, {"connection": "close"})
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    HTTP_REJECTED.labels("payload_too_large").inc()
                    raise PayloadTooLarge(detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 413:  # the rest of the body stays unread: the connection cannot be reused
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if started:
                raise
            await _send_error(send, 413, "payload_too_large", detail, {"connection": "close"})


class Slots:
    """At most ``n`` holders at once; :meth:`try_acquire` never waits (the caller answers 429 instead)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"slots must be >= 1, got {n}")
        self.n = n
        self.in_use = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_use >= self.n:
                return False
            self.in_use += 1
        TEXT_SEARCHES.inc()
        return True

    def release(self) -> None:
        with self._lock:
            if self.in_use <= 0:
                raise RuntimeError("release() without a matching try_acquire()")
            self.in_use -= 1
        TEXT_SEARCHES.dec()
