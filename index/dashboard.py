"""The drift dashboard: one static page (``index/static``) served by the query service at ``GET /dashboard``.

The page carries no data: its script reads the public API (``/v1/drift``, ``/v1/alerts``, ``/v1/pairs``,
``/v1/clusters/{id}``, ``/readyz``) with the bearer token the user typed, if any, and refreshes every few seconds.
The files are served as they are (no build step), each with its content type and a Content-Security-Policy
that allows only this origin, so the page runs no inline script and loads nothing from elsewhere.

>>> sorted(ASSETS)
['app.js', 'dashboard.css', 'uPlot.LICENSE', 'uPlot.iife.min.js', 'uPlot.min.css']
"""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

__all__ = ["ASSETS", "CSP", "mount_dashboard"]

# name -> content type: the only files served (no path from the request ever reaches the file system)
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("index").joinpath("static", name).read_bytes()


def _file(name: str, media_type: str, cache: str) -> Response:
    return Response(_read(name), media_type=media_type, headers={**_HEADERS, "Cache-Control": cache})


def mount_dashboard(app: FastAPI) -> None:
    """Add ``GET /dashboard`` (the page) and ``GET /dashboard/static/{name}`` (its script, styles and the
    vendored uPlot chart library) to ``app``. Public: the files hold no data; the API calls carry the auth."""

    @app.get("/dashboard", include_in_schema=False)
    @app.get("/dashboard/", include_in_schema=False)
    def dashboard() -> Response:
        return _file("index.html", "text/html; charset=utf-8", "no-cache")

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    def dashboard_asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            body = {"error": "not_found", "detail": f"no dashboard file {name[:60]!r}"}
            return Response(orjson.dumps(body), status_code=404, media_type="application/json")
        return _file(name, media_type, "no-cache")
