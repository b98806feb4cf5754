"""Where the dataflow's results go: Kafka topics, JSONL files, or in-process counters.

Sinks never lose data silently: a Kafka delivery failure raises after the batch is flushed, so the dataflow
stops and Bytewax recovery replays from the last snapshot instead of dropping a message.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from confluent_kafka import Producer

log = logging.getLogger(__name__)


class KeyedValue(NamedTuple):
    """What a Kafka sink writes: ``topic`` None means the sink's default topic."""

    key: bytes | None
    value: bytes | None
    topic: str | None = None


class _ProducerPartition(StatelessSinkPartition[KeyedValue]):
    def __init__(self, config: dict, topic: str | None) -> None:
        self._producer = Producer(config)
        self._topic = topic
        self._errors: list[str] = []

    def _on_delivery(self, err, msg) -> None:  # noqa: ANN001 - librdkafka callback
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def write_batch(self, items: list[KeyedValue]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        for key, value, topic in items:
            while True:
                try:
                    produce(topic or self._topic, value=value, key=key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain, then retry this message
                    poll(0.1)
        # Flushing per batch makes the sink's output durable before Bytewax snapshots the epoch.
        self._producer.flush()
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{len(errors)} Kafka deliveries failed, first: {errors[0]}")

    def close(self) -> None:
        # Bounded: a job stopping while the broker is away must not hang until every message times out (5 min).
        left = self._producer.flush(30)
        if left:
            log.error("%d messages to %s not delivered at close (the broker is unreachable?)", left, self._topic)


class KafkaProducerSink(DynamicSink[KeyedValue]):
    """Produce :class:`KeyedValue` items; idempotent producer, delivery failures raise."""

    def __init__(self, client_config: dict, topic: str | None = None) -> None:
        self.config = {
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            # Delivery reports only for failures (the callback records nothing else): no Python call per message
            # delivered, ~20-30% of the sink's own time on a batch of small messages.
            "delivery.report.only.error": True,
            **client_config,
        }
        self.topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(self.config, self.topic)


def latest_per_key(mutations: list[Any]) -> list[Any]:
    """Keep the last mutation of each key in a batch, in order of last appearance: each one is its key's full
    state, so the earlier ones add nothing (Kafka compaction would drop them later anyway)."""
    latest = {m.key: m for m in mutations}
    return list(latest.values())


class _MutationProducerPartition(_ProducerPartition):
    def write_batch(self, items: list[Any]) -> None:
        from index.mutations import encode

        super().write_batch([KeyedValue(*encode(m)) for m in latest_per_key(items)])


class KafkaMutationSink(KafkaProducerSink):
    """Index mutations to the compacted changelog topic, keyed by mutation key (so a key stays in one partition
    and its order holds)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MutationProducerPartition:
        return _MutationProducerPartition(self.config, self.topic)


class _IndexPartition(StatelessSinkPartition[Any]):
    def __init__(self, live: Any) -> None:
        self._live = live

    def write_batch(self, items: list[Any]) -> None:
        self._live.apply(items)


class LiveIndexSink(DynamicSink[Any]):
    """Index mutations straight into an in-process :class:`index.live.LiveIndex` (the embedded mode)."""

    def __init__(self, live: Any) -> None:
        self.live = live

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _IndexPartition:
        return _IndexPartition(self.live)


class _AlertPartition(StatelessSinkPartition[Any]):
    def __init__(self, kafka: _ProducerPartition | None, path: Path | None, webhook: Any,
                 on_alerts: Any) -> None:
        self._kafka = kafka
        self._file = path.open("ab") if path is not None else None
        self._webhook = webhook
        self._on_alerts = on_alerts

    def write_batch(self, items: list[Any]) -> None:
        if self._kafka is not None:
            self._kafka.write_batch([KeyedValue(*a.to_kafka()) for a in items])
        if self._file is not None:
            self._file.write(b"".join(a.to_kafka()[1] + b"\n" for a in items))
            self._file.flush()
        if self._webhook is not None:
            for a in items:
                self._webhook.notify(a)  # never blocks: a bounded queue in front of its own thread
        if self._on_alerts is not None:
            self._on_alerts(items)

    def close(self) -> None:
        if self._kafka is not None:
            self._kafka.close()
        if self._file is not None:
            self._file.close()


class AlertSink(DynamicSink[Any]):
    """Drift alerts (:class:`operators.alerts.Alert`) to any of: the ``drift-alerts`` topic (keyed by cluster),
    an ``alerts.jsonl`` file, a webhook notifier, a callback."""

    def __init__(self, *, kafka_config: dict | None = None, topic: str | None = None, path: Path | None = None,
                 webhook: Any = None, on_alerts: Any = None) -> None:
        self.kafka = KafkaProducerSink(kafka_config, topic) if kafka_config is not None else None
        self.path, self.webhook, self.on_alerts = path, webhook, on_alerts

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        kafka = self.kafka.build(step_id, worker_index, worker_count) if self.kafka is not None else None
        return _AlertPartition(kafka, self.path, self.webhook, self.on_alerts)


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, path: Path, encode) -> None:  # noqa: ANN001
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("ab")
        self._encode = encode

    def write_batch(self, items: list[Any]) -> None:
        enc = self._encode
        self._f.write(b"".join(enc(x) + b"\n" for x in items))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class JsonlSink(DynamicSink[Any]):
    """Append one JSON line per item. With several workers each writes ``<stem>.w<i><suffix>``."""

    def __init__(self, path: Path, encode=orjson.dumps) -> None:  # noqa: ANN001
        self.path = Path(path)
        self.encode = encode

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        path = self.path
        if worker_count > 1:
            path = path.with_name(f"{path.stem}.w{worker_index}{path.suffix}")
        return _JsonlPartition(path, self.encode)


class _CallbackPartition(StatelessSinkPartition[Any]):
    def __init__(self, fn) -> None:  # noqa: ANN001
        self._fn = fn

    def write_batch(self, items: list[Any]) -> None:
        self._fn(items)


class CallbackSink(DynamicSink[Any]):
    """Hand each batch to ``fn(items)`` (thread-safe counting, in-process indexes, tests)."""

    def __init__(self, fn) -> None:  # noqa: ANN001
        self.fn = fn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition:
        return _CallbackPartition(self.fn)


class Counter:
    """A thread-safe tally by key, shared by the workers of one process (progress lines, summaries)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def restore(self, counts: dict[str, int]) -> None:
        """Set the tally to ``counts`` (a snapshot), as after a restart from recovery."""
        with self._lock:
            self._counts = dict(counts)


class Tallies:
    """Named :class:`Counter` parts, one per output, read together: each part can be snapshotted with its own
    output (see :class:`ExactlyOnceSink`), and ``snapshot()`` sums them all."""

    def __init__(self) -> None:
        self._parts: dict[str, Counter] = {}

    def part(self, name: str) -> Counter:
        return self._parts.setdefault(name, Counter())

    def add(self, key: str, n: int = 1, part: str = "job") -> None:
        self.part(part).add(key, n)

    def snapshot(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for c in list(self._parts.values()):
            for k, v in c.snapshot().items():
                total[k] = total.get(k, 0) + v
        return total


def _resume(files: list[Path], keep: list[Any], resume: tuple | None) -> None:
    """Cut ``files`` back to their lengths at the snapshot (what came after is written again by the replayed
    epochs; a fresh run, without a snapshot, starts them anew) and restore the kept objects."""
    sizes, kept = resume if resume is not None else ({}, [None] * len(keep))
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        with f.open("ab") as fh:
            fh.truncate(sizes.get(str(f), 0))
    for obj, value in zip(keep, kept, strict=True):
        if value is not None:
            obj.restore(value)


class _ExactlyOncePartition(StatefulSinkPartition[Any, tuple]):
    def __init__(self, inner: StatelessSinkPartition | None, files: list[Path], keep: list[Any]) -> None:
        self._inner, self._files, self._keep = inner, files, keep

    def write_batch(self, items: list[Any]) -> None:
        if self._inner is not None:
            self._inner.write_batch(items)

    def snapshot(self) -> tuple:
        sizes = {str(f): f.stat().st_size if f.exists() else 0 for f in self._files}
        return sizes, [obj.snapshot() for obj in self._keep]

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class ExactlyOnceSink(FixedPartitionedSink[Any, tuple]):
    """An output whose effects are part of Bytewax's recovery snapshots, for exactly-once results after a crash.

    Wraps ``inner`` (a sink that appends to ``files``, and whose tallies go to the ``keep`` objects: anything with
    ``snapshot()`` and ``restore(value)``, such as a :class:`Counter`). One partition: each snapshot records the
    files' lengths and the kept objects' snapshots; a resumed run cuts the files back to those lengths and restores
    the objects, and the epochs after the snapshot then write and count their items again, once. So ``--out``
    files and summaries describe the whole job's history, not only the last process's. Items must be keyed
    ``(key, value)`` (see ``streams.dataflow.write``); every item goes to the worker that owns the partition."""

    def __init__(self, name: str, inner: DynamicSink | None, files: list[Path] = (), keep: list[Any] = ()) -> None:
        self.name, self.inner, self.files, self.keep = name, inner, [Path(f) for f in files], list(keep)

    def list_parts(self) -> list[str]:
        return [self.name]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: tuple | None) -> _ExactlyOncePartition:
        _resume(self.files, self.keep, resume_state)  # before the inner sink opens the files for appending
        inner = self.inner.build(step_id, 0, 1) if self.inner is not None else None
        return _ExactlyOncePartition(inner, self.files, self.keep)


class _CountingPartition(StatelessSinkPartition[Any]):
    def __init__(self, inner: StatelessSinkPartition | None, tally) -> None:  # noqa: ANN001
        self._inner = inner
        self._tally = tally

    def write_batch(self, items: list[Any]) -> None:
        if self._inner is not None:
            self._inner.write_batch(items)
        self._tally(items)  # after the write: counts say what was really delivered

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class CountingSink(DynamicSink[Any]):
    """Wrap a sink (or none) and call ``tally(items)`` after each batch it wrote: progress and summaries."""

    def __init__(self, inner: DynamicSink | None, tally) -> None:  # noqa: ANN001
        self.inner = inner
        self.tally = tally

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        inner = self.inner.build(step_id, worker_index, worker_count) if self.inner is not None else None
        return _CountingPartition(inner, self.tally)
