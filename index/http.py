"""The query API: a FastAPI app over a :class:`~index.live.LiveIndex`, and helpers to serve it with uvicorn.

Endpoints (all JSON except ``/metrics``):

- ``POST /v1/context`` ``{"history": [item_id, ...]}`` or ``{"clusters": [c1, c2]}``, optional ``k``, ``mode``
  (``"frequency"`` | ``"trend"``), ``items_per_successor`` -> :meth:`LiveIndex.context`;
- ``POST /v1/search`` ``{"text": ...}`` or ``{"vector": [...]}``, optional ``k`` -> :meth:`LiveIndex.search`;
- ``GET /v1/clusters/{id}`` (optional ``?k=``) -> :meth:`LiveIndex.cluster` (with its drift status);
- ``GET /v1/drift`` (optional ``?limit=``) -> :meth:`LiveIndex.drift_ranking`;
- ``POST /v1/admin/snapshot`` (scope ``admin``): save an index snapshot now (where the service keeps snapshots);
  ``GET /v1/admin/access`` (``admin``): the token names and scopes (never the tokens) and the limits in force;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the index has a codebook and ``readiness()`` agrees),
  ``GET /metrics`` (Prometheus text exposition of the default registry).

Access and limits (:mod:`index.access`, settings ``index.*``): every ``/v1/*`` path needs a bearer token with scope
``read`` (``/v1/admin/*``: ``admin``) once tokens are configured (401 ``unauthorized`` / 403 ``forbidden``);
``/healthz``, ``/readyz`` and the dashboard are public, ``/metrics`` too unless ``metrics_require_token``. Bodies
over ``max_body_bytes`` are refused while read (413 ``payload_too_large``); at most ``max_text_searches`` text
searches run or wait on the model (429 ``busy`` with ``Retry-After``); every ``k`` and ``limit`` is at most
``max_k``.

Every error is ``{"error": <code>, "detail": <text>}`` with a 4xx/5xx status and never a stack trace:
``bad_request`` (400: bad JSON, wrong field types, a bound, or a check of the index), ``unauthorized`` (401),
``forbidden`` (403), ``not_found`` (404: route, cluster), ``method_not_allowed`` (405), ``not_configured`` (409),
``payload_too_large`` (413), ``busy`` (429), ``not_ready`` (503), ``internal`` (500; the traceback is logged here).

Request bodies are checked for *shape* only (strict types: ``"k": "3"`` is a 400; unknown fields are ignored);
the index owns the semantic checks (ranges, cluster ids, exactly one of two fields). The index's CPU work (search,
embedding, a context not in its cache) runs in the threadpool and never blocks the event loop; a context answer
the index has cached for this version (:meth:`LiveIndex.context_from_cache`) is answered on the loop.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.access import (
    HTTP_REJECTED,
    AccessMiddleware,
    BodyLimitMiddleware,
    Slots,
    Token,
    TokenTable,
    check_exposure,
    load_tokens,
)
from index.dashboard import mount_dashboard
from index.live import BadRequest, LiveIndex, NotReady, QueryError
from streams.settings import IndexSettings

__all__ = ["ContextRequest", "RunningServer", "SearchRequest", "check_app_exposure", "create_app", "serve",
           "serve_in_thread"]

log = logging.getLogger(__name__)

HTTP_REQUESTS = PromCounter("driftrag_http_requests_total", "Query API requests answered", ["route", "status"])
HTTP_LATENCY = Histogram("driftrag_http_request_seconds", "Query API request latency", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 503: "not_ready"}
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_METRIC_CHILDREN: dict[tuple[str, int], tuple[Any, Any]] = {}


class JSONResponse(Response):
    """A JSON response rendered by orjson (numpy values and integer dict keys allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_ORJSON_OPTS)


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class _Body(BaseModel):
    # strict: no "3" -> 3 or 3.0 -> 3 coercion; unknown fields are ignored (clients may send more than we read)
    model_config = ConfigDict(strict=True, extra="ignore")


class ContextRequest(_Body):
    history: list[str] | None = None
    clusters: list[int] | None = None
    k: int | None = None  # None (or absent): the index's default
    mode: str | None = None
    items_per_successor: int | None = None

    def options(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("k", "mode", "items_per_successor") if getattr(self, f) is not None}


class SearchRequest(_Body):
    text: str | None = None
    vector: list[float] | None = None
    k: int | None = None

    def options(self) -> dict[str, Any]:
        return {} if self.k is None else {"k": self.k}


def _validation_detail(errors: list[Any]) -> str:
    """One line naming the offending field(s), e.g. ``k: Input should be a valid integer``."""
    parts = []
    for err in errors[:5]:
        field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


async def _json_body(request: Request, model: type[_Body]) -> Any:
    """The request body as a JSON object of ``model`` (whatever the content type says), raising
    :class:`BadRequest` (400) for a missing, malformed or mistyped body. Its size is bounded while it is read
    (:class:`~index.access.BodyLimitMiddleware`: 413)."""
    return _parse_body(await request.body(), model)


def _parse_body(raw: bytes, model: type[_Body]) -> Any:
    if not raw.strip():
        raise BadRequest("request body is missing: send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadRequest(_validation_detail(e.errors())) from None


def _at_most(name: str, value: int | None, bound: int) -> None:
    """400 for a ``k`` or ``limit`` above ``index.max_k`` (the index checks lower bounds and types)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > bound:
        raise BadRequest(f"{name} must be at most {bound} (index.max_k), got {value}")


class _FastContext:
    """``POST /v1/context`` answered as plain ASGI, inside the access and body-limit layers but without the
    framework's per-request machinery (dependency solving, telemetry hooks, exception middleware), which cost
    several times the answer itself for a cached context. Same answers and errors as the FastAPI route it stands
    in front of (``answer``); every other request passes through."""

    def __init__(self, app: ASGIApp, answer: Callable[[bytes], Awaitable[Any]], route: Any) -> None:
        self.app = app
        self.answer = answer
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/context" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' route label
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            status, out = 200, await self.answer(b"".join(chunks))
        except QueryError as e:
            status, out = e.status, {"error": e.error, "detail": e.detail}
        body = orjson.dumps(out, option=_ORJSON_OPTS)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _GuardMiddleware:
    """Outermost app layer: times and counts every request and turns an unexpected exception into a JSON 500
    (the traceback goes to this module's log, never to the client)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # the response is under way: nothing sane to send; let the server close the connection
                raise
            status = 500
            await _error(500, "internal", "internal error (logged by the server)")(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            children = _METRIC_CHILDREN.get((name, status))
            if children is None:  # bounded: route templates x statuses
                children = _METRIC_CHILDREN[(name, status)] = (HTTP_REQUESTS.labels(name, str(status)),
                                                                HTTP_LATENCY.labels(name))
            children[0].inc()
            children[1].observe(time.perf_counter() - t0)


def create_app(live: LiveIndex, *, readiness: Callable[[], tuple[bool, str]] | None = None,
               settings: IndexSettings | None = None, snapshot_dir: Path | None = None) -> FastAPI:
    """The query API over ``live``. ``readiness``: an extra ``() -> (ready, reason)`` for ``/readyz`` (e.g. the
    stream job has caught up with its source); the index itself must also have a codebook. ``settings``: tokens
    and limits (default: ``IndexSettings()``, no tokens); a bad token entry or token file raises ``ValueError``.
    ``snapshot_dir``: where ``POST /v1/admin/snapshot`` saves (None: that route answers 409 ``not_configured``).

    With tokens configured the app also accepts one random in-process ``read`` token (``app.state.internal_token``,
    never printed) so that its own process can query it (the job's progress lines)."""
    settings = settings if settings is not None else IndexSettings()
    tokens = load_tokens(settings.tokens, settings.token_file)
    internal = None
    if tokens:
        internal = secrets.token_urlsafe(32)
        tokens.append(Token("driftrag-internal", "read", hashlib.sha256(internal.encode()).digest()))
    table = TokenTable(tokens)
    app = FastAPI(title="driftrag", summary="Live interest-transition context for LLM recommenders",
                  default_response_class=JSONResponse, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.live = live
    app.state.settings = settings
    app.state.access = table
    app.state.internal_token = internal
    app.state.text_searches = slots = Slots(settings.max_text_searches)
    live.context_cache_entries = settings.context_cache_entries
    max_k = settings.max_k
    busy_headers = {"Retry-After": str(settings.retry_after_s)}

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> Response:
        return _error(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(400, "bad_request", _validation_detail(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    async def answer_context(raw: bytes) -> Any:
        body = _parse_body(raw, ContextRequest)
        _at_most("k", body.k, max_k)
        args = {"history": body.history, "clusters": body.clusters, **body.options()}
        out = live.context_from_cache(**args)  # a dict lookup: on the loop, no thread hop
        if out is None:
            out = await run_in_threadpool(functools.partial(live.context, **args))
        return out

    @app.post("/v1/context")
    async def context(request: Request) -> Response:  # served by _FastContext; here for the route table
        return JSONResponse(await answer_context(await request.body()))

    @app.post("/v1/search")
    async def search(request: Request) -> Response:
        body = await _json_body(request, SearchRequest)
        _at_most("k", body.k, max_k)
        call = functools.partial(live.search, text=body.text, vector=body.vector, **body.options())
        if body.text is None or body.vector is not None or live.encoder is None:
            return JSONResponse(await run_in_threadpool(call))  # vectors: cheap; errors: at once
        if not slots.try_acquire():  # the model answers one batch at a time: beyond the bound, say so now
            HTTP_REJECTED.labels("busy").inc()
            return _error(429, "busy", f"{slots.n} text searches are running or waiting for the model "
                          "(index.max_text_searches); retry later, or search by vector", headers=busy_headers)
        try:
            return JSONResponse(await run_in_threadpool(call))
        finally:
            slots.release()

    @app.get("/v1/clusters/{cluster_id}")
    def cluster(cluster_id: str, k: int = 5) -> Response:
        try:
            c = int(cluster_id, 10)
        except ValueError:
            return _error(404, "not_found", f"no cluster {cluster_id[:40]!r}: cluster ids are integers")
        _at_most("k", k, max_k)
        return JSONResponse(live.cluster(c, k=k))

    @app.get("/v1/drift")
    async def drift(limit: int = 50) -> Response:  # a few rows per cluster: on the loop
        _at_most("limit", limit, max_k)
        return JSONResponse(live.drift_ranking(limit))

    @app.get("/v1/alerts")
    def alerts(limit: int = 50) -> Response:
        _at_most("limit", limit, max_k)
        return JSONResponse(live.recent_alerts(limit))

    @app.get("/v1/pairs")
    def pairs(limit: int = 20) -> Response:
        _at_most("limit", limit, max_k)
        return JSONResponse(live.busiest_pairs(limit))

    @app.get("/v1/pairs/{c1}/{c2}")
    def pair(c1: str, c2: str, k: int = 5) -> Response:
        try:
            a, b = int(c1, 10), int(c2, 10)
        except ValueError:
            return _error(404, "not_found", f"no pair {c1[:20]!r}/{c2[:20]!r}: cluster ids are integers")
        _at_most("k", k, max_k)
        return JSONResponse(live.pair_history(a, b, k=k))

    @app.post("/v1/admin/snapshot")
    async def admin_snapshot() -> Response:
        if snapshot_dir is None:
            return _error(409, "not_configured", "this service keeps no index snapshots (driftrag serve "
                          "--snapshot-dir does; the stream job's API does not)")
        t0 = time.perf_counter()
        path = await run_in_threadpool(live.save_snapshot, snapshot_dir)
        log.info("index snapshot %s saved on request", path)
        return JSONResponse({"snapshot": str(path), "index_version": int(path.name.rpartition("-")[2]),
                             "seconds": round(time.perf_counter() - t0, 3)})

    @app.get("/v1/admin/access")
    async def admin_access() -> Response:
        return JSONResponse({
            "tokens": [{"name": t.name, "scope": t.scope} for t in table.tokens if t.name != "driftrag-internal"],
            "anonymous": not table, "metrics_require_token": settings.metrics_require_token,
            "limits": {"max_body_bytes": settings.max_body_bytes, "max_text_searches": slots.n,
                       "text_searches_in_flight": slots.in_use, "retry_after_s": settings.retry_after_s,
                       "max_k": max_k, "context_cache_entries": settings.context_cache_entries}})

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        if not live.ready:
            raise NotReady("the index has no codebook yet: the stream job has not published its clusters")
        if readiness is not None:
            ok, reason = readiness()
            if not ok:
                raise NotReady(reason or "not ready")
        return JSONResponse({"ready": True, **live.summary()})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    mount_dashboard(app)
    context_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/context")
    app.add_middleware(_FastContext, answer=answer_context, route=context_route)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, table=table, metrics_require_token=settings.metrics_require_token)
    app.add_middleware(_GuardMiddleware)  # outermost: counts and times everything, refusals included
    return app


# -------------------------------------------------------------------------------------------------- serving


class RunningServer:
    """A uvicorn server running in a daemon thread (see :func:`serve_in_thread`)."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int,
                 token: str | None = None) -> None:
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.token = token  # the app's in-process read token (None: no tokens configured); never print it

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests (forcing after ``timeout`` s), and join the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5.0)
        if self.thread.is_alive():
            log.warning("query API server thread did not stop within %.0f s", timeout + 5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def check_app_exposure(app: FastAPI, host: str) -> None:
    """``ValueError`` (one line) when ``app`` has no tokens, ``host`` is not loopback and anonymous access was not
    allowed (``index.allow_anonymous``): see :func:`index.access.check_exposure`."""
    settings = getattr(app.state, "settings", None)
    table = getattr(app.state, "access", None)
    if table is None:
        return  # not an app of create_app
    check_exposure(host, table, bool(settings is not None and settings.allow_anonymous))


def _uvicorn_config(app: FastAPI, host: str, port: int, config: dict[str, Any]) -> uvicorn.Config:
    """Serving defaults: no access log (a line per request costs more than a cached answer), uvloop and httptools
    where installed (uvicorn's ``auto``)."""
    config.setdefault("access_log", False)
    config.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, host=host, port=port, **config)


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0,
                    **config: Any) -> RunningServer:
    """Start uvicorn for ``app`` in a daemon thread and return once it accepts connections.

    ``port=0`` takes a free port (see ``.port``). The socket is bound here, so a port in use raises
    ``OSError`` in the caller; an exposed host without tokens raises ``ValueError`` (:func:`check_app_exposure`).
    Extra keyword arguments go to :class:`uvicorn.Config`."""
    check_app_exposure(app, host)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config.setdefault("log_level", "warning")
    cfg = _uvicorn_config(app, host, bound_port, config)
    server = uvicorn.Server(cfg)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread (SystemExit included)
            errors.append(e)
            log.exception("query API server stopped with an error")
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"driftrag-http-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5.0)
            why = repr(errors[0]) if errors else ("it exited" if not thread.is_alive() else f"{timeout:.0f} s passed")
            raise RuntimeError(f"query API server on {host}:{bound_port} did not start: {why}")
        time.sleep(0.01)
    return RunningServer(server, thread, host, bound_port, token=getattr(app.state, "internal_token", None))


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          **config: Any) -> None:
    """Serve ``app`` in this thread until interrupted (SIGINT/SIGTERM stop it gracefully); an exposed host without
    tokens raises ``ValueError`` first (:func:`check_app_exposure`)."""
    check_app_exposure(app, host)
    uvicorn.Server(_uvicorn_config(app, host, port, {"log_level": log_level, **config})).run()
