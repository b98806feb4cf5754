"""The Kafka source on a real broker: where a partition read from the beginning starts, and how soon."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.sources import KafkaRawSource, fetch_offset

pytestmark = pytest.mark.kafka


@pytest.fixture
def topic(kafka_settings):
    """A one-partition topic of this test holding 50 messages, values b"0".. b"49"."""
    k = kafka_settings.kafka
    name = k.topic_prefix + f"src-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(k.client())
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result(30)
    p = Producer(k.client())
    for i in range(50):
        p.produce(name, key=b"k", value=str(i).encode())
    assert p.flush(30) == 0
    return name


def drain(part, timeout_s: float = 30) -> list:
    """Every message of a non-tailing partition, until it reports its end."""
    out, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out
        time.sleep(0.005)
    raise AssertionError(f"the partition did not reach its end within {timeout_s}s ({len(out)} messages)")


def test_from_the_beginning_means_the_logs_start_also_after_retention_deleted_its_head(kafka_settings, topic):
    k = kafka_settings.kafka
    admin = AdminClient(k.client())
    for f in admin.delete_records([TopicPartition(topic, 0, 20)]).values():  # what retention does to old segments
        f.result(30)
    part = KafkaRawSource(k.client(), [topic], tail=False).build_part("read", f"0-{topic}", None)
    try:
        assert part.snapshot() == OFFSET_BEGINNING  # resume state stays logical until a message is read
        msgs = drain(part)
    finally:
        part.close()
    assert [m.offset for m in msgs] == list(range(20, 50))  # no error, nothing skipped, nothing twice
    assert [m.value for m in msgs] == [str(i).encode() for i in range(20, 50)]
    assert part.snapshot() == 50


def test_a_resumed_partition_reads_from_its_stored_offset(kafka_settings, topic):
    k = kafka_settings.kafka
    part = KafkaRawSource(k.client(), [topic], tail=False).build_part("read", f"0-{topic}", 45)
    try:
        assert [m.offset for m in drain(part)] == [45, 46, 47, 48, 49]
    finally:
        part.close()


def test_the_first_messages_come_without_waiting_for_an_offset_query(kafka_settings, topic):
    """A fresh consumer assigned the logical OFFSET_BEGINNING waits librdkafka's fixed 500 ms offset-query retry
    before its first fetch (its partition's leader is not known yet at assign); the source assigns offset 0
    instead. Best of three, so a busy machine does not fail it."""
    k = kafka_settings.kafka
    source = KafkaRawSource(k.client(), [topic], tail=False)
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        part = source.build_part("read", f"0-{topic}", None)
        try:
            while not part.next_batch():
                assert time.monotonic() - t0 < 30, "no message within 30 s"
                time.sleep(0.005)
            times.append(time.monotonic() - t0)
        finally:
            part.close()
    assert min(times) < 0.4, times


def test_a_configured_offset_reset_policy_is_kept():
    assert fetch_offset(OFFSET_BEGINNING, {"auto.offset.reset": "earliest"}) == 0
    assert fetch_offset(OFFSET_BEGINNING, {"auto.offset.reset": "smallest"}) == 0
    # Another policy: the logical offset as before (offset 0 out of range would then jump to the end).
    assert fetch_offset(OFFSET_BEGINNING, {"auto.offset.reset": "latest"}) == OFFSET_BEGINNING
    assert fetch_offset(OFFSET_BEGINNING, {}) == OFFSET_BEGINNING
    assert fetch_offset(7, {"auto.offset.reset": "earliest"}) == 7
