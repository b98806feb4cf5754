"""Prometheus metrics of the stream job. Label values come from closed sets, so cardinality stays bounded.

Served by the job's own endpoints (``streams/observability.py``: ``GET /metrics``), in every mode. Besides the
counters below, this module keeps the two pieces of job state the endpoints judge readiness by: the consumer lag
of the Kafka partitions this process reads (:data:`CONSUMER_LAGS`) and the event-time watermark
(:data:`EVENT_TIME`).

Event-time watermark: the largest event time (``ts``) of the valid events this process has passed through the
contract so far (records past the event-time guard are dead-lettered before they count, so one stray record
dated in the future cannot move it). ``driftrag_event_time_lag_seconds`` is the wall clock minus that watermark
at scrape time: how far behind real time the stream's newest data is (large on a replay of old data, by design).
"""

from __future__ import annotations

import math
import platform
import threading
import time
import weakref
from importlib import metadata
from typing import Any

from prometheus_client import Counter, Gauge

__all__ = [
    "BUILD_INFO", "CONSUMER_LAG", "CONSUMER_LAGS", "DATAFLOW_RUNNING", "DEAD_LETTERS", "DIRECTIONS", "EMBED_QUEUE",
    "EVENTS_VALID", "EVENT_TIME", "MUTATIONS_PRODUCED", "STEPS", "STEP_RECORDS", "ConsumerLags", "EventTime",
    "NO_COUNTS", "StepCounts", "build_info", "track_embed_queue",
]

EVENTS_VALID = Counter("driftrag_events_valid_total", "Events that passed the contract", ["kind"])
DEAD_LETTERS = Counter("driftrag_dead_letter_total", "Messages routed to dead-letter, by reason", ["reason"])

BUILD_INFO = Gauge("driftrag_build_info", "Always 1; the labels say which versions run",
                   ["version", "python", "bytewax"])
DATAFLOW_RUNNING = Gauge("driftrag_dataflow_running", "1 while this process's dataflow runs, else 0")
CONSUMER_LAG = Gauge("driftrag_consumer_lag_messages",
                     "Messages of a source partition not read yet: high watermark minus next offset to read",
                     ["topic", "partition"])
EVENT_TIME_WATERMARK = Gauge("driftrag_event_time_watermark_seconds",
                             "Largest event time of the valid events seen so far (epoch s; 0 before the first)")
EVENT_TIME_LAG = Gauge("driftrag_event_time_lag_seconds",
                       "Wall clock minus the event-time watermark (NaN before the first valid event)")
# Records into and out of the main dataflow steps, counted once per batch.
STEPS = ("validate", "content", "transitions", "drift", "index")
DIRECTIONS = ("in", "out")
STEP_RECORDS = Counter("driftrag_step_records_total", "Records into (in) and out of (out) a main dataflow step",
                       ["step", "direction"])


class StepCounts:
    """Which ``driftrag_step_records_total{step, direction}`` counters each named stream of the dataflow adds its
    records to, applied inside the step that produces the stream: one increment per batch and label, and no
    Bytewax step of its own (a pass-through counting step costs the runtime a hop per batch for every record).

    >>> counts = StepCounts({"items": [("content", "out")]})
    >>> before = STEP_RECORDS.labels("content", "out")._value.get()
    >>> counts.counting("items", lambda batch: batch[1:])([1, 2, 3]), counts.counting("other", len) is len
    ([2, 3], True)
    >>> STEP_RECORDS.labels("content", "out")._value.get() - before
    2.0
    """

    def __init__(self, labels: dict[str, list[tuple[str, str]]] | None = None) -> None:
        self._counters = {name: [STEP_RECORDS.labels(step, direction) for step, direction in pairs]
                          for name, pairs in (labels or {}).items() if pairs}

    def add(self, stream: str, n: int) -> None:
        """Add ``n`` records of ``stream`` to its counters (none: nothing)."""
        for c in self._counters.get(stream, ()):
            c.inc(n)

    def counting(self, stream: str, fn: Any) -> Any:
        """``fn`` (a batch function returning a list: ``stream``'s records) counting what it returns; ``fn`` itself
        where ``stream`` has no counters."""
        counters = self._counters.get(stream)
        if not counters:
            return fn

        def counted(batch: list[Any]) -> list[Any]:
            out = fn(batch)
            n = len(out)
            for c in counters:
                c.inc(n)
            return out
        return counted


NO_COUNTS = StepCounts()  # stages wired without a dataflow around them (tests): nothing counted

EMBED_QUEUE = Gauge("driftrag_embed_queue_depth", "Content texts waiting in the embedding micro-batchers")
MUTATIONS_PRODUCED = Counter("driftrag_index_mutations_produced_total",
                             "Index mutations the job wrote to its index sink (changelog topic or in-process index)",
                             ["kind"])


def build_info() -> dict[str, str]:
    """The labels of ``driftrag_build_info`` (and sets it to 1)."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"
    labels = {"version": version("driftrag"), "python": platform.python_version(), "bytewax": version("bytewax")}
    BUILD_INFO.labels(**labels).set(1)
    return labels


class ConsumerLags:
    """Consumer lag of the source partitions this process reads, for the gauge and for readiness.

    A partition is registered when its reader is built (lag unknown) and updated by each measurement
    (:class:`streams.lag.LagProbe`). Thread-safe: workers update, the HTTP server reads.
    """

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._lags: dict[tuple[str, int], int | None] = {}
        self._lock = threading.Lock()

    def register(self, topic: str, partition: int) -> None:
        with self._lock:
            self._lags.setdefault((topic, partition), None)

    def update(self, topic: str, lags: dict[int, int]) -> None:
        with self._lock:
            for partition, lag in lags.items():
                self._lags[(topic, partition)] = lag
                self._gauge.labels(topic, str(partition)).set(lag)

    def total(self) -> tuple[int, int, int]:
        """(partitions registered, partitions measured at least once, total lag of the measured ones)."""
        with self._lock:
            measured = [v for v in self._lags.values() if v is not None]
            return len(self._lags), len(measured), sum(measured)

    def reset(self) -> None:
        """Forget every partition (a new job in this process)."""
        with self._lock:
            self._lags.clear()
            self._gauge.clear()


class EventTime:
    """The event-time watermark (see the module's docstring), fed one batch maximum at a time."""

    def __init__(self, watermark: Gauge, lag: Gauge, clock=time.time) -> None:  # noqa: ANN001
        self._watermark, self._clock = watermark, clock
        self._max_ms: int | None = None
        self._lock = threading.Lock()
        lag.set_function(self.lag_s)

    @property
    def watermark_ms(self) -> int | None:
        return self._max_ms

    def observe(self, ts_ms: int) -> None:
        """One batch's largest event time (ms)."""
        with self._lock:
            if self._max_ms is None or ts_ms > self._max_ms:
                self._max_ms = ts_ms
                self._watermark.set(ts_ms / 1000)

    def lag_s(self) -> float:
        """Wall clock minus the watermark, in seconds; NaN before the first event."""
        wm = self._max_ms
        return math.nan if wm is None else self._clock() - wm / 1000

    def reset(self) -> None:
        with self._lock:
            self._max_ms = None
            self._watermark.set(0)


_BATCHERS: weakref.WeakSet = weakref.WeakSet()
_BATCHERS_LOCK = threading.Lock()


def track_embed_queue(batcher: Any) -> None:
    """Count ``batcher``'s open batch (``.pending``) in ``driftrag_embed_queue_depth`` while it lives. Read at
    scrape time: nothing is counted on the path each text takes."""
    with _BATCHERS_LOCK:
        _BATCHERS.add(batcher)


def _embed_queue_depth() -> float:
    with _BATCHERS_LOCK:
        batchers = list(_BATCHERS)
    return float(sum(len(b.pending) for b in batchers))


EMBED_QUEUE.set_function(_embed_queue_depth)
CONSUMER_LAGS = ConsumerLags(CONSUMER_LAG)
EVENT_TIME = EventTime(EVENT_TIME_WATERMARK, EVENT_TIME_LAG)
