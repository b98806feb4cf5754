"""The drift monitor inside the real dataflow (real embeddings and clusters, no Kafka): every planted drift of the
generator's default scenario is alerted, on the right cluster, once per severity; the alerts follow the brief."""

from __future__ import annotations

import collections
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from streams.cli import main
from streams.generator import GeneratorConfig, write_files
from streams.webhook import SIGNATURE_HEADER, verify_signature

pytestmark = pytest.mark.slow
DAY = 86_400_000


DELIVERIES: list[tuple[bytes, str | None]] = []  # (body, signature header) as the webhook endpoint got them


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server API
        DELIVERIES.append((self.rfile.read(int(self.headers["content-length"])), self.headers.get(SIGNATURE_HEADER)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("out")
    write_files(GeneratorConfig(seed=7, events=60_000, bad_fraction=0.01), data)
    secret = tmp_path_factory.mktemp("secret") / "webhook"
    secret.write_text("e2e-secret\n")
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    os.environ["DRIFTRAG_DRIFT__WEBHOOK_SECRET_FILE"] = str(secret)
    try:
        assert main(["run", "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
                     "--no-api", "--out", str(out), "--codebook-dir", str(tmp_path_factory.mktemp("cb")),
                     "--progress-every", "60", "--webhook", f"http://127.0.0.1:{hook.server_address[1]}/hook"]) == 0
    finally:
        del os.environ["DRIFTRAG_DRIFT__WEBHOOK_SECRET_FILE"]
        hook.shutdown()
        hook.server_close()
    gt = orjson.loads((data / "ground_truth.json").read_bytes())
    ours = {}
    for line in (out / "items.jsonl").read_bytes().splitlines():
        it = orjson.loads(line)
        ours[it["item_id"]] = it["cluster"]
    votes: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for item_id, true_c in gt["items"].items():
        if item_id in ours:
            votes[true_c][ours[item_id]] += 1
    to_ours = {t: v.most_common(1)[0][0] for t, v in votes.items()}
    alerts = [orjson.loads(x) for x in (out / "alerts.jsonl").read_bytes().splitlines()]
    return gt, to_ours, alerts


def test_every_planted_drift_is_alerted_on_its_cluster(run):
    gt, to_ours, alerts = run
    missed = []
    for d in gt["drifts"]:
        cluster = to_ours[d["cluster"]]
        hit = [a for a in alerts if a["kind"] == d["kind"] and a["cluster"] == cluster
               and d["start_ms"] <= a["ts"] <= d["end_ms"] + 2 * DAY]
        if not hit:
            missed.append(d["id"])
    assert not missed, f"planted drifts without an alert: {missed}"


def test_every_alert_reaches_the_webhook_signed(run):
    _, _, alerts = run
    assert alerts and len(DELIVERIES) == len(alerts)  # the job drains its webhook queue before it exits
    assert sorted(orjson.loads(b)["alert_id"] + orjson.loads(b)["severity"] for b, _ in DELIVERIES) == sorted(
        a["alert_id"] + a["severity"] for a in alerts)
    for body, header in DELIVERIES:
        assert verify_signature(b"e2e-secret", body, header, tolerance_s=3600)


def test_one_drift_one_alert_and_the_brief_fields(run):
    _, _, alerts = run
    per_id = collections.Counter((a["alert_id"], a["severity"]) for a in alerts)
    assert max(per_id.values()) == 1  # escalation reuses the id, at most once per severity
    assert len({a["alert_id"] for a in alerts}) <= 10  # 8 planted drifts; at most a couple of side effects
    for a in alerts:
        assert {"alert_id", "cluster", "kind", "score", "threshold", "severity", "window", "evidence", "ts"} <= set(a)
        assert a["window"]["start"] < a["window"]["end"] and a["score"] >= a["threshold"]
        assert a["reference"]["policy"] == "rolling" and a["evidence"]
