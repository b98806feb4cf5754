"""The drift webhook against a real local HTTP server: delivery, retries with backoff, rejection, never blocking."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from operators.alerts import Alert
from streams.settings import DriftSettings
from streams.webhook import SIGNATURE_HEADER, WebhookNotifier, verify_signature


class Endpoint:
    """A real HTTP server answering with scripted statuses (then 200), recording every request."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.statuses, self.delay_s, self.gate = list(statuses), delay_s, gate
        self.requests: list[tuple[float, dict]] = []
        self.raw: list[tuple[bytes, dict[str, str]]] = []  # (body as sent, headers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self.rfile.read(int(self.headers["content-length"]))
                outer.raw.append((raw, {k.lower(): v for k, v in self.headers.items()}))
                outer.requests.append((time.monotonic(), json.loads(raw)))
                time.sleep(outer.delay_s)
                if outer.gate is not None:
                    outer.gate.wait(30)  # held until the test lets it answer
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

    def make(statuses: list[int], delay_s: float = 0.0, gate: threading.Event | None = None) -> Endpoint:
        made.append(Endpoint(statuses, delay_s, gate))
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
    gate = threading.Event()
    ep = endpoint([], gate=gate)  # an endpoint that answers nothing until the gate opens
    dropped = count("dropped")
    n = WebhookNotifier(ep.url, queue_size=2)
    results: list[bool] = []
    caller = threading.Thread(target=lambda: results.extend(n.notify(alert(i)) for i in range(10)))
    caller.start()
    caller.join(30)  # a hang guard, not a timing bound
    # every call returned while the endpoint had answered nothing: notify does not wait for delivery
    assert not caller.is_alive() and not gate.is_set() and len(results) == 10
    assert results.count(False) >= 7 and count("dropped") >= dropped + 7
    gate.set()
    n.close(timeout_s=5)


def test_bad_url_is_a_clear_error():
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier("ftp://example")


def readme_verify():  # noqa: ANN201
    """The receiver's ``verify`` exactly as the README shows it (standard library only)."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme[readme.index("Webhook signatures."):]
    code = block[block.index("```python") + 9:]
    scope: dict = {}
    exec(code[:code.index("```")], scope)  # noqa: S102 - our own README
    return scope["verify"]


def test_signed_deliveries_verify_and_each_attempt_is_signed_anew(endpoint):
    ep = endpoint([503])
    n = WebhookNotifier(ep.url, base_delay_s=1.1, secret="s3cret")  # a retry in a later second
    n.notify(alert())
    wait(lambda: len(ep.raw) == 2, timeout=15)
    n.close()
    stamps = set()
    for body, headers in ep.raw:
        header = headers[SIGNATURE_HEADER.lower()]
        assert verify_signature(b"s3cret", body, header)
        assert readme_verify()(b"s3cret", body, header)
        assert not readme_verify()(b"other", body, header)
        assert not verify_signature(b"other", body, header)
        assert not verify_signature(b"s3cret", body.replace(b'"a1"', b'"a2"'), header)  # body tampered with
        stamps.add(header.split(",")[0])
    assert len(stamps) == 2  # the retry carries its own (later) timestamp


def test_unsigned_without_a_secret(endpoint):
    ep = endpoint([])
    n = WebhookNotifier(ep.url)
    n.notify(alert())
    wait(lambda: len(ep.raw) == 1)
    n.close()
    assert SIGNATURE_HEADER.lower() not in ep.raw[0][1]


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000",
                                    "t=1700000000,v1=" + "0" * 64])
def test_malformed_or_wrong_signatures_are_refused_not_raised(header):
    assert verify_signature(b"k", b"{}", header, now=1_700_000_000) is False


def test_a_rotated_secret_may_sign_alongside():
    from streams.webhook import sign

    old, new = sign(b"old", b"{}", timestamp=100), sign(b"new", b"{}", timestamp=100)
    both = old + "," + new.split(",")[1]
    assert verify_signature(b"old", b"{}", both, now=100) and verify_signature(b"new", b"{}", both, now=100)


def test_the_secret_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    from streams.settings import Settings

    assert DriftSettings().signing_secret() is None
    monkeypatch.setenv("DRIFTRAG_DRIFT__WEBHOOK_SECRET", "from-env")
    s = Settings()
    assert s.drift.signing_secret() == b"from-env" and "from-env" not in repr(s.drift)  # never printed
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    monkeypatch.setenv("DRIFTRAG_DRIFT__WEBHOOK_SECRET_FILE", str(f))
    assert Settings().drift.signing_secret() == b"from-file"
    f.write_text("")
    with pytest.raises(ValueError, match="empty"):
        Settings().drift.signing_secret()
    with pytest.raises(ValueError, match="empty"):
        WebhookNotifier("http://127.0.0.1:9/hook", secret="")
