"""The query service's moving parts: follow the index-mutations changelog into a LiveIndex, snapshot it.

:class:`ChangelogFollower` reads every partition of the compacted changelog topic from the offsets the index
already holds (a restored snapshot's, or the beginning), applies each polled batch as one index version with the
offsets it reaches, and saves a snapshot now and then. Several replicas can follow the same topic: each builds
the same index. Readiness: the follower has caught up with the topic's end offsets as they were when it started.

Metrics: ``driftrag_changelog_lag_messages{partition}`` (messages of each changelog partition not applied yet,
measured every few seconds with :class:`streams.lag.LagProbe`, the stream job's helper too),
``driftrag_index_last_applied_timestamp_seconds`` (wall clock when the follower last applied a batch) and
``driftrag_index_changelog_delay_seconds`` (a changelog record's Kafka timestamp, set when the job wrote it, to
its mutation applied: the follower's part of ``driftrag_index_freshness_seconds``; the rest is the job's).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge, Histogram

from index.live import LiveIndex
from index.mutations import Mutation, MutationError, decode
from streams.lag import LagProbe

__all__ = ["ChangelogFollower", "LazyEncoder", "poll_batch"]

log = logging.getLogger(__name__)

# Labels: changelog partitions only (a bounded set: the topic's partition count).
CHANGELOG_LAG = Gauge("driftrag_changelog_lag_messages",
                      "Changelog messages not applied yet: high watermark minus next offset to read", ["partition"])
LAST_APPLIED = Gauge("driftrag_index_last_applied_timestamp_seconds",
                     "Wall clock (epoch s) when the changelog follower last applied a mutation batch (0: never)")

# The freshness histogram's buckets (index/live.py), so the two read side by side.
CHANGELOG_DELAY = Histogram("driftrag_index_changelog_delay_seconds",
                            "Wall-clock time from a changelog record's Kafka timestamp (the job wrote it) to its "
                            "mutation being searchable", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                                                  60, 300))


def poll_batch(consumer: Any, n: int, timeout_s: float) -> list[Any]:
    """Up to ``n`` messages: what has arrived, else the first one within ``timeout_s`` and what came with it.

    ``Consumer.consume(n, timeout)`` returns when it has ``n`` messages or the timeout has passed, so a follower
    asking for a large batch with a wait holds every record of a slow stream for the whole timeout (measured on a
    local broker, one record every 5 ms: p50 31 ms from written to returned with ``consume(5000, 0.05)``, 7 ms
    this way). Only a call that asks for one message may wait.

    >>> class Topic:  # a consumer that, like librdkafka, waits for n messages or the timeout
    ...     def __init__(self, queued): self.queued, self.calls = list(queued), []
    ...     def consume(self, n, timeout):
    ...         self.calls.append((n, timeout))
    ...         got, self.queued = self.queued[:n], self.queued[n:]
    ...         return got
    >>> t = Topic(["a", "b"])
    >>> poll_batch(t, 5000, 0.05), t.calls
    (['a', 'b'], [(5000, 0)])
    >>> t = Topic([])
    >>> poll_batch(t, 5000, 0.05), t.calls
    ([], [(5000, 0), (1, 0.05)])
    """
    msgs = consumer.consume(n, 0)
    if msgs or n < 1:
        return msgs
    msgs = consumer.consume(1, timeout_s)
    if msgs and n > 1:
        msgs += consumer.consume(n - 1, 0)
    return msgs


class LazyEncoder:
    """``texts -> vectors`` that builds its embedder on first use (the model costs seconds and memory, and a
    replica that never gets a text query never pays it)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._embedder: Any = None
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> Any:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._factory()
            return self._embedder.encode(texts)


class ChangelogFollower:
    """Apply the changelog topic to ``live`` in a background thread; optional periodic snapshots."""

    def __init__(self, live: LiveIndex, client_config: dict[str, Any], topic: str, *,
                 snapshot_dir: Path | None = None, snapshot_interval_s: float = 60.0, batch_size: int = 5000,
                 poll_timeout_s: float = 0.05, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.live = live
        self.client_config = dict(client_config)
        self.topic = topic
        self.snapshot_dir = snapshot_dir
        self.snapshot_interval_s = snapshot_interval_s
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.on_error = on_error
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self.applied = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets: dict[int, int] = {}
        self._snapshotted_version = live.version

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> ChangelogFollower:
        self._thread = threading.Thread(target=self._run, name="changelog-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, snapshot: bool = True, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if snapshot and self.snapshot_dir is not None and self.live.version != self._snapshotted_version:
            self._snapshot()

    def readiness(self) -> tuple[bool, str]:
        if self.error is not None:
            return False, f"changelog follower stopped: {self.error}"
        if not self.caught_up.is_set():
            return False, f"catching up on {self.topic} (applied {self.applied:,} mutations so far)"
        return True, "ok"

    # -- the loop ------------------------------------------------------------------------------------------
    def _partitions(self) -> list[int]:
        md = AdminClient(self.client_config).list_topics(self.topic, timeout=30).topics.get(self.topic)
        if md is None or md.error is not None:
            raise FileNotFoundError(f"changelog topic {self.topic!r} not found: create it with "
                                    "`driftrag topics create`")
        return sorted(md.partitions)

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as e:  # noqa: BLE001 - reported through readiness and on_error
            self.error = e
            log.exception("changelog follower stopped")
            if self.on_error is not None:
                self.on_error(e)

    def _follow(self) -> None:
        parts = self._partitions()
        consumer = Consumer({**self.client_config, "group.id": f"driftrag-index-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "enable.partition.eof": False,
                             "fetch.wait.max.ms": 10})
        held = self.live.offsets.get(self.topic, {})
        consumer.assign([TopicPartition(self.topic, p, held.get(p, OFFSET_BEGINNING)) for p in parts])
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)
            self._targets[p] = high
        log.info("following %s from %s (end offsets at start: %s)", self.topic, held or "the beginning",
                 self._targets)
        positions = {p: held.get(p, 0) for p in parts}
        self._check_caught_up(positions)
        probe = LagProbe(consumer, self.topic)
        last_snapshot = time.monotonic()
        try:
            while not self._stop.is_set():
                msgs = poll_batch(consumer, self.batch_size, self.poll_timeout_s)
                batch: list[Mutation] = []
                reached: dict[int, int] = {}
                written: list[int] = []  # the records' Kafka timestamps (ms)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise RuntimeError(f"error consuming {self.topic}: {err}")
                    reached[m.partition()] = m.offset() + 1
                    ts_type, ts_ms = m.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE:
                        written.append(ts_ms)
                    try:
                        batch.append(decode(m.key(), m.value()))
                    except MutationError as e:
                        self.live.reject(m.key(), e)
                if reached:
                    self.live.apply(batch, offsets={self.topic: reached})
                    now_ms = time.time() * 1000
                    for ts_ms in written:
                        CHANGELOG_DELAY.observe(max(0.0, now_ms - ts_ms) / 1000)
                    self.applied += len(batch)
                    LAST_APPLIED.set(time.time())
                    positions.update(reached)
                    self._check_caught_up(positions)
                elif not self.caught_up.is_set():
                    self._advance(consumer, positions)
                    self._check_caught_up(positions)
                if probe.due():  # every few seconds
                    self._advance(consumer, positions)
                    for p, lag in probe.poll(positions).items():
                        CHANGELOG_LAG.labels(str(p)).set(lag)
                if self.snapshot_dir is not None and time.monotonic() - last_snapshot >= self.snapshot_interval_s:
                    if self.live.version != self._snapshotted_version:
                        self._snapshot()
                    last_snapshot = time.monotonic()
        finally:
            consumer.close()

    def _advance(self, consumer: Consumer, positions: dict[int, int]) -> None:
        """Compaction can leave the end offset past the last record: ask the consumer where it really is."""
        for tp in consumer.position([TopicPartition(self.topic, p) for p in positions]):
            if tp.offset >= 0:
                positions[tp.partition] = max(positions[tp.partition], tp.offset)

    def _check_caught_up(self, positions: dict[int, int]) -> None:
        if not self.caught_up.is_set() and all(positions.get(p, 0) >= t for p, t in self._targets.items()):
            log.info("caught up with %s: %d mutations applied, index version %d", self.topic, self.applied,
                     self.live.version)
            self.caught_up.set()

    def _snapshot(self) -> None:
        version = self.live.version
        path = self.live.save_snapshot(self.snapshot_dir)
        self._snapshotted_version = version
        log.info("index snapshot %s (version %d)", path, version)
