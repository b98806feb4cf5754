"""The query API: a FastAPI app over a :class:`~index.live.LiveIndex`, and helpers to serve it with uvicorn.

Endpoints (all JSON except ``/metrics``):

- ``POST /v1/context`` ``{"history": [item_id, ...]}`` or ``{"clusters": [c1, c2]}``, optional ``k``, ``mode``
  (``"frequency"`` | ``"trend"``), ``items_per_successor`` -> :meth:`LiveIndex.context`;
- ``POST /v1/search`` ``{"text": ...}`` or ``{"vector": [...]}``, optional ``k`` -> :meth:`LiveIndex.search`;
- ``GET /v1/clusters/{id}`` (optional ``?k=``) -> :meth:`LiveIndex.cluster` (with its drift status);
- ``GET /v1/drift`` (optional ``?limit=``) -> :meth:`LiveIndex.drift_ranking`;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (the index has a codebook and ``readiness()`` agrees),
  ``GET /metrics`` (Prometheus text exposition of the default registry).

Every error is ``{"error": <code>, "detail": <text>}`` with a 4xx/5xx status and never a stack trace:
``bad_request`` (400: bad JSON, wrong field types, or a check of the index), ``not_found`` (404: route, cluster),
``method_not_allowed`` (405), ``not_ready`` (503), ``internal`` (500; the traceback is logged here).

Request bodies are checked for *shape* only (strict types: ``"k": "3"`` is a 400; unknown fields are ignored);
the index owns the semantic checks (ranges, cluster ids, exactly one of two fields). Endpoints are plain ``def``
functions, so the index's CPU work (search, embedding) runs in the threadpool and never blocks the event loop.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.live import BadRequest, LiveIndex, NotReady, QueryError

__all__ = ["ContextRequest", "RunningServer", "SearchRequest", "create_app", "serve", "serve_in_thread"]

log = logging.getLogger(__name__)

HTTP_REQUESTS = PromCounter("driftrag_http_requests_total", "Query API requests answered", ["route", "status"])
HTTP_LATENCY = Histogram("driftrag_http_request_seconds", "Query API request latency", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 503: "not_ready"}
MAX_BODY_BYTES = 1 << 20
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


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


def _json_body(model: type[_Body]) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that reads the request body as a JSON object of ``model`` (whatever the content type says),
    raising :class:`BadRequest` (400) for a missing, oversized, malformed or mistyped body."""

    async def parse(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"request body is over {MAX_BODY_BYTES // 1024} KiB")
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

    return parse


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
            HTTP_REQUESTS.labels(name, str(status)).inc()
            HTTP_LATENCY.labels(name).observe(time.perf_counter() - t0)


def create_app(live: LiveIndex, *, readiness: Callable[[], tuple[bool, str]] | None = None) -> FastAPI:
    """The query API over ``live``. ``readiness``: an extra ``() -> (ready, reason)`` for ``/readyz`` (e.g. the
    stream job has caught up with its source); the index itself must also have a codebook."""
    app = FastAPI(title="driftrag", summary="Live interest-transition context for LLM recommenders",
                  default_response_class=JSONResponse, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.live = live

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

    @app.post("/v1/context")
    def context(body: ContextRequest = Depends(_json_body(ContextRequest))) -> Response:  # noqa: B008
        return JSONResponse(live.context(history=body.history, clusters=body.clusters, **body.options()))

    @app.post("/v1/search")
    def search(body: SearchRequest = Depends(_json_body(SearchRequest))) -> Response:  # noqa: B008
        return JSONResponse(live.search(text=body.text, vector=body.vector, **body.options()))

    @app.get("/v1/clusters/{cluster_id}")
    def cluster(cluster_id: str, k: int = 5) -> Response:
        try:
            c = int(cluster_id, 10)
        except ValueError:
            return _error(404, "not_found", f"no cluster {cluster_id[:40]!r}: cluster ids are integers")
        return JSONResponse(live.cluster(c, k=k))

    @app.get("/v1/drift")
    def drift(limit: int = 50) -> Response:
        return JSONResponse(live.drift_ranking(limit))

    @app.get("/healthz")
    def healthz() -> Response:
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

    app.add_middleware(_GuardMiddleware)
    return app


# -------------------------------------------------------------------------------------------------- serving


class RunningServer:
    """A uvicorn server running in a daemon thread (see :func:`serve_in_thread`)."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port

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


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0,
                    **config: Any) -> RunningServer:
    """Start uvicorn for ``app`` in a daemon thread and return once it accepts connections.

    ``port=0`` takes a free port (see ``.port``). The socket is bound here, so a port in use raises
    ``OSError`` in the caller. Extra keyword arguments go to :class:`uvicorn.Config`."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    cfg = uvicorn.Config(app, host=host, port=bound_port, log_level=config.pop("log_level", "warning"),
                         timeout_graceful_shutdown=config.pop("timeout_graceful_shutdown", 5), **config)
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
    return RunningServer(server, thread, host, bound_port)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          **config: Any) -> None:
    """Serve ``app`` in this thread until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **config)).run()
