"""Where raw messages come from: Kafka, JSONL files, or the embedded generator.

Every source emits :class:`streams.contract.RawMessage` so the rest of the dataflow cannot tell them apart.
Each is a Bytewax ``FixedPartitionedSource`` whose resume state is a plain offset, so Bytewax recovery stores
source positions together with operator state (no consumer-group commits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.contract import RawMessage, parse_ts
from streams.lag import LagProbe
from streams.metrics import CONSUMER_LAGS

log = logging.getLogger(__name__)

# How long an idle Kafka partition lets the worker sleep before polling again (bounds added latency).
_IDLE_BACKOFF = timedelta(milliseconds=5)


# ---------------------------------------------------------------------------------------------------- Kafka

# A replay line further ahead of its file's time than contract.max_future_ms is a real jump in the data when this
# many of the lines after it come near its time, and a stray record (dead-lettered) otherwise.
_CONFIRM = 3

# How often an idle partition asks the broker whether its topic still exists (a consumer with assigned partitions
# gets no error when the topic is deleted: it would wait for messages forever).
_TOPIC_CHECK_S = 5.0


_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE,
              KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._MSG_TIMED_OUT}


def _transient(err: KafkaError) -> bool:
    """Errors a consumer reports while a broker is down or restarting: the client retries them by itself."""
    return not err.fatal() and (err.retriable() or err.code() in _TRANSIENT)


class SourceGone(RuntimeError):
    """A source topic or partition the job reads does not exist (not created, or deleted under the running job)."""


# auto.offset.reset values that mean "the oldest message still in the log".
_EARLIEST = {"earliest", "smallest", "beginning"}


def fetch_offset(offset: int, config: dict) -> int:
    """The offset to assign() for a partition that should be read from ``offset``.

    ``OFFSET_BEGINNING`` becomes offset 0 where the consumer resets to the earliest message when an offset is out
    of range (``auto.offset.reset`` earliest, which :class:`KafkaRawSource` sets for such partitions): the same
    first message (0, or the log's start when retention deleted the head), but a fresh consumer assigned a logical
    offset waits librdkafka's fixed 500 ms offset-query retry (the partition's leader is not known yet at assign)
    before it fetches anything, ~10x the time it takes to fetch the first messages from a concrete offset.

    >>> fetch_offset(OFFSET_BEGINNING, {"auto.offset.reset": "earliest"}), fetch_offset(42, {})
    (0, 42)
    >>> fetch_offset(OFFSET_BEGINNING, {"auto.offset.reset": "latest"}) == OFFSET_BEGINNING  # kept as asked
    True
    """
    if offset == OFFSET_BEGINNING and str(config.get("auto.offset.reset", "")).lower() in _EARLIEST:
        return 0
    return offset


class _KafkaPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, config: dict, topic: str, partition: int, offset: int, batch_size: int, tail: bool):
        self._consumer = Consumer(config)
        # assign(), not subscribe(): the offset lives in Bytewax's recovery store, not in a consumer group. The
        # resume state stays ``offset`` (possibly logical) until a message is read.
        self._consumer.assign([TopicPartition(topic, partition, fetch_offset(offset, config))])
        self._topic, self._partition = topic, partition
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False
        self._awake: datetime | None = None
        self._checked = time.monotonic()
        self._gone = 0  # consecutive metadata checks that did not find the partition
        self._warned = 0.0
        # driftrag_consumer_lag_messages and the job's /readyz: measured every few seconds from the watermarks
        # librdkafka caches (no broker round trip on the worker's thread).
        self._lag = LagProbe(self._consumer, topic)
        CONSUMER_LAGS.register(topic, partition)

    def _check_topic(self) -> None:
        """Raise :class:`SourceGone` when the partition is no longer in the broker's metadata."""
        self._checked = time.monotonic()
        try:
            md = self._consumer.list_topics(self._topic, timeout=5)
        except KafkaException:
            return  # the broker is unreachable: not a verdict on the topic (the client keeps retrying)
        t = md.topics.get(self._topic)
        if t is None:
            return
        if t.error is not None:
            # Only "unknown topic" is a verdict: a broker shutting down or electing leaders answers with others.
            gone = t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        else:
            gone = self._partition not in t.partitions
        self._gone = self._gone + 1 if gone else 0
        if self._gone >= 2:  # twice in a row, a check apart: not a passing state of the cluster
            why = "topic not found" if t.error is not None else "partition not found"
            raise SourceGone(f"{self._topic}[{self._partition}] is gone ({why}: deleted while the job ran?); "
                             "recreate it (driftrag topics create) and restart the job")

    def next_batch(self) -> list[RawMessage]:
        if self._eof:
            raise StopIteration
        # Never block the worker: other partitions and operators share its thread. librdkafka prefetches in
        # the background; when nothing is there, next_awake() lets the worker sleep a little instead of spin.
        msgs = self._consumer.consume(self._batch_size, 0)
        batch: list[RawMessage] = []
        append = batch.append
        topic, part = self._topic, self._partition
        now_ms = int(time.time() * 1000)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if not self._tail:
                        self._eof = True
                        CONSUMER_LAGS.update(topic, {part: 0})  # read up to the end: nothing left
                    continue
                if _transient(err):  # the broker is away or moving: librdkafka reconnects and resumes by itself
                    self._warn_transient(err)
                    continue
                # Other broker errors are not bad data: fail loudly, recovery resumes from the last offset.
                raise RuntimeError(f"error consuming {topic}[{part}]: {err}")
            ts_type, ts = m.timestamp()
            append(RawMessage(topic, part, m.offset(), m.key(), m.value(), ts if ts_type and ts > 0 else now_ms))
        if batch:
            self._offset = batch[-1].offset + 1
            self._awake = None
        elif not msgs:
            self._awake = datetime.now(UTC) + _IDLE_BACKOFF
            if time.monotonic() - self._checked > _TOPIC_CHECK_S:
                self._check_topic()
        if self._lag.due() and not self._eof:
            CONSUMER_LAGS.update(topic, self._lag.poll({part: self._offset}))
        return batch

    def _warn_transient(self, err: KafkaError) -> None:
        now = time.monotonic()
        if now - self._warned > 10:  # once per 10 s per partition, not per poll
            self._warned = now
            log.warning("%s[%d]: %s (retrying)", self._topic, self._partition, err)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaRawSource(FixedPartitionedSource[RawMessage, int]):
    """Every partition of ``topics`` as one Bytewax input partition.

    ``tail=False`` stops at the end of each partition (bounded runs, tests, benchmarks).
    """

    def __init__(
        self,
        client_config: dict,
        topics: Iterable[str],
        *,
        tail: bool = True,
        batch_size: int = 1000,
        starting_offset: int = OFFSET_BEGINNING,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of names, not a string")
        self.client_config = dict(client_config)
        self.topics = list(topics)
        self.tail = tail
        self.batch_size = batch_size
        self.starting_offset = starting_offset

    def list_parts(self) -> list[str]:
        admin = AdminClient({k: v for k, v in self.client_config.items() if k != "group.id"})
        md = admin.list_topics(timeout=30)
        parts = []
        for topic in self.topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                raise SourceGone(
                    f"topic {topic!r} does not exist on {self.client_config.get('bootstrap.servers')}: "
                    "create it with `driftrag topics create`"
                )
            parts.extend(f"{p}-{topic}" for p in sorted(t.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "group.id": "driftrag-unused",  # required by librdkafka; never committed
            "enable.auto.commit": False,
            "enable.partition.eof": not self.tail,
            "fetch.wait.max.ms": 50,
            **self.client_config,
        }
        offset = self.starting_offset if resume_state is None else resume_state
        if offset == OFFSET_BEGINNING:
            # Read from offset 0, falling back to the log's start where retention deleted it (see fetch_offset);
            # a client_config that sets auto.offset.reset itself keeps its value (and the logical offset).
            config = {"auto.offset.reset": "earliest", **config}
        return _KafkaPartition(config, topic, int(idx), offset, self.batch_size, self.tail)


# ---------------------------------------------------------------------------------------------------- files


class _FilePartition(StatefulSourcePartition[RawMessage, tuple[int, int]]):
    def __init__(self, topic: str, path: Path, resume: tuple[int, int] | None, batch_size: int,
                 wait_for: Callable[[], bool] | None = None, on_eof: Callable[[], None] | None = None):
        self._f = path.open("rb")
        self._line, pos = resume or (0, 0)
        self._f.seek(pos)
        self._topic = topic
        self._batch_size = batch_size
        self._wait_for, self._on_eof = wait_for, on_eof
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawMessage]:
        if self._wait_for is not None:
            if not self._wait_for():
                self._awake = datetime.now(UTC) + timedelta(milliseconds=20)
                return []
            self._wait_for, self._awake = None, None
        batch = []
        topic, line = self._topic, self._line
        readline = self._f.readline
        now_ms = int(time.time() * 1000)
        for _ in range(self._batch_size):
            raw = readline()
            if not raw:
                break
            batch.append(RawMessage(topic, 0, line, None, raw[:-1] if raw.endswith(b"\n") else raw, now_ms))
            line += 1
        self._line = line
        if not batch:
            if self._on_eof is not None:
                self._on_eof()
            raise StopIteration
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return (self._line, self._f.tell())

    def close(self) -> None:
        self._f.close()


class JsonlFileSource(FixedPartitionedSource[RawMessage, tuple[int, int]]):
    """One message per line of each file; the line number is the message's offset.

    ``files`` maps a topic name (the contract that applies) to a path. Lines are bytes: a line that is not
    UTF-8 or not JSON becomes a dead letter like a bad Kafka message would. An empty line is an empty message.

    ``first`` (a topic of ``files``, e.g. the content file): the other files wait until it has been read to its
    end, where its partition runs in this process. With several workers the files are read in parallel, and
    engagements read ahead of their content would wait at the item join (and some give up at its bounds); a
    catalogue read first is what a live deployment has, and what one worker reading the files in turn got.
    """

    def __init__(self, files: dict[str, Path], *, batch_size: int = 1000, first: str | None = None) -> None:
        for topic, path in files.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{topic} file not found: {path}")
        if first is not None and first not in files:
            raise ValueError(f"first={first!r} is not one of the files' topics {sorted(files)}")
        self.files = {t: Path(p) for t, p in files.items()}
        self.batch_size = batch_size
        self.first = first
        self._first_read = threading.Event()
        self._local: set[str] = set()  # partitions built in this process
        self._created = time.monotonic()

    def list_parts(self) -> list[str]:
        return list(self.files)

    def _first_done(self) -> bool:
        # Only a partition of this process can be waited for. Workers build their partitions concurrently, so one
        # not built here after a grace period is elsewhere (a multi-process file run): then do not wait.
        if self._first_read.is_set() or self.first in self._local:
            return self._first_read.is_set()
        return time.monotonic() - self._created > 2.0

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None) -> _FilePartition:
        self._local.add(for_part)
        waits = self.first is not None and for_part != self.first
        return _FilePartition(for_part, self.files[for_part], resume_state, self.batch_size,
                              wait_for=self._first_done if waits else None,
                              on_eof=self._first_read.set if for_part == self.first else None)


def line_ts(raw: bytes) -> int | None:
    """The event time of one JSONL line (epoch ms or RFC 3339 ``ts``), or None where it has none (a bad line).

    >>> line_ts(b'{"ts": 1767225600000}'), line_ts(b'{"ts": "2026-01-01T01:00:00+01:00"}'), line_ts(b'nope')
    (1767225600000, 1767225600000, None)
    """
    try:
        return parse_ts(orjson.loads(raw).get("ts"))
    except Exception:  # noqa: BLE001 - anything unparsable keeps its place; the validator says why later
        return None


class _MergedFilesPartition(StatefulSourcePartition[RawMessage, dict[str, tuple[int, int]]]):
    """Lines of several files merged in event-time order: each file is read in order, and the next message is the
    head with the earliest ``ts`` (ties: the files' order, content first). A line without a readable ``ts`` (or
    one past the event-time guard) takes the time of the line before it in its file, so it keeps its place; a
    file that goes back in time is still read in its own order (the merge never reorders a file) and counted in
    ``out_of_order``."""

    def __init__(self, files: dict[str, Path], resume: dict[str, tuple[int, int]] | None, batch_size: int,
                 max_future_ms: int | None = None):
        # A line dated past the event-time guard (the validator dead-letters it) is merged as if it had no time:
        # taken as the file's time, one line dated 2100 would hold back the rest of its file behind all others.
        # Past the wall clock's limit; or, in a replay of old data, further ahead of the line before it than the
        # guard allows while the lines after it do not follow it there (a real gap in the data is followed by more
        # data beyond it; one stray line is not).
        self._max_future = max_future_ms
        self._ts_limit = None if max_future_ms is None else int(time.time() * 1000) + max_future_ms
        self._files = {t: p.open("rb") for t, p in files.items()}
        self._pos = dict(resume or {t: (0, 0) for t in files})
        for t, f in self._files.items():
            f.seek(self._pos.get(t, (0, 0))[1])
        self._ahead: dict[str, deque[tuple[bytes, int]]] = {t: deque() for t in files}  # lines read ahead
        self._last_ts: dict[str, int] = {t: -1 for t in files}
        self.out_of_order = 0
        self.strays = 0  # lines dated far past the stream's time on their own (dead-lettered)
        self._heads: dict[str, tuple[int, bytes, int, int | None] | None] = {t: self._read(t) for t in files}
        self._order = {t: i for i, t in enumerate(files)}
        self._batch_size = batch_size

    def _line(self, topic: str, i: int) -> tuple[bytes, int] | None:
        """The ``i``-th line not yet taken from the file (0: the next one) and the byte position after it."""
        ahead, f = self._ahead[topic], self._files[topic]
        while len(ahead) <= i:
            raw = f.readline()
            if not raw:
                return None
            ahead.append((raw, f.tell()))
        return ahead[i]

    def _stray(self, topic: str, ts: int, last: int) -> bool:
        """Whether a line dated ``ts``, further ahead of the file's time ``last`` than the guard allows, stands
        alone: fewer than ``_CONFIRM`` of the lines after it come near its time."""
        follow = 0
        for i in range(1, _CONFIRM + 1):
            nxt = self._line(topic, i)
            if nxt is None:
                break
            t = line_ts(nxt[0])
            if t is not None and t >= ts - self._max_future:  # type: ignore[operator]
                follow += 1
        return follow < _CONFIRM

    def _read(self, topic: str) -> tuple[int, bytes, int, int | None] | None:
        """(merge time, line, byte position after it, the guard's reference for it or None) of the file's next
        line, or None at its end."""
        head = self._line(topic, 0)
        if head is None:
            return None
        raw, after = self._ahead[topic].popleft()
        ts, last, ref = line_ts(raw), self._last_ts[topic], None
        if ts is None or (self._ts_limit is not None and ts > self._ts_limit):
            ts = last
        elif self._max_future is not None and last >= 0 and ts > last + self._max_future:
            self._ahead[topic].appendleft((raw, after))  # look past it without taking it
            stray = self._stray(topic, ts, last)
            self._ahead[topic].popleft()
            if stray:
                self.strays += 1
                ts, ref = last, last  # keeps its place; the validator dead-letters it against the replay's time
        elif ts < last:
            self.out_of_order += 1
            ts = last  # keep the file's own order
        self._last_ts[topic] = ts
        return ts, raw[:-1] if raw.endswith(b"\n") else raw, after, ref

    def next_batch(self) -> list[RawMessage]:
        batch: list[RawMessage] = []
        now_ms = int(time.time() * 1000)
        heads, order, pos = self._heads, self._order, self._pos
        while len(batch) < self._batch_size:
            live = [(h[0], order[t], t) for t, h in heads.items() if h is not None]
            if not live:
                break
            topic = min(live)[2]
            ts, line, after, ref = heads[topic]
            offset = pos[topic][0]
            batch.append(RawMessage(topic, 0, offset, None, line, now_ms, ref))
            pos[topic] = (offset + 1, after)
            heads[topic] = self._read(topic)
        if not batch:
            raise StopIteration
        return batch

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return dict(self._pos)

    def close(self) -> None:
        if self.out_of_order:
            log.warning("%d lines were out of event-time order within their file (kept in file order)",
                        self.out_of_order)
        for f in self._files.values():
            f.close()


class EventTimeFileSource(FixedPartitionedSource[RawMessage, dict[str, tuple[int, int]]]):
    """Several JSONL files (topic -> path) as ONE stream in event-time order: what ``driftrag replay`` reads, so a
    replay sees content and engagements interleaved as they happened (a file source per topic would let one run
    ahead of the other). The offsets of each file are its line numbers, as in :class:`JsonlFileSource`."""

    def __init__(self, files: dict[str, Path], *, batch_size: int = 1000, max_future_ms: int | None = None) -> None:
        for topic, path in files.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{topic} file not found: {path}")
        self.files = {t: Path(p) for t, p in files.items()}  # ties go to the earlier file: pass content first
        self.batch_size = batch_size
        self.max_future_ms = max_future_ms  # the contract's event-time guard (lines past it keep their place)

    def list_parts(self) -> list[str]:
        return ["event-time"]

    def build_part(self, step_id: str, for_part: str, resume_state: dict[str, tuple[int, int]] | None
                   ) -> _MergedFilesPartition:
        return _MergedFilesPartition(self.files, resume_state, self.batch_size, self.max_future_ms)


# ---------------------------------------------------------------------------------------------------- embedded


class _GeneratorPartition(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, messages: Iterator[RawMessage], skip: int, batch_size: int, rate: float | None,
                 max_seconds: float | None):
        self._it = messages
        for _ in range(skip):  # deterministic generator: resuming = regenerating and skipping
            next(self._it, None)
        self._emitted = skip
        self._batch_size = batch_size
        self._rate = rate
        self._t0 = time.monotonic()
        self._deadline = None if max_seconds is None else self._t0 + max_seconds
        self._start_count = skip
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawMessage]:
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            raise StopIteration
        n = self._batch_size
        if self._rate:
            # Emit only what the target rate allows by now; the rest waits for the next poll.
            allowed = int((now - self._t0) * self._rate) - (self._emitted - self._start_count)
            if allowed <= 0:
                self._awake = datetime.now(UTC) + timedelta(milliseconds=10)
                return []
            self._awake = None
            n = min(n, allowed)
        batch = []
        now_ms = int(time.time() * 1000)
        for m in self._it:
            batch.append(m._replace(ingest_ms=now_ms))
            if len(batch) >= n:
                break
        if not batch:
            raise StopIteration
        self._emitted += len(batch)
        return batch

    def next_awake(self) -> datetime | None:
        # Without this a rate-limited source would spin the worker at 100% CPU between batches.
        return self._awake

    def snapshot(self) -> int:
        return self._emitted

    def close(self) -> None:
        pass


class GeneratorSource(FixedPartitionedSource[RawMessage, int]):
    """The workload generator as an in-process source: the embedded mode needs no Kafka.

    ``topics`` maps the generator's logical topics (``engagements``, ``items``) to the physical names the
    validator expects. Offsets count per topic, as Kafka's would in a one-partition topic.
    """

    def __init__(self, config, topics: dict[str, str], *, batch_size: int = 1000, rate: float | None = None,
                 max_seconds: float | None = None) -> None:
        self.config = config
        self.topics = dict(topics)
        self.batch_size = batch_size
        self.rate = rate
        self.max_seconds = max_seconds

    def list_parts(self) -> list[str]:
        return ["generator"]

    def _raw_messages(self) -> Iterator[RawMessage]:
        from streams.generator import WorkloadGenerator

        offsets = {t: 0 for t in self.topics}
        topics = self.topics
        for m in WorkloadGenerator(self.config).messages():
            off = offsets[m.topic]
            offsets[m.topic] = off + 1
            yield RawMessage(topics[m.topic], 0, off, m.key, m.value)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _GeneratorPartition:
        return _GeneratorPartition(
            self._raw_messages(), resume_state or 0, self.batch_size, self.rate, self.max_seconds
        )
