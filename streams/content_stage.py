"""Dataflow steps from content to interest clusters, and from engagements to clustered engagements.

    content events (+ engagements' inline text)   ContentEvent
      -> shard_content      (key: shard of item_id)
      -> micro_batch        size / latency budget    list[ContentEvent]
      -> embed_and_assign   one model per process, cached by content hash   EmbeddedItem
    EmbeddedItem | Engagement keyed by item_id
      -> await_item_cluster  engagements wait (bounded, counted) for their item's cluster   ClusteredEngagement
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulLogic
from prometheus_client import Counter, Histogram

from operators.content import ContentEmbedder, EmbeddedItem
from operators.embedding_cache import EmbeddingCache
from operators.item_join import ItemClusterJoin
from operators.microbatch import MicroBatcher
from streams.contract import ContentEvent, Engagement

CACHE_LOOKUPS = Counter("driftrag_embedding_cache_total", "Embedding cache lookups", ["result"])
EMBED_BATCH = Histogram("driftrag_embed_batch_size", "Texts per embedding micro-batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
EMBED_SECONDS = Histogram("driftrag_embed_batch_seconds", "Time to embed and assign one micro-batch")
ENGAGEMENTS_WAITING = Counter("driftrag_engagements_waiting_total",
                              "Engagements that arrived before their item's content")
ENGAGEMENTS_UNRESOLVED = Counter("driftrag_engagements_unresolved_total",
                                 "Waiting engagements dropped (bound or age) before their content arrived")


@dataclass(frozen=True, slots=True)
class ClusteredEngagement:
    engagement: Engagement
    cluster: int


@dataclass
class ClusteringConfig:
    """How the content stage runs. ``embedder_factory`` and ``codebook`` are resources, built per process."""

    embedder_factory: Callable[[], Any]
    codebook: Any
    max_batch: int = 64
    max_latency_s: float = 0.020
    cache_entries: int = 50_000
    max_pending: int = 1000
    max_wait_ms: int = 600_000
    shards: int = 1


class ProcessEmbedder:
    """One model per worker process, shared by its worker threads; the cache is guarded by a lock."""

    def __init__(self, config: ClusteringConfig) -> None:
        self.config = config
        self._lock = threading.Lock()

    @cached_property
    def content(self) -> ContentEmbedder:
        return ContentEmbedder(self.config.embedder_factory(), self.config.codebook,
                               EmbeddingCache(self.config.cache_entries))

    def embed(self, batch: list[ContentEvent]) -> list[EmbeddedItem]:
        t0 = time.perf_counter()
        with self._lock:
            ce = self.content
            hits0, misses0 = ce.cache.hits, ce.cache.misses
            out = ce.embed(batch)
            CACHE_LOOKUPS.labels("hit").inc(ce.cache.hits - hits0)
            CACHE_LOOKUPS.labels("miss").inc(ce.cache.misses - misses0)
        EMBED_BATCH.observe(len(batch))
        EMBED_SECONDS.observe(time.perf_counter() - t0)
        return out


class MicroBatchLogic(StatefulLogic):
    """Bytewax stateful logic around :class:`MicroBatcher`: closes batches on size, on the latency timer, at EOF."""

    def __init__(self, batcher: MicroBatcher, clock: Callable[[], float] = time.monotonic) -> None:
        self.batcher = batcher
        self.clock = clock

    def on_item(self, value: Any) -> tuple[list[list[Any]], bool]:
        full = self.batcher.add(value, self.clock())
        return ([full] if full else []), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[list[Any]], bool]:
        if self.batcher.due(self.clock()):
            return [self.batcher.flush()], StatefulLogic.RETAIN
        return [], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Any]], bool]:
        batch = self.batcher.flush()
        return ([batch] if batch else []), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        deadline = self.batcher.deadline
        if deadline is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=max(0.0, deadline - self.clock()))

    def snapshot(self) -> list[Any]:
        return self.batcher.pending


def inline_text_as_content(e: Engagement | ContentEvent) -> ContentEvent | None:
    """An engagement that carries its item's text stands in for a content event the item may never get."""
    if type(e) is ContentEvent:
        return e
    if e.text is not None:
        return ContentEvent(e.item_id, e.text, e.ts_ms, (), e.ingest_ms)
    return None


def _join_step(max_pending: int, max_wait_ms: int):  # noqa: ANN202
    def step(state: ItemClusterJoin | None, v: EmbeddedItem | Engagement):  # noqa: ANN202
        if state is None:
            state = ItemClusterJoin(max_pending, max_wait_ms)
        if type(v) is EmbeddedItem:
            released = state.on_item(v.cluster, v.distance)
        else:
            released, dropped = state.on_engagement(v, int(time.time() * 1000))
            if not released:
                ENGAGEMENTS_WAITING.inc()
            if dropped:
                ENGAGEMENTS_UNRESOLVED.inc(dropped)
        return state, [ClusteredEngagement(e, c) for e, c in released]

    return step


def cluster_events(events: Stream[Engagement | ContentEvent], config: ClusteringConfig
                   ) -> tuple[Stream[EmbeddedItem], Stream[ClusteredEngagement]]:
    """Wire the content stage onto the stream of valid events; returns (items, clustered engagements)."""
    embedder = ProcessEmbedder(config)
    shards = config.shards
    content = op.filter_map("inline_text_as_content", events, inline_text_as_content)
    keyed = op.key_on("shard_content", content, lambda e: str(zlib.crc32(e.item_id.encode()) % shards))
    batches = op.stateful("micro_batch", keyed, lambda resume: _micro_batch_logic(config, resume))
    items = op.flat_map("embed_and_assign", batches, lambda kv: embedder.embed(kv[1]))
    engagements = op.filter("engagements_only", events, lambda e: type(e) is Engagement)
    joined_in = op.merge(
        "items_and_engagements",
        op.key_on("key_items", items, lambda i: i.item_id),
        op.key_on("key_engagements", engagements, lambda e: e.item_id),
    )
    clustered = op.stateful_flat_map("await_item_cluster", joined_in,
                                     _join_step(config.max_pending, config.max_wait_ms))
    return items, op.map("unkey", clustered, lambda kv: kv[1])


def _micro_batch_logic(config: ClusteringConfig, resume: list[Any] | None) -> MicroBatchLogic:
    batcher: MicroBatcher[ContentEvent] = MicroBatcher(config.max_batch, config.max_latency_s)
    batcher.restore(resume or [], time.monotonic())
    return MicroBatchLogic(batcher)
