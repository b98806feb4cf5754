"""Consumer lag: how many messages of a partition a consumer has not read yet.

One implementation for every consumer in driftrag: the stream job's Kafka source (``streams/sources.py``,
metric ``driftrag_consumer_lag_messages``) and the query service's changelog follower (``index/service.py``,
``driftrag_changelog_lag_messages``).

Lag of a partition = its high watermark (the offset the next produced message will get) minus the offset the
consumer reads next. Watermarks come from ``Consumer.get_watermark_offsets(cached=True)``: the values librdkafka
keeps from its last fetch response, read without a broker round trip, so measuring never blocks the thread that
consumes. A consumer fetches continually (``fetch.wait.max.ms``) while it has room to prefetch, so the cached
high watermark is as fresh as the last fetch; before the first fetch it is unknown and no lag is reported.

>>> partition_lag(next_offset=90, low=0, high=100)
10
>>> partition_lag(next_offset=-2, low=40, high=100)  # OFFSET_BEGINNING: everything still in the log
60
>>> partition_lag(next_offset=5, low=40, high=100)  # offsets below the low watermark were deleted
60
>>> partition_lag(next_offset=120, low=0, high=100), partition_lag(next_offset=0, low=-1001, high=-1001)
(0, None)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

__all__ = ["LAG_REFRESH_S", "LagProbe", "partition_lag"]

# Seconds between two lag measurements of one consumer (each reads every partition it was asked about).
LAG_REFRESH_S = 3.0


def partition_lag(next_offset: int, low: int, high: int) -> int | None:
    """Messages from ``next_offset`` (the consumer's next read) to the high watermark ``high``; None when the
    watermarks are not known yet (librdkafka's invalid offset, < 0).

    Cases: a logical ``next_offset`` (``OFFSET_BEGINNING`` or another negative value but ``OFFSET_END``) reads
    from the low watermark; ``OFFSET_END`` has nothing to read (0); an offset below the low watermark (deleted by
    retention or compaction) counts from the low watermark when it is known; a consumer past ``high`` (a topic
    recreated under it) has lag 0, never a negative one.
    """
    if high < 0:
        return None
    if next_offset == OFFSET_END:
        return 0
    start = next_offset
    if low >= 0:
        start = max(start, low)
    elif start < 0:
        start = 0
    return max(0, high - start)


class LagProbe:
    """Measure a consumer's lag on some partitions of ``topic`` at most every ``every_s`` seconds.

    ``poll(positions)`` is cheap to call on every consume loop: it returns None until a measurement is due, then
    ``{partition: lag}`` for those partitions whose watermarks are known. ``positions`` maps a partition to the
    offset the caller reads next (logical offsets allowed, see :func:`partition_lag`).
    """

    def __init__(self, consumer: Any, topic: str, *, every_s: float = LAG_REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.consumer = consumer
        self.topic = topic
        self.every_s = every_s
        self._clock = clock
        self._next_at = 0.0  # the first poll measures

    def due(self) -> bool:
        """Whether the next :meth:`poll` measures."""
        return self._clock() >= self._next_at

    def poll(self, positions: Mapping[int, int]) -> dict[int, int] | None:
        """``{partition: lag}`` when a measurement is due (partitions with unknown watermarks left out), else
        None."""
        now = self._clock()
        if now < self._next_at:
            return None
        self._next_at = now + self.every_s
        return self.measure(positions)

    def measure(self, positions: Mapping[int, int]) -> dict[int, int]:
        """Measure now, whatever the schedule."""
        lags: dict[int, int] = {}
        for partition, next_offset in positions.items():
            try:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
            except (KafkaException, RuntimeError):  # not assigned (yet), or the consumer is closed
                continue
            lag = partition_lag(next_offset, low, high)
            if lag is not None:
                lags[partition] = lag
        return lags

