"""The drift webhook against a real local HTTP server: delivery, retries with backoff, rejection, never blocking."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from operators.alerts import Alert
from streams.webhook import WebhookNotifier


class Endpoint:
    """A real HTTP server answering with scripted statuses (then 200), recording every request."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0) -> None:
        self.statuses, self.delay_s = list(statuses), delay_s
        self.requests: list[tuple[float, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append((time.monotonic(), body))
                time.sleep(outer.delay_s)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert(n: int = 1) -> Alert:
    return Alert(f"a{n}", 3, "engagement", 5.0, 3.0, "warning", 0, 10, {"rate_before": 0.6}, 10)


def count(result: str) -> float:
    return REGISTRY.get_sample_value("driftrag_alert_webhook_total", {"result": result}) or 0.0


def wait(cond, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def endpoint():
    made = []

    def make(statuses: list[int], delay_s: float = 0.0) -> Endpoint:
        made.append(Endpoint(statuses, delay_s))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_delivers_the_alert_json(endpoint):
    ep = endpoint([])
    n = WebhookNotifier(ep.url)
    assert n.notify(alert())
    wait(lambda: len(ep.requests) == 1)
    n.close()
    body = ep.requests[0][1]
    assert body["alert_id"] == "a1" and body["window"] == {"start": 0, "end": 10} and body["kind"] == "engagement"


def test_retries_5xx_and_429_with_growing_backoff_then_delivers(endpoint):
    ep = endpoint([503, 429, 500])
    delivered, retried = count("delivered"), count("retried")
    n = WebhookNotifier(ep.url, base_delay_s=0.1, max_delay_s=1.0)
    n.notify(alert())
    wait(lambda: len(ep.requests) == 4)
    n.close()
    times = [t for t, _ in ep.requests]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4 s
    assert count("delivered") == delivered + 1 and count("retried") == retried + 3


def test_gives_up_after_max_attempts_and_does_not_retry_a_rejection(endpoint):
    ep = endpoint([500] * 10)
    failed = count("failed")
    n = WebhookNotifier(ep.url, max_attempts=3, base_delay_s=0.01)
    n.notify(alert())
    wait(lambda: count("failed") == failed + 1)
    assert len(ep.requests) == 3
    n.close()
    ep2 = endpoint([400])
    rejected = count("rejected")
    n2 = WebhookNotifier(ep2.url, base_delay_s=0.01)
    n2.notify(alert(2))
    wait(lambda: count("rejected") == rejected + 1)
    time.sleep(0.1)
    assert len(ep2.requests) == 1
    n2.close()


def test_connection_refused_is_retried(endpoint):
    ep = endpoint([])
    url = ep.url
    ep.close()  # nobody listens there now
    failed = count("failed")
    n = WebhookNotifier(url, max_attempts=2, base_delay_s=0.01)
    n.notify(alert())
    wait(lambda: count("failed") == failed + 1)
    n.close()


def test_notify_never_blocks_and_drops_when_the_queue_is_full(endpoint):
    ep = endpoint([], delay_s=0.5)  # a slow endpoint
    dropped = count("dropped")
    n = WebhookNotifier(ep.url, queue_size=2)
    t0 = time.monotonic()
    results = [n.notify(alert(i)) for i in range(10)]
    assert time.monotonic() - t0 < 0.2
    assert results.count(False) >= 7 and count("dropped") >= dropped + 7
    n.close(timeout_s=5)


def test_bad_url_is_a_clear_error():
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier("ftp://example")
