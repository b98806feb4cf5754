"""Shared fixtures. Tests marked ``kafka`` get a real Apache Kafka broker that this session starts itself
(or ``DRIFTRAG_TEST_BOOTSTRAP=host:port`` to use yours). A broker that cannot start fails those tests: they are
never skipped silently."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from streams.settings import BrokerSettings, KafkaSettings, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    external = os.environ.get("DRIFTRAG_TEST_BOOTSTRAP")
    if external:
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": external}).list_topics(timeout=15)  # fails loudly if it doesn't answer
        yield external
        return
    from streams.broker import LocalKafka

    broker = LocalKafka(BrokerSettings(port=free_port(), controller_port=free_port(),
                                       data_dir=tmp_path_factory.mktemp("kafka"), heap="512m"))
    broker.start(progress=lambda m: print(f"[kafka fixture] {m}"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap) -> Settings:
    """Settings on the test broker with a topic prefix of its own, every default topic created."""
    from streams.topics import ensure_topics

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    return Settings(kafka=kafka)
