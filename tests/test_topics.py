"""Idempotent topic provisioning on a real broker."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams.settings import KafkaSettings, TopicSpec
from streams.topics import delete_topics, ensure_topics

pytestmark = pytest.mark.kafka


def describe(bootstrap: str, topic: str) -> tuple[int, dict[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    res = ConfigResource(ResourceType.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result()
    return parts, {k: cfg[k].value for k in ("retention.ms", "cleanup.policy")}


def test_ensure_topics_is_idempotent_and_follows_config(kafka_bootstrap):
    prefix = f"p{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    kafka.topics["changelog"] = TopicSpec(name="changelog", partitions=2, retention_ms=-1, cleanup_policy="compact")
    first = ensure_topics(kafka)
    names = ("engagements", "items", "drift-alerts", "dead-letter", "cadence", "index-mutations", "changelog")
    assert first == {prefix + n: "created" for n in names}
    assert ensure_topics(kafka) == {name: "exists" for name in first}
    assert describe(kafka_bootstrap, prefix + "engagements") == (3, {"retention.ms": str(7 * 86_400_000),
                                                                     "cleanup.policy": "delete"})
    assert describe(kafka_bootstrap, prefix + "changelog") == (2, {"retention.ms": "-1", "cleanup.policy": "compact"})
    assert describe(kafka_bootstrap, prefix + "index-mutations") == (3, {"retention.ms": "-1",
                                                                         "cleanup.policy": "compact"})

    kafka.topics["engagements"] = kafka.topics["engagements"].model_copy(update={"retention_ms": 3_600_000})
    assert ensure_topics(kafka, ["engagements"]) == {prefix + "engagements": "updated"}
    assert describe(kafka_bootstrap, prefix + "engagements")[1]["retention.ms"] == "3600000"
    kafka.topics["changelog"] = kafka.topics["changelog"].model_copy(update={"cleanup_policy": "compact,delete"})
    assert ensure_topics(kafka, ["changelog"]) == {prefix + "changelog": "updated"}
    # The same policy written the other way round is no change.
    kafka.topics["changelog"] = kafka.topics["changelog"].model_copy(update={"cleanup_policy": "delete,compact"})
    assert ensure_topics(kafka, ["changelog"]) == {prefix + "changelog": "exists"}

    delete_topics(kafka, first)
    assert not set(first) & set(AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics)
    delete_topics(kafka, first)  # already gone: fine


def test_topics_command(kafka_bootstrap, capsys):
    from streams.cli import main

    prefix = f"c{uuid.uuid4().hex[:6]}."
    assert main(["topics", "create", "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", prefix]) == 0
    assert set(json.loads(capsys.readouterr().out).values()) == {"created"}
    assert main(["topics", "list", "--bootstrap-servers", kafka_bootstrap]) == 0
    assert prefix + "dead-letter" in capsys.readouterr().out
