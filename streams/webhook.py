"""Drift alerts to an HTTP webhook: POST JSON, retries with backoff, never blocking the dataflow.

:class:`WebhookNotifier` hands alerts to a background thread through a bounded queue. ``notify`` returns at once;
when the queue is full (the endpoint is down for long) the alert is dropped and counted — the ``drift-alerts``
topic still has it. Each alert is POSTed as the brief's alert JSON; connection errors, timeouts, 429 and 5xx are
retried with exponential backoff (``base_delay_s * 2**attempt``, capped at ``max_delay_s``), other 4xx are not
(the endpoint rejected the payload: retrying will not help). Outcomes are counted in
``driftrag_alert_webhook_total{result}`` (delivered | retried | failed | rejected | dropped).

Signatures: with a shared ``secret`` every delivery carries ``Driftrag-Signature: t=<unix seconds>,v1=<hex>``,
where ``<hex>`` is HMAC-SHA256 of ``b"<t>." + body`` under the secret (the scheme Stripe and others use: the
timestamp is signed with the body, so a captured delivery cannot be replayed later with a new time). Each attempt
is signed anew. Receivers check it with :func:`verify_signature`, or ten lines of ``hmac`` in any language:

>>> body = b'{"alert_id": "a1"}'
>>> header = sign(b"s3cret", body, timestamp=1_700_000_000)
>>> header[:15]
't=1700000000,v1'
>>> verify_signature(b"s3cret", body, header, now=1_700_000_030)
True
>>> verify_signature(b"s3cret", body + b" ", header, now=1_700_000_030)
False
>>> verify_signature(b"s3cret", body, header, now=1_700_000_900)  # older than the 300 s tolerance: a replay
False
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

__all__ = ["SIGNATURE_HEADER", "WEBHOOK_RESULTS", "WebhookNotifier", "sign", "verify_signature"]

log = logging.getLogger(__name__)

WEBHOOK_RESULTS = Counter("driftrag_alert_webhook_total", "Drift alert webhook deliveries by outcome", ["result"])
_RETRYABLE = {408, 425, 429}
SIGNATURE_HEADER = "Driftrag-Signature"


def _digest(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``Driftrag-Signature`` header value for ``body``: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, body, t)}"


def verify_signature(secret: bytes, body: bytes, header: str | None, *, tolerance_s: float = 300.0,
                     now: float | None = None) -> bool:
    """True when ``header`` signs exactly ``body`` under ``secret`` and its timestamp is within ``tolerance_s`` of
    ``now`` (default: the clock). Several ``v1=`` entries are allowed (a secret being rotated). Constant-time."""
    if not header:
        return False
    t: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                return False
        elif key == "v1":
            sigs.append(value)
    if t is None or not sigs:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = _digest(secret, body, t)
    return any(hmac.compare_digest(expected, s) for s in sigs)


class WebhookNotifier:
    def __init__(self, url: str, *, timeout_s: float = 5.0, max_attempts: int = 5, base_delay_s: float = 0.5,
                 max_delay_s: float = 30.0, queue_size: int = 1000, headers: dict[str, str] | None = None,
                 secret: str | bytes | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://..., got {url!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.url = url
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and not secret:
            raise ValueError("webhook secret is empty: set a non-empty secret or none")
        self._secret = secret
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(queue_size)
        self._client = httpx.Client(timeout=timeout_s, headers={"content-type": "application/json",
                                                               **(headers or {})})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-webhook", daemon=True)
        self._thread.start()

    def notify(self, alert: Any) -> bool:
        """Queue an alert (an ``Alert`` or its dict); never blocks. False when dropped (queue full or closed)."""
        if self._stop.is_set():
            WEBHOOK_RESULTS.labels("dropped").inc()
            return False
        payload = alert.to_dict() if hasattr(alert, "to_dict") else dict(alert)
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            WEBHOOK_RESULTS.labels("dropped").inc()
            log.warning("webhook queue full: dropped alert %s (it is still on the drift-alerts topic)",
                        payload.get("alert_id"))
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._client.close()

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            try:
                payload = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        for attempt in range(self.max_attempts):
            try:
                headers = {SIGNATURE_HEADER: sign(self._secret, body)} if self._secret is not None else None
                r = self._client.post(self.url, content=body, headers=headers)
                if r.status_code < 300:
                    WEBHOOK_RESULTS.labels("delivered").inc()
                    return
                if r.status_code < 500 and r.status_code not in _RETRYABLE:
                    WEBHOOK_RESULTS.labels("rejected").inc()
                    log.warning("webhook rejected alert %s: HTTP %d", payload.get("alert_id"), r.status_code)
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            if attempt + 1 < self.max_attempts:
                WEBHOOK_RESULTS.labels("retried").inc()
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** attempt)
                log.info("webhook attempt %d for %s failed (%s); retrying in %.1fs", attempt + 1,
                         payload.get("alert_id"), why, delay)
                self._stop.wait(delay)  # once closing, the remaining attempts go without waiting
            else:
                WEBHOOK_RESULTS.labels("failed").inc()
                log.error("webhook gave up on alert %s after %d attempts (%s)", payload.get("alert_id"),
                          self.max_attempts, why)
