"""A small synchronous client for the driftrag query API (see :mod:`index.http`).

Usage::

    import os

    from index.client import DriftragClient, DriftragError

    with DriftragClient("http://127.0.0.1:8000", token=os.environ.get("DRIFTRAG_TOKEN")) as api:
        if api.ready():
            ctx = api.context(history=["item-17", "item-4"], k=3)
            print(ctx["prompt"])                      # paste into the LLM prompt
            hits = api.search(text="trail running shoes", k=5)
        try:
            api.cluster(999)
        except DriftragError as e:
            print(e.status, e.error, e.detail)        # 404 not_found cluster 999 does not exist ...

Every non-2xx answer raises :class:`DriftragError` with the server's ``error`` code and ``detail`` (401
``unauthorized`` without a valid token, 429 ``busy`` with ``retry_after`` set); a server that cannot be reached
raises it with ``status=None`` and ``error="unreachable"`` (``"timeout"`` when the server accepted the request but
did not answer in time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

__all__ = ["DriftragClient", "DriftragError"]


class DriftragError(Exception):
    """An error answer (``status`` 4xx/5xx), or ``status=None`` when the server could not be reached."""

    def __init__(self, status: int | None, error: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status or 'no answer'} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after  # seconds, from a 429's Retry-After


def _plain(values: Any) -> Any:
    """Lists of numbers from a numpy array (or any sequence) for JSON."""
    return values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]


class DriftragClient:
    """Client for one query API at ``base_url``; ``timeout`` (s) applies to connecting and to each answer;
    ``token``: a bearer token (scope ``read``, or ``admin`` for the admin calls) where the service has tokens."""

    def __init__(self, base_url: str, timeout: float = 5.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    # -- transport -----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            if body is None:
                return self._http.request(method, path)
            return self._http.request(method, path, content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                                      headers={"content-type": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise DriftragError(None, "unreachable", f"cannot connect to {self.base_url}: {e}") from e
        except httpx.TimeoutException as e:
            raise DriftragError(None, "timeout", f"{method} {path} on {self.base_url}: no answer in time ({e!r})"
                                ) from e
        except httpx.TransportError as e:
            raise DriftragError(None, "unreachable", f"{method} {path} on {self.base_url} failed: {e!r}") from e

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            body = resp.json()
            error, detail = str(body["error"]), str(body["detail"])
        except (ValueError, KeyError, TypeError):
            error, detail = f"http_{resp.status_code}", resp.text[:500]
        try:
            retry_after = float(resp.headers["retry-after"])
        except (KeyError, ValueError):
            retry_after = None
        raise DriftragError(resp.status_code, error, detail, retry_after)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self._request(method, path, body)
        self._raise_for(resp)
        return resp.json()

    # -- API -----------------------------------------------------------------------------------------------
    def context(self, history: Sequence[str] | None = None, clusters: Sequence[int] | None = None, k: int = 3,
                mode: str | None = None, items_per_successor: int | None = None) -> dict[str, Any]:
        """Successor interests, fresh items and a ready prompt for a user's recent items or clusters."""
        body: dict[str, Any] = {"k": k}
        if history is not None:
            body["history"] = list(history)
        if clusters is not None:
            body["clusters"] = [int(c) for c in clusters]
        if mode is not None:
            body["mode"] = mode
        if items_per_successor is not None:
            body["items_per_successor"] = items_per_successor
        return self._json("POST", "/v1/context", body)

    def search(self, text: str | None = None, vector: Any = None, k: int = 10) -> dict[str, Any]:
        """Nearest items to ``text`` or ``vector`` (a list or numpy array)."""
        body: dict[str, Any] = {"k": k}
        if text is not None:
            body["text"] = text
        if vector is not None:
            body["vector"] = _plain(vector)
        return self._json("POST", "/v1/search", body)

    def cluster(self, cluster_id: int, k: int | None = None) -> dict[str, Any]:
        query = "" if k is None else f"?k={int(k)}"
        return self._json("GET", f"/v1/clusters/{int(cluster_id)}{query}")

    def drift(self, limit: int = 50) -> dict[str, Any]:
        """``GET /v1/drift``: clusters ranked by their current drift score."""
        return self._json("GET", f"/v1/drift?limit={int(limit)}")

    def snapshot(self) -> dict[str, Any]:
        """``POST /v1/admin/snapshot`` (an admin token): save an index snapshot now."""
        return self._json("POST", "/v1/admin/snapshot")

    def access(self) -> dict[str, Any]:
        """``GET /v1/admin/access`` (an admin token): token names and scopes, and the limits in force."""
        return self._json("GET", "/v1/admin/access")

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> bool:
        """Whether the service answers ``/readyz`` with 200 (False when it says 503 or cannot be reached)."""
        try:
            return self._request("GET", "/readyz").status_code == 200
        except DriftragError:
            return False

    def readiness(self) -> dict[str, Any]:
        """The ``/readyz`` body, whether ready (200) or not (503)."""
        resp = self._request("GET", "/readyz")
        if resp.status_code not in (200, 503):
            self._raise_for(resp)
        return resp.json()

    def metrics(self) -> str:
        resp = self._request("GET", "/metrics")
        self._raise_for(resp)
        return resp.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DriftragClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
