"""Replaying files and streaming the same events through a real Kafka broker give the same successors and the
same drift alerts (issue: offline replay). The Kafka job is the real `driftrag run` process reading one-partition
topics (a Kafka topic orders only within a partition; the files' order is the event-time order) and starting
with its embedding cache warm for the catalogue (`--warm-cache`), as a restarted deployment would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.cli import main
from streams.generator import GeneratorConfig, write_files
from streams.settings import KafkaSettings, TopicSpec
from streams.topics import ensure_topics
from tests.conftest import read_topic, stop_process

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PROGRESS = re.compile(r"\] \d+s: ([\d,]+) messages")


def _key(line: bytes, field: str) -> bytes | None:
    """The contract's message key (user_id / item_id) where the line has one: a user's events share a partition."""
    try:
        v = orjson.loads(line).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return v.encode() if isinstance(v, str) else None


def _produce(kafka: KafkaSettings, topic: str, path: Path) -> int:
    p = Producer(kafka.client(**{"enable.idempotence": True, "linger.ms": 20}))
    field = "user_id" if topic == "engagements" else "item_id"
    n = 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        while True:
            try:
                p.produce(kafka.topic(topic), key=_key(line, field), value=line)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    assert p.flush(60) == 0
    return n


def _messages_seen(log: Path) -> int:
    found = PROGRESS.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1].replace(",", "")) if found else 0


def _wait_for(proc: subprocess.Popen, log: Path, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if _messages_seen(log) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"the job did not read {n:,} messages in {timeout}s:\n{log.read_text()[-3000:]}")


def _end_offsets(kafka: KafkaSettings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    parts = AdminClient(kafka.client()).list_topics(topic, timeout=10).topics[topic].partitions
    c = Consumer(kafka.client(**{"group.id": "test-offsets"}))
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _wait_until_quiet(kafka: KafkaSettings, proc: subprocess.Popen, log: Path, quiet_s: float = 3.0,
                      timeout: float = 180) -> None:
    """Until the job's changelog stops growing for ``quiet_s``: every message read has been through the flow."""
    topic = kafka.topic("index_mutations")
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        n = _end_offsets(kafka, topic)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError(f"{topic} kept growing for {timeout}s")


def _successors(out: Path) -> dict[tuple[int, int], dict[int, float]]:
    return {tuple(p["pair"]): {s["cluster"]: s["count"] for s in p["successors"]}
            for p in json.loads((out / "successors.json").read_text())}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replayed")
    data, codebooks = tmp / "data", tmp / "codebooks"
    write_files(GeneratorConfig(seed=7, events=60_000, bad_fraction=0.01), data)
    events, items = data / "engagements.jsonl", data / "items.jsonl"
    assert main(["clusters", "build", "--items", str(items), "--out", str(codebooks)]) == 0
    replay_out = tmp / "replay"
    assert main(["replay", "--events", str(events), "--items", str(items), "--out", str(replay_out),
                 "--codebook-dir", str(codebooks), "--progress-every", "60"]) == 0
    return events, items, codebooks, replay_out


@pytest.mark.parametrize("partitions", [1, 3])
def test_replay_and_kafka_give_the_same_successors_and_alerts(kafka_bootstrap, tmp_path, replayed, partitions):
    """One partition per topic: the same successors and the same alerts. Three (the default; each user's events
    in one partition, in order): the same successors; alerts are not compared, because the partitions interleave
    differently in time and an hour can be scored before a slower partition's events of that hour arrived."""
    events, items, codebooks, replay_out = replayed
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:8]}.")
    kafka = kafka.model_copy(update={"topics": {
        **kafka.topics, "engagements": TopicSpec(name="engagements", partitions=partitions),
        "items": TopicSpec(name="items", partitions=partitions)}})
    ensure_topics(kafka)
    env = {**os.environ, "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DRIFTRAG_KAFKA__TOPIC_PREFIX": kafka.topic_prefix}
    kafka_out, log = tmp_path / "kafka", tmp_path / "job.log"
    # The catalogue first, as a platform publishes it; the job takes it in before the engagements arrive.
    n_items = _produce(kafka, "items", items)
    with log.open("ab") as f:
        job = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "--codebook-dir", str(codebooks), "--out", str(kafka_out),
             "--no-api", "--warm-cache", str(items), "--warm-cache", str(events), "--progress-every", "0.5"],
            env=env, stdout=f, stderr=f)
    try:
        _wait_for(job, log, n_items, timeout=240)
        n_events = _produce(kafka, "engagements", events)
        _wait_for(job, log, n_items + n_events, timeout=240)
        _wait_until_quiet(kafka, job, log)  # what was read has left the flow; then a clean Ctrl-C stop
    finally:
        stop_process(job)
    assert job.returncode == 0, log.read_text()[-3000:]

    ours, theirs = _successors(replay_out), _successors(kafka_out)
    assert len(ours) > 100 and set(ours) == set(theirs)
    for pair, counts in ours.items():
        assert set(counts) == set(theirs[pair]), pair
        for c, v in counts.items():
            assert abs(v - theirs[pair][c]) <= 0.011, (pair, c, v, theirs[pair][c])  # counts are rounded to 0.01

    if partitions > 1:
        return
    replayed_alerts = [orjson.loads(x) for x in (replay_out / "alerts.jsonl").read_bytes().splitlines()]
    streamed = [orjson.loads(v) for _, v in read_topic(kafka, kafka.topic("drift_alerts"))]
    assert len(replayed_alerts) >= 5, "the scenario plants drifts: the replay must alert"

    def key(a: dict) -> tuple:
        return a["alert_id"], a["severity"], a["kind"], a["cluster"], round(a["score"], 6), a["window"]["end"]

    assert sorted(map(key, streamed)) == sorted(map(key, replayed_alerts))
