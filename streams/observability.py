"""The stream job's own HTTP endpoints, in every mode (Kafka, files, embedded, replay).

- ``GET /metrics``: Prometheus text exposition of the default registry (``streams/metrics.py`` and the rest);
- ``GET /healthz``: 200 ``{"status": "starting" | "running"}`` while the process is alive and its dataflow is
  starting or running; 503 ``{"error": "dataflow_stopped", "detail": ...}`` once the dataflow has ended or
  failed (the process is about to exit, or serves the query API on after its input ended);
- ``GET /readyz``: 200 ``{"ready": true, ...}`` when the job is caught up (:func:`readiness`), else 503
  ``{"error": "not_ready", "detail": ...}``.

Other routes answer 404 ``{"error": "not_found", ...}``. Settings: ``run.metrics_host`` and ``run.metrics_port``
(9108; 0: any free port; -1: no endpoints; a multi-process job adds its process id), ``run.ready_max_lag``. The
query API of the embedded and file modes (``index.port``) is a separate server with its own ``/metrics``.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from index.http import JSONResponse, RunningServer, serve_in_thread
from streams.metrics import CONSUMER_LAGS, DATAFLOW_RUNNING, EVENT_TIME, build_info

__all__ = ["JobEndpoints", "JobStatus", "endpoint_port", "readiness"]

log = logging.getLogger(__name__)

STATES = ("starting", "running", "stopped", "failed")


class JobStatus:
    """Where the job's dataflow is: ``starting`` (building: model, codebook), ``running``, then ``stopped``
    (its input ended, or it was interrupted) or ``failed`` (with the reason). Thread-safe; keeps
    ``driftrag_dataflow_running`` in step."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._state, self._reason = "starting", ""
        self._lock = threading.Lock()
        DATAFLOW_RUNNING.set(0)

    @property
    def state(self) -> str:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    def _set(self, state: str, reason: str = "") -> None:
        with self._lock:
            self._state, self._reason = state, reason
        DATAFLOW_RUNNING.set(1 if state == "running" else 0)

    def running(self) -> None:
        self._set("running")

    def stopped(self, reason: str = "the dataflow ended") -> None:
        """The dataflow ended; a failure already reported stays the reason."""
        if self._state != "failed":
            self._set("stopped", reason)

    def failed(self, reason: str) -> None:
        self._set("failed", reason)


def readiness(state: str, mode: str, lags: tuple[int, int, int], max_lag: int) -> tuple[bool, str]:
    """Whether a job is ready for traffic, and why not: ``(ready, reason)``.

    ``lags`` is ``(partitions registered, partitions measured, total lag)`` of this process's Kafka partitions
    (:meth:`streams.metrics.ConsumerLags.total`). Cases:

    - the dataflow is not running (starting, stopped, failed): not ready;
    - files, embedded, replay: ready while it runs;
    - Kafka, no partition measured yet (none built, or no fetch answered): not ready;
    - Kafka, some partitions not measured yet: not ready;
    - Kafka, total lag above ``max_lag``: not ready; else ready.

    >>> readiness("running", "kafka", (6, 6, 12), 1000)
    (True, 'consumer lag 12 messages over 6 partitions')
    >>> readiness("running", "kafka", (6, 6, 5000), 1000)[1]
    'consumer lag 5000 messages over 6 partitions is above run.ready_max_lag 1000'
    >>> readiness("starting", "files", (0, 0, 0), 1000)
    (False, 'the dataflow is starting')
    """
    if state != "running":
        return False, f"the dataflow is {state}"
    if mode != "kafka":
        return True, "the dataflow is running"
    registered, measured, total = lags
    if measured == 0:
        return False, "no consumer lag measured yet"
    if measured < registered:
        return False, f"consumer lag measured on {measured} of {registered} partitions so far"
    where = f"consumer lag {total} messages over {measured} partitions"
    if total > max_lag:
        return False, f"{where} is above run.ready_max_lag {max_lag}"
    return True, where


def endpoint_port(metrics_port: int, process_id: int | None) -> int | None:
    """The port this process listens on: None for none (-1), 0 for any free one, else ``metrics_port`` plus the
    process id of a multi-process job.

    >>> endpoint_port(9108, None), endpoint_port(9108, 2), endpoint_port(0, 2), endpoint_port(-1, 0)
    (9108, 9110, 0, None)
    """
    if metrics_port < -1 or metrics_port > 65535:
        raise ValueError(f"run.metrics_port must be -1 (none), 0 (any free port) or a port, got {metrics_port}")
    if metrics_port == -1:
        return None
    if metrics_port == 0:
        return 0
    port = metrics_port + (process_id or 0)
    if port > 65535:
        raise ValueError(f"run.metrics_port {metrics_port} + process id {process_id} is past 65535")
    return port


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def create_app(status: JobStatus, max_lag: int) -> FastAPI:
    """The endpoints' app over ``status`` and this process's metrics."""
    app = FastAPI(title="driftrag job", default_response_class=JSONResponse, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _error(404, "not_found", f"no route {request.method} {request.url.path}: the job serves "
                          "/metrics, /healthz, /readyz")
        if exc.status_code == 405:
            return _error(405, "method_not_allowed", f"method {request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, "bad_request" if exc.status_code < 500 else "internal", str(exc.detail))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        state = status.state
        if state in ("starting", "running"):
            return JSONResponse({"status": state, "mode": status.mode})
        return _error(503, "dataflow_stopped", f"the dataflow {'failed' if state == 'failed' else 'stopped'}: "
                      f"{status.reason}")

    @app.get("/readyz")
    def readyz() -> Response:
        lags = CONSUMER_LAGS.total()
        ok, reason = readiness(status.state, status.mode, lags, max_lag)
        if not ok:
            return _error(503, "not_ready", reason)
        body: dict[str, Any] = {"ready": True, "mode": status.mode, "detail": reason,
                                "event_time_watermark_ms": EVENT_TIME.watermark_ms}
        if status.mode == "kafka":
            body["consumer_lag"] = lags[2]
        return JSONResponse(body)

    return app


class JobEndpoints:
    """The endpoints' server, running in a daemon thread (see :meth:`start`)."""

    def __init__(self, server: RunningServer, status: JobStatus) -> None:
        self.server = server
        self.status = status

    @property
    def url(self) -> str:
        return self.server.url

    @classmethod
    def start(cls, status: JobStatus, *, host: str, metrics_port: int, process_id: int | None = None,
              max_lag: int = 1000, strict: bool = True) -> JobEndpoints | None:
        """Serve the endpoints for ``status``; None where ``metrics_port`` is -1. A busy port raises ``OSError``
        when ``strict`` (the port was asked for on the command line), else a free port is taken and a warning
        logged."""
        port = endpoint_port(metrics_port, process_id)
        if port is None:
            return None
        build_info()
        app = create_app(status, max_lag)
        try:
            server = serve_in_thread(app, host=host, port=port)
        except OSError as e:
            if strict or port == 0:
                raise OSError(f"cannot serve the job endpoints on {host}:{port}: {e} (--metrics-port, "
                              "DRIFTRAG_RUN__METRICS_PORT; -1 turns them off)") from None
            print(f"[driftrag] port {port} is busy ({e}); serving the job endpoints on a free port instead",
                  file=sys.stderr, flush=True)
            server = serve_in_thread(app, host=host, port=0)
        return cls(server, status)

    def stop(self) -> None:
        self.server.stop(timeout=5.0)
