"""Integration on a real broker: generator -> Kafka -> `driftrag run` -> events out + dead-letter topic.

The issue's bar: 20,000 generator events with 5% malformed ones of at least 8 kinds; every good event arrives
exactly once downstream, every bad one is in `dead-letter` with its reason and source offset, and the job keeps
running.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streams.contract import RawMessage, Validator, decode_original
from streams.generator import BAD_KINDS, GeneratorConfig, WorkloadGenerator, produce_to_kafka
from tests.conftest import read_records

pytestmark = pytest.mark.kafka


def read_topic(settings, topic: str) -> dict[tuple[int, int], tuple[bytes | None, bytes | None]]:
    """Every message of a topic, by (partition, offset)."""
    return {(p, o): (k, v) for p, o, k, v in read_records(settings.kafka, topic)}


def start_job(settings, out: Path, *extra: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:  # noqa: ANN001
    env = {
        **os.environ,
        "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "DRIFTRAG_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--out", str(out), "--progress-every", "2", *extra],
        env=env, stdout=stdout, stderr=stderr,
    )


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) while waiting for {what}: "
                                 f"{proc.stderr.read().decode()[-3000:] if proc.stderr else '(see its log)'}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_good_exactly_once_bad_to_dead_letter_job_keeps_running(kafka_settings, tmp_path):
    gen = GeneratorConfig(seed=5, events=20_000, bad_fraction=0.05)
    expected = list(WorkloadGenerator(gen).messages())
    good = [m for m in expected if m.bad_kind is None]
    bad = [m for m in expected if m.bad_kind is not None]
    assert len([m for m in expected if m.topic == "engagements"]) == 20_000
    assert 0.04 <= len(bad) / 20_000 <= 0.06
    assert len({m.bad_kind for m in bad}) >= 8

    k = kafka_settings.kafka
    topics = {"engagements": k.topic("engagements"), "items": k.topic("items")}
    out = tmp_path / "out"
    job = start_job(kafka_settings, out, "--no-clusters")
    try:
        counts = produce_to_kafka(gen, k.client(), topics)
        assert counts["produced"] == len(expected)

        events_file = out / "events.jsonl"
        wait_for(lambda: count_lines(events_file) >= len(good), 180, "all good events downstream", job)
        dl_topic = k.topic("dead_letter")
        wait_for(lambda: len(read_topic(kafka_settings, dl_topic)) >= len(bad), 60, "all dead letters", job)
        time.sleep(2)  # anything extra (duplicates) would show up now
        assert job.poll() is None, "the job must keep running after bad input"
    finally:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()

    # Every good event exactly once: engagements by event_id, content events by item_id.
    got = [orjson.loads(x) for x in events_file.read_bytes().splitlines()]
    got_ids = collections.Counter(e["event_id"] if e["type"] == "engagement" else "item:" + e["item_id"] for e in got)
    want_ids = collections.Counter(
        orjson.loads(m.value)["event_id"] if m.topic == "engagements" else "item:" + orjson.loads(m.value)["item_id"]
        for m in good
    )
    assert got_ids == want_ids
    assert max(got_ids.values()) == 1

    # Every bad one in dead-letter, once, with its reason and its source position holding the original bytes.
    source = {name: read_topic(kafka_settings, topic) for name, topic in topics.items()}
    by_name = {topic: name for name, topic in topics.items()}
    dead = [orjson.loads(v) for _, v in read_topic(kafka_settings, dl_topic).values()]
    assert len(dead) == len(bad)
    positions = collections.Counter(
        (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) for d in dead)
    assert max(positions.values()) == 1
    kinds_by_value = {m.value: m.bad_kind for m in bad}
    reasons = collections.Counter()
    for d in dead:
        src = d["source"]
        key, value = source[by_name[src["topic"]]][(src["partition"], src["offset"])]
        assert decode_original(d) == value
        assert d["reason"] == BAD_KINDS[kinds_by_value[value]]
        # Cross-check with the validator on the original bytes.
        assert Validator.from_settings(kafka_settings).validate(
            RawMessage(src["topic"], src["partition"], src["offset"], key, value)).reason == d["reason"]
        reasons[d["reason"]] += 1
    assert len(reasons) >= 6, reasons


def test_job_bootstraps_its_codebook_from_the_items_topic(kafka_settings, tmp_path):
    """No codebook yet: the Kafka job clusters the content already on `items`, saves the codebook, and goes on."""
    from index.codebooks import CodebookStore

    gen = GeneratorConfig(seed=9, events=6_000)
    k = kafka_settings.kafka
    produce_to_kafka(gen, k.client(), {"engagements": k.topic("engagements"), "items": k.topic("items")})
    codebooks, out = tmp_path / "codebooks", tmp_path / "out"
    job = start_job(kafka_settings, out, "--no-tail", "--codebook-dir", str(codebooks), "--backend", "onnx")
    job.wait(300)
    stderr = job.stderr.read().decode()
    assert job.returncode == 0, stderr[-3000:]
    assert "bootstrapping 16 clusters" in stderr
    import json

    summary = json.loads(job.stdout.read().decode().strip().splitlines()[-1])
    assert summary["codebook"] == CodebookStore(codebooks).current_version()
    assert summary["engagements_clustered"] == summary["engagements"] == 6_000


def test_recovery_resumes_from_stored_offsets(kafka_settings, tmp_path):
    """With --recovery-dir the Kafka offsets live in Bytewax's recovery store: a restart reads only what is new,
    and the summary and the --out files describe the whole job, each message once."""
    import json

    k = kafka_settings.kafka
    topics = {"engagements": k.topic("engagements"), "items": k.topic("items")}
    first = GeneratorConfig(seed=1, events=2_000)
    produce_to_kafka(first, k.client(), topics)
    recovery = tmp_path / "recovery"

    def run_once() -> dict:
        job = start_job(kafka_settings, tmp_path / "out", "--no-tail", "--no-clusters", "-r", str(recovery),
                        "-s", "1")
        job.wait(120)
        assert job.returncode == 0, job.stderr.read().decode()[-3000:]
        return json.loads(job.stdout.read().decode().strip().splitlines()[-1])

    n_first = len(list(WorkloadGenerator(first).messages()))
    assert run_once()["messages"] == n_first
    assert run_once()["messages"] == n_first  # nothing new: nothing re-read, the job's history unchanged
    assert count_lines(tmp_path / "out" / "events.jsonl") == n_first
    second = GeneratorConfig(seed=2, events=500)
    produce_to_kafka(second, k.client(), topics)
    n_second = len(list(WorkloadGenerator(second).messages()))
    assert run_once()["messages"] == n_first + n_second
    assert count_lines(tmp_path / "out" / "events.jsonl") == n_first + n_second  # what is new, once


def test_hostile_messages_on_the_broker_cost_a_dead_letter_each_and_nothing_else(kafka_settings, tmp_path):
    """The two messages that stopped or emptied the job, produced to the real topics among good ones: a 200 KB
    engagement of control bytes (its escaped dead letter was 1.2 MB: the producer refused it, the job exited and
    crash-looped) and an engagement and an item dated 2100 (every decayed count aged to nothing)."""
    from confluent_kafka import Producer

    k = kafka_settings.kafka
    gen = GeneratorConfig(seed=6, events=3_000)
    produce_to_kafka(gen, k.client(), {"engagements": k.topic("engagements"), "items": k.topic("items")})
    good = len(list(WorkloadGenerator(gen).messages()))
    p = Producer(k.client(**{"message.max.bytes": 1_000_000}))
    hostile = bytes(range(1, 32)) * (200_000 // 31)
    p.produce(k.topic("engagements"), key=b"u-hostile", value=hostile)
    e2100 = {"user_id": "u1", "item_id": "it000001", "action": "like", "ts": "2100-01-01T00:00:00Z"}
    p.produce(k.topic("engagements"), key=b"u1", value=orjson.dumps(e2100))
    p.produce(k.topic("items"), key=b"future", value=orjson.dumps(
        {"item_id": "future", "text": "from the future", "ts": "2100-01-01T00:00:00Z"}))
    assert p.flush(30) == 0
    out = tmp_path / "out"
    job = start_job(kafka_settings, out, "--no-clusters", "--no-tail")
    stdout, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr.decode()[-3000:]
    summary = orjson.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["messages"] == good + 3
    assert summary["dead_letter_by_reason"] == {"oversize_message": 1, "future_event_time": 2}
    dead = [orjson.loads(v) for _, v in read_topic(kafka_settings, k.topic("dead_letter")).values()]
    by_reason = collections.Counter(d["reason"] for d in dead)
    assert by_reason == {"oversize_message": 1, "future_event_time": 2}
    (big,) = [d for d in dead if d["reason"] == "oversize_message"]
    assert big["value_bytes"] == len(hostile) and hostile.startswith(decode_original(big))


def test_a_topic_deleted_under_the_running_job_stops_it_with_one_line(kafka_settings, tmp_path):
    """A consumer with assigned partitions gets no error when its topic is deleted: the job waited forever."""
    from confluent_kafka.admin import AdminClient

    k = kafka_settings.kafka
    gen = GeneratorConfig(seed=2, events=500)
    n = len(list(WorkloadGenerator(gen).messages()))
    produce_to_kafka(gen, k.client(), {"engagements": k.topic("engagements"), "items": k.topic("items")})
    out = tmp_path / "out"
    job = start_job(kafka_settings, out, "--no-clusters")
    try:
        wait_for(lambda: count_lines(out / "events.jsonl") >= n, 120, "the backlog read", job)
        admin = AdminClient(k.client())
        for f in admin.delete_topics([k.topic("engagements")]).values():
            f.result(30)
        rc = job.wait(60)
    finally:
        if job.poll() is None:
            job.kill()
    err = job.stderr.read().decode()
    assert rc == 5, err[-3000:]
    line = [x for x in err.splitlines() if x.startswith("driftrag run: stopped:")]
    assert line and k.topic("engagements") in line[0] and "Traceback" not in err


@pytest.mark.slow
def test_a_broker_stopped_for_30s_under_load_loses_and_doubles_nothing(tmp_path):
    """A broker of its own (the shared one stays up), stopped for 30 s while the job reads a backlog with
    malformed messages in it, then restarted with more to read: every good event once downstream, every bad one
    once in the dead-letter topic, and the job still running."""
    from streams.broker import LocalKafka
    from streams.settings import BrokerSettings, KafkaSettings, Settings
    from streams.topics import ensure_topics
    from tests.conftest import free_ports

    port, cport = free_ports(2)
    broker = LocalKafka(BrokerSettings(port=port, controller_port=cport, cache_dir=Settings().broker.cache_dir,
                                       data_dir=tmp_path / "kafka", heap="512m"))
    broker.start(progress=lambda m: None)
    job = None
    try:
        settings = Settings(kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="outage."))
        k = settings.kafka
        ensure_topics(k)
        topics = {"engagements": k.topic("engagements"), "items": k.topic("items")}
        first, second = GeneratorConfig(seed=8, events=15_000, bad_fraction=0.02), \
            GeneratorConfig(seed=9, events=5_000, bad_fraction=0.02)
        msgs = list(WorkloadGenerator(first).messages()) + list(WorkloadGenerator(second).messages())
        good = [m for m in msgs if m.bad_kind is None]
        produce_to_kafka(first, k.client(), topics)
        out = tmp_path / "out"
        # Output to a file, not a pipe: 30 s of the clients' reconnect messages fill a pipe nobody reads, and a
        # job blocked writing to stderr looks like a job that stopped reading.
        log = (tmp_path / "job.log").open("wb")
        job = start_job(settings, out, "--no-clusters", "--progress-every", "1", stdout=log, stderr=log)
        wait_for(lambda: count_lines(out / "events.jsonl") >= 1_000, 120, "the job reading", job)
        assert broker.stop() is True  # mid-backlog
        time.sleep(30)
        assert job.poll() is None, "the job must ride out a broker outage"
        broker.start(progress=lambda m: None)
        produce_to_kafka(second, k.client(), topics)
        wait_for(lambda: count_lines(out / "events.jsonl") >= len(good), 240, "every good event", job)
        dl_topic = k.topic("dead_letter")
        n_bad = len(msgs) - len(good)
        wait_for(lambda: len(read_topic(settings, dl_topic)) >= n_bad, 120, "every dead letter", job)
        time.sleep(2)  # anything doubled would show up now
        assert job.poll() is None
        dead = [orjson.loads(v) for _, v in read_topic(settings, dl_topic).values()]
    finally:
        if job is not None and job.poll() is None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(30)
            except subprocess.TimeoutExpired:
                job.kill()
        broker.stop()
    got = collections.Counter(
        e.get("event_id") or "item:" + e["item_id"] + ":" + str(e["ts_ms"])
        for e in map(orjson.loads, (out / "events.jsonl").read_bytes().splitlines()))
    want = collections.Counter(
        orjson.loads(m.value).get("event_id") if m.topic == "engagements"
        else "item:" + orjson.loads(m.value)["item_id"] + ":" + str(Validator().validate(
            RawMessage("items", 0, 0, None, m.value)).ts_ms) for m in good)
    assert got == want  # as multisets: the two workloads share ids, each message is there as often as it was sent
    assert len(dead) == n_bad
    assert len({(d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) for d in dead}) == n_bad
