"""Shared fixtures. Tests marked ``kafka`` get a real Apache Kafka broker that this session starts itself
(or ``DRIFTRAG_TEST_BOOTSTRAP=host:port`` to use yours). A broker that cannot start fails those tests: they are
never skipped silently."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import uuid

import pytest

from streams.settings import BrokerSettings, KafkaSettings, Settings

log = logging.getLogger(__name__)

KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_settings"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (all sockets held at once, so no port is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # A test that needs the broker is a kafka test even if its author forgot the marker: `-m "not kafka"`
    # must deselect it rather than start a broker.
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    external = os.environ.get("DRIFTRAG_TEST_BOOTSTRAP")
    if external:
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": external}).list_topics(timeout=15)
        except Exception as e:  # noqa: BLE001 - any failure: say which broker and why, then fail (not skip)
            pytest.fail(f"DRIFTRAG_TEST_BOOTSTRAP={external} does not answer a metadata request: {e}")
        yield external
        return
    from streams.broker import LocalKafka

    port, controller_port = free_ports(2)
    # The real jar cache (default ~/.cache/driftrag, or DRIFTRAG_BROKER__CACHE_DIR): fetched once, reused.
    broker = LocalKafka(BrokerSettings(port=port, controller_port=controller_port,
                                       cache_dir=Settings().broker.cache_dir,
                                       data_dir=tmp_path_factory.mktemp("kafka"), heap="512m"))
    try:
        broker.start(progress=lambda m: print(f"[kafka fixture] {m}"))
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap):
    """Settings on the test broker with a topic prefix of its own, every default topic created."""
    from confluent_kafka.admin import AdminClient

    from streams.topics import delete_topics, ensure_topics

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    yield Settings(kafka=kafka)
    # Drop every topic of this test (also ones it added itself): keeps a shared or long-lived broker clean.
    try:
        names = [n for n in AdminClient(kafka.client()).list_topics(timeout=10).topics
                 if n.startswith(kafka.topic_prefix)]
        delete_topics(kafka, names, timeout_s=10)
    except Exception as e:  # noqa: BLE001 - cleanup only; the test's result stands
        log.warning("could not delete test topics with prefix %s: %s", kafka.topic_prefix, e)


def read_records(kafka: KafkaSettings, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every (partition, offset, key, value) of a topic, read from the start to its end."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka.admin import AdminClient

    md = AdminClient(kafka.client()).list_topics(topic, timeout=10)
    tps = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
    c = Consumer(kafka.client(**{"group.id": f"test-{uuid.uuid4().hex[:6]}", "enable.partition.eof": True}))
    c.assign(tps)
    out, eof = [], 0
    try:
        while eof < len(tps):
            for m in c.consume(500, 1.0):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    eof += 1
                    continue
                out.append((m.partition(), m.offset(), m.key(), m.value()))
    finally:
        c.close()
    return out


def read_topic(kafka: KafkaSettings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic, read from the start to its end."""
    return [(k, v) for _, _, k, v in read_records(kafka, topic)]


def stop_process(proc: subprocess.Popen | list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM (what ``docker stop`` and Kubernetes send; the job stops cleanly on it as on Ctrl-C), then kill if
    it does not end in ``timeout`` seconds. SIGTERM rather than SIGINT: a test run started in the background by
    a shell has SIGINT ignored, and its children inherit that. Several processes (one Bytewax cluster) are
    signalled together: each one's clean stop waits for the others."""
    procs = proc if isinstance(proc, list) else [proc]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
