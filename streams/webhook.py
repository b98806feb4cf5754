"""Drift alerts to an HTTP webhook: POST JSON, retries with backoff, never blocking the dataflow.

:class:`WebhookNotifier` hands alerts to a background thread through a bounded queue. ``notify`` returns at once;
when the queue is full (the endpoint is down for long) the alert is dropped and counted — the ``drift-alerts``
topic still has it. Each alert is POSTed as the brief's alert JSON; connection errors, timeouts, 429 and 5xx are
retried with exponential backoff (``base_delay_s * 2**attempt``, capped at ``max_delay_s``), other 4xx are not
(the endpoint rejected the payload: retrying will not help). Outcomes are counted in
``driftrag_alert_webhook_total{result}`` (delivered | retried | failed | rejected | dropped).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

__all__ = ["WEBHOOK_RESULTS", "WebhookNotifier"]

log = logging.getLogger(__name__)

WEBHOOK_RESULTS = Counter("driftrag_alert_webhook_total", "Drift alert webhook deliveries by outcome", ["result"])
_RETRYABLE = {408, 425, 429}


class WebhookNotifier:
    def __init__(self, url: str, *, timeout_s: float = 5.0, max_attempts: int = 5, base_delay_s: float = 0.5,
                 max_delay_s: float = 30.0, queue_size: int = 1000, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://..., got {url!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.url = url
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
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
                r = self._client.post(self.url, content=body)
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
