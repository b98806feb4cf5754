"""The stream job's own endpoints (streams/observability.py): /metrics, /healthz, /readyz in every mode.

Real parts only: `driftrag run` as a subprocess on the test broker (Kafka mode) or with the embedded generator,
scraped over HTTP; the endpoints' server on its own for the status transitions; the lag helper against a real
consumer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from index.mutations import KINDS
from streams.contract import ContentEvent, Engagement, RawMessage, Validator
from streams.generator import GeneratorConfig, WorkloadGenerator, produce_to_kafka
from streams.lag import LagProbe, partition_lag
from streams.metrics import DIRECTIONS, STEPS
from streams.observability import JobEndpoints, JobStatus, endpoint_port, readiness
from tests.conftest import free_port, stop_process

_URL = re.compile(r"endpoints (http://\S+) ")


# ------------------------------------------------------------------------------------------------- helpers


def start_job(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`driftrag run ARGS` with its output in ``log`` (never an unread pipe)."""
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "run", *args],
                                env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path):  # noqa: ANN001, ANN201
    """Poll ``cond()`` until it returns something truthy; fail with the job's log tail if the job exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except httpx.HTTPError as e:  # the server is not up yet
            last = e
        else:
            if last:
                return last
        if proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}):\n"
                         f"{log.read_text()[-3000:]}")


def job_url(proc: subprocess.Popen, log: Path) -> str:
    """The endpoints' URL from the job's start line."""
    return wait_for(lambda: (m := _URL.search(log.read_text())) and m.group(1), 120, "the start line", proc, log)


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of the driftrag_* samples at ``url``/metrics."""
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name.startswith("driftrag_"):
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def assert_bounded(samples: dict[str, dict[tuple, float]], topics: set[str] = frozenset()) -> None:
    """Every label set comes from a closed set: no user, item or cluster ids."""
    for name, series in samples.items():
        assert len(series) <= 64, f"{name} has {len(series)} series"
        for labels in series:
            d = dict(labels)
            if name.startswith("driftrag_step_records"):
                assert d["step"] in STEPS and d["direction"] in DIRECTIONS, d
            if name.startswith("driftrag_index_mutations_produced"):
                assert d["kind"] in KINDS, d
            if name.startswith("driftrag_consumer_lag"):
                assert d["topic"] in topics and d["partition"].isdigit(), d


# ------------------------------------------------------------------------------------------------- pure logic


def test_partition_lag_cases():
    assert partition_lag(90, 0, 100) == 10
    assert partition_lag(100, 0, 100) == 0
    assert partition_lag(-2, 40, 100) == 60  # OFFSET_BEGINNING reads from the low watermark
    assert partition_lag(-2, -1001, 100) == 100  # ... or from 0 where the low watermark is not known
    assert partition_lag(-1, 0, 100) == 0  # OFFSET_END: nothing to read
    assert partition_lag(5, 40, 100) == 60  # deleted offsets are not lag
    assert partition_lag(150, 0, 100) == 0  # never negative
    assert partition_lag(0, -1001, -1001) is None  # watermarks not known yet


def test_readiness_cases():
    assert readiness("running", "files", (0, 0, 0), 0) == (True, "the dataflow is running")
    assert readiness("starting", "kafka", (0, 0, 0), 10)[0] is False
    assert readiness("stopped", "embedded", (0, 0, 0), 10) == (False, "the dataflow is stopped")
    assert readiness("running", "kafka", (0, 0, 0), 10) == (False, "no consumer lag measured yet")
    assert readiness("running", "kafka", (6, 3, 0), 10)[1] == "consumer lag measured on 3 of 6 partitions so far"
    assert readiness("running", "kafka", (6, 6, 11), 10)[0] is False
    assert readiness("running", "kafka", (6, 6, 10), 10)[0] is True


def test_endpoint_port():
    assert endpoint_port(9108, 3) == 9111 and endpoint_port(0, 3) == 0 and endpoint_port(-1, None) is None
    for bad in (-2, 65536):
        with pytest.raises(ValueError, match="metrics_port"):
            endpoint_port(bad, None)
    with pytest.raises(ValueError, match="past 65535"):
        endpoint_port(65535, 1)


# ------------------------------------------------------------------------------------------------- the server


def test_endpoints_follow_the_dataflow_state():
    status = JobStatus("files")
    ep = JobEndpoints.start(status, host="127.0.0.1", metrics_port=0)
    try:
        with httpx.Client(base_url=ep.url, timeout=10) as c:
            assert c.get("/healthz").json() == {"status": "starting", "mode": "files"}
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json() == {"error": "not_ready", "detail": "the dataflow is starting"}
            status.running()
            assert c.get("/healthz").status_code == 200
            r = c.get("/readyz")
            assert r.status_code == 200 and r.json()["ready"] is True
            assert scrape(ep.url)["driftrag_dataflow_running"][()] == 1
            status.failed("ErrorBudgetExceeded: 101 processing errors")
            status.stopped()  # a failure stays the reason
            r = c.get("/healthz")
            assert r.status_code == 503
            assert r.json() == {"error": "dataflow_stopped",
                                "detail": "the dataflow failed: ErrorBudgetExceeded: 101 processing errors"}
            assert c.get("/readyz").status_code == 503
            assert scrape(ep.url)["driftrag_dataflow_running"][()] == 0
            r = c.get("/v1/context")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            r = c.post("/healthz")
            assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    finally:
        ep.stop()


def test_a_busy_port_fails_when_asked_for_and_falls_back_otherwise():
    port = free_port()
    first = JobEndpoints.start(JobStatus("files"), host="127.0.0.1", metrics_port=port)
    try:
        with pytest.raises(OSError, match="cannot serve the job endpoints"):
            JobEndpoints.start(JobStatus("files"), host="127.0.0.1", metrics_port=port, strict=True)
        other = JobEndpoints.start(JobStatus("files"), host="127.0.0.1", metrics_port=port, strict=False)
        try:
            assert other.server.port not in (0, port)
            assert httpx.get(f"{other.url}/healthz", timeout=10).status_code == 200
        finally:
            other.stop()
        assert JobEndpoints.start(JobStatus("files"), host="127.0.0.1", metrics_port=-1) is None
    finally:
        first.stop()


# ------------------------------------------------------------------------------------------------- embedded


def test_embedded_job_serves_its_endpoints(tmp_path):
    log = tmp_path / "job.log"
    port = free_port()
    job = start_job(["--embedded", "--max-events", "1000000", "--rate", "1000", "--no-clusters", "--metrics-port",
                     str(port), "--progress-every", "30"], log)
    try:
        url = job_url(job, log)
        assert url == f"http://127.0.0.1:{port}"
        assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready", job, log)
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "running", "mode": "embedded"}

        def counted():  # noqa: ANN202
            s = scrape(url)
            steps = s.get("driftrag_step_records_total", {})
            return s if steps.get((("direction", "out"), ("step", "validate")), 0) > 0 else None

        s = wait_for(counted, 60, "validated records", job, log)
        assert s["driftrag_dataflow_running"][()] == 1
        (labels, one), = s["driftrag_build_info"].items()
        assert one == 1 and dict(labels)["python"] == ".".join(map(str, sys.version_info[:3]))
        steps = s["driftrag_step_records_total"]
        assert steps[(("direction", "in"), ("step", "validate"))] >= steps[(("direction", "out"), ("step", "validate"))]
        # The generator's events are dated from 2026-01-01: the watermark is among them, and behind the wall clock.
        wm = s["driftrag_event_time_watermark_seconds"][()]
        assert 1_767_225_600 <= wm < time.time()
        assert s["driftrag_event_time_lag_seconds"][()] == pytest.approx(time.time() - wm, abs=60)
        assert "driftrag_consumer_lag_messages" not in s  # no Kafka in this mode
        assert_bounded(s)
    finally:
        stop_process(job)


def test_embedded_run_counts_every_step(tmp_path, capsys):
    """In process, with clusters, drift and the live index: every main step counts records in and out, and the
    index mutations are counted by kind (the registry is this process's; the counts are differences)."""
    from streams.cli import main

    def step(name: str, direction: str) -> float:
        return REGISTRY.get_sample_value("driftrag_step_records_total", {"step": name, "direction": direction}) or 0

    def produced(kind: str) -> float:
        return REGISTRY.get_sample_value("driftrag_index_mutations_produced_total", {"kind": kind}) or 0

    before = {(s, d): step(s, d) for s in STEPS for d in DIRECTIONS}
    before_kinds = {k: produced(k) for k in KINDS}
    assert main(["run", "--embedded", "--max-events", "3000", "--seed", "2", "--codebook-dir",
                 str(tmp_path / "cb"), "--no-api", "--metrics-port", "0", "--progress-every", "60"]) == 0
    summary = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    delta = {k: step(*k) - v for k, v in before.items()}
    assert delta[("validate", "in")] == summary["messages"]
    assert delta[("validate", "out")] == summary["engagements"] + summary["content_events"]
    assert delta[("content", "in")] == delta[("validate", "out")]
    assert delta[("content", "out")] >= summary["engagements_clustered"]
    for s, d in delta:
        assert delta[(s, d)] > 0, (s, d)
    kinds = {k: produced(k) - v for k, v in before_kinds.items()}
    assert kinds["codebook"] == 1 and kinds["item"] > 0 and kinds["pair"] > 0 and kinds["stats"] > 0
    assert sum(kinds.values()) >= delta[("index", "out")]  # the codebook is published before the flow
    assert REGISTRY.get_sample_value("driftrag_dataflow_running") == 0
    assert REGISTRY.get_sample_value("driftrag_embed_queue_depth") == 0  # every micro-batch flushed at the end


# ------------------------------------------------------------------------------------------------- Kafka


def test_lag_probe_on_a_real_consumer(kafka_settings):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    k = kafka_settings.kafka
    topic = k.topic("engagements")
    p = Producer(k.client())
    for _ in range(30):
        p.produce(topic, value=b"x", partition=1)
    p.flush(30)
    c = Consumer(k.client(**{"group.id": f"t-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 1, OFFSET_BEGINNING)])
    now = [0.0]
    probe = LagProbe(c, topic, every_s=3.0, clock=lambda: now[0])
    try:
        deadline = time.monotonic() + 30
        lags: dict[int, int] = {}
        while not lags and time.monotonic() < deadline:  # watermarks are known after the first fetch
            c.consume(1, 0.2)  # read one: its next offset is then 1
            lags = probe.measure({1: 1})
        assert lags == {1: 29}
        assert probe.poll({1: 10}) == {1: 20}  # due at first
        assert probe.poll({1: 30}) is None  # not again within every_s
        now[0] = 3.0
        assert probe.poll({1: 30}) == {1: 0}
    finally:
        c.close()


def test_kafka_job_reports_lag_watermark_health_and_readiness(kafka_settings, tmp_path):
    k = kafka_settings.kafka
    topics = {"engagements": k.topic("engagements"), "items": k.topic("items")}
    gen = GeneratorConfig(seed=11, events=3000, bad_fraction=0.02)
    # The watermark to expect: the largest event time of what the contract accepts.
    validator = Validator.from_settings(kafka_settings)
    valid = [validator.validate(RawMessage(topics[m.topic], 0, i, m.key, m.value))
             for i, m in enumerate(WorkloadGenerator(gen).messages())]
    want_wm = max(e.ts_ms for e in valid if type(e) in (Engagement, ContentEvent)) / 1000

    log = tmp_path / "job.log"
    env = {"DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers, "DRIFTRAG_KAFKA__TOPIC_PREFIX": k.topic_prefix,
           "DRIFTRAG_RUN__READY_MAX_LAG": "0"}
    job = start_job(["--no-clusters", "--metrics-port", "0", "--out", str(tmp_path / "out"),
                     "--progress-every", "30"], log, env)
    try:
        url = job_url(job, log)
        # Nothing produced yet: the lag of every partition is measured (0), so the job is ready on empty topics.
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready on empty topics",
                 job, log)
        assert produce_to_kafka(gen, k.client(), topics)["produced"] == len(valid)

        def caught_up():  # noqa: ANN202
            s = scrape(url)
            lag = s.get("driftrag_consumer_lag_messages", {})
            wm = s.get("driftrag_event_time_watermark_seconds", {}).get((), 0)
            return s if len(lag) == 6 and not any(lag.values()) and wm == pytest.approx(want_wm, abs=1) else None

        s = wait_for(caught_up, 120, "lag 0 on every partition and the input's watermark", job, log)
        lag = s["driftrag_consumer_lag_messages"]
        assert {dict(x)["topic"] for x in lag} == set(topics.values())
        assert sorted(int(dict(x)["partition"]) for x in lag) == [0, 0, 1, 1, 2, 2]
        assert s["driftrag_dataflow_running"][()] == 1
        assert s["driftrag_event_time_lag_seconds"][()] == pytest.approx(time.time() - want_wm, abs=60)
        steps = s["driftrag_step_records_total"]
        assert steps[(("direction", "in"), ("step", "validate"))] == len(valid)
        assert_bounded(s, set(topics.values()))
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "running", "mode": "kafka"}
        r = httpx.get(f"{url}/readyz", timeout=10)
        assert r.status_code == 200 and r.json()["consumer_lag"] == 0
        assert r.json()["event_time_watermark_ms"] == pytest.approx(want_wm * 1000, abs=1000)
    finally:
        stop_process(job)
    assert job.returncode == 0, log.read_text()[-3000:]


def test_changelog_follower_reports_its_lag_and_last_apply(kafka_settings):
    """`driftrag serve`'s follower: driftrag_changelog_lag_messages per partition reaches 0 once it applied the
    changelog (the same LagProbe as the job), the last-applied time is set, and every record applied is in the
    follower's delay histogram (record written -> applied)."""
    import numpy as np
    from confluent_kafka import Producer

    from index.live import LiveIndex
    from index.mutations import codebook_mutation, encode, item_mutation
    from index.service import ChangelogFollower

    k = kafka_settings.kafka
    topic = k.topic("index_mutations")
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(2, 8)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    mutations = [codebook_mutation(centroids, [["a"], ["b"]], version="t", model="test")]
    mutations += [item_mutation(f"i{n}", cluster=n % 2, distance=0.1, novel=False, text="x", ts_ms=n, ingest_ms=n,
                                vector=centroids[n % 2]) for n in range(40)]
    p = Producer(k.client())
    for m in mutations:
        key, value = encode(m)
        p.produce(topic, key=key, value=value)
    p.flush(30)
    before = time.time()
    delays_before = REGISTRY.get_sample_value("driftrag_index_changelog_delay_seconds_count") or 0.0
    follower = ChangelogFollower(LiveIndex(backend="cpu"), k.client(), topic).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lags = {p: REGISTRY.get_sample_value("driftrag_changelog_lag_messages", {"partition": str(p)})
                    for p in range(3)}
            if follower.caught_up.is_set() and all(v == 0 for v in lags.values()):
                break
            time.sleep(0.5)
        assert follower.error is None
        assert lags == {0: 0, 1: 0, 2: 0}, lags
        assert follower.applied == len(mutations)
        assert REGISTRY.get_sample_value("driftrag_index_last_applied_timestamp_seconds") >= before - 1
        delays = REGISTRY.get_sample_value("driftrag_index_changelog_delay_seconds_count") - delays_before
        assert delays == len(mutations)
    finally:
        follower.stop(snapshot=False)
