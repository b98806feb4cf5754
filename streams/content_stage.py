"""Dataflow steps from content to interest clusters, and from engagements to clustered engagements.

    content events (+ engagements' inline text)   ContentEvent
      -> shard_content      (key: shard of item_id; content events and engagements' inline text)
      -> micro_batch        size / latency budget    list[ContentEvent]
      -> embed_and_assign   one model per process, cached by content hash   EmbeddedItem
    (item_id, cluster) to every user shard | Engagement keyed by the shard of its user_id
      -> join_item_clusters   engagements wait (bounded, counted) for their item's cluster, each user's in
                              arrival order   ClusteredEngagement
    ClusteredEngagement keyed by a shard of item_id
      -> tally_item_shards    the item's engagement tally, latest per item and batch (for the index)

The join is keyed by user shard, not by item: a user's engagements then leave it in the order they arrived,
which the transition rule downstream needs. Keyed by item on several workers, one user's engagements came out of
different workers in whatever order those happened to run, and the rule dropped the ones that arrived "late"
(15% of the triples on a replay with two workers, two thirds on two workers reading files in parallel). The
price: every shard keeps every item's cluster (an int per item per shard; content is broadcast).
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
from bytewax.operators import StatefulBatchLogic, StatefulLogic
from prometheus_client import Counter, Histogram

from operators.content import ContentEmbedder, EmbeddedItem
from operators.embedding_cache import EmbeddingCache
from operators.item_join import OrderedItemJoin
from operators.microbatch import MicroBatcher
from streams.contract import ContentEvent, Engagement
from streams.errors import GuardedLogic, guard_batch
from streams.metrics import NO_COUNTS, StepCounts, track_embed_queue
from streams.routing import shard_keys

CACHE_LOOKUPS = Counter("driftrag_embedding_cache_total",
                        "Embedding cache lookups: hit (memory), store (on disk), miss (embedded)", ["result"])
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
    # The item's engagement tally including this one: (engagements, positive, first_seen_ms, last_seen_ms).
    item_stats: tuple[int, int, int, int] | None = None


def tally(stats: tuple[int, int, int, int] | None, e: Engagement) -> tuple[int, int, int, int]:
    """An item's (engagements, positive, first_seen_ms, last_seen_ms) after one more engagement."""
    if stats is None:
        return (1, 1 if e.positive else 0, e.ts_ms, e.ts_ms)
    n, pos, first, last = stats
    return (n + 1, pos + (1 if e.positive else 0), min(first, e.ts_ms), max(last, e.ts_ms))


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
    cache: EmbeddingCache | None = None  # a warm cache to start from (else a new one of cache_entries)
    # Persistent embeddings behind the cache: (model's embedder) -> store, opened once per process.
    store_factory: Callable[[Any], Any] | None = None


class ProcessEmbedder:
    """One model per worker process, shared by its worker threads; the cache is guarded by a lock."""

    def __init__(self, config: ClusteringConfig) -> None:
        self.config = config
        self._lock = threading.Lock()

    @cached_property
    def content(self) -> ContentEmbedder:
        cache = self.config.cache if self.config.cache is not None else EmbeddingCache(self.config.cache_entries)
        embedder = self.config.embedder_factory()
        if cache.store is None and self.config.store_factory is not None:
            cache.store = self.config.store_factory(embedder)
        return ContentEmbedder(embedder, self.config.codebook, cache)

    def known(self, text: str) -> bool:
        """Whether the text's vector is cached (a peek: no hit or miss is counted)."""
        with self._lock:
            return text in self.content.cache

    def embed(self, batch: list[ContentEvent]) -> list[EmbeddedItem]:
        t0 = time.perf_counter()
        with self._lock:
            ce = self.content
            hits0, stored0, misses0 = ce.cache.hits, ce.cache.store_hits, ce.cache.misses
            out = ce.embed(batch)
            CACHE_LOOKUPS.labels("hit").inc(ce.cache.hits - hits0)
            CACHE_LOOKUPS.labels("store").inc(ce.cache.store_hits - stored0)
            CACHE_LOOKUPS.labels("miss").inc(ce.cache.misses - misses0)
        EMBED_BATCH.observe(len(batch))
        EMBED_SECONDS.observe(time.perf_counter() - t0)
        return out


class MicroBatchLogic(StatefulLogic):
    """Bytewax stateful logic around :class:`MicroBatcher`: closes batches on size, on the latency timer, at EOF.

    A text whose vector is already cached (``known``) goes straight through when no batch is open: it costs no
    model call, so waiting for the latency budget would only delay it. Because it never overtakes a waiting
    text, content keeps its order; and a replay whose texts are all cached is independent of wall-clock timing.
    """

    def __init__(self, batcher: MicroBatcher, clock: Callable[[], float] = time.monotonic,
                 known: Callable[[str], bool] | None = None) -> None:
        self.batcher = batcher
        self.clock = clock
        self.known = known

    def on_item(self, value: Any) -> tuple[list[list[Any]], bool]:
        if self.known is not None and self.batcher.deadline is None and self.known(value.text):
            return [[value]], StatefulLogic.RETAIN
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


def unkey(batch: list[tuple[str, Any]]) -> list[Any]:
    """Drop the keys of a keyed batch. Keying and unkeying run per batch (``flat_map_batch``): one Python call
    per batch instead of one Bytewax step per event, on the path every engagement takes."""
    return [v for _, v in batch]


def inline_text_as_content(e: Engagement | ContentEvent) -> ContentEvent | None:
    """An engagement that carries its item's text stands in for a content event the item may never get."""
    if type(e) is ContentEvent:
        return e
    if e.text is not None:
        return ContentEvent(e.item_id, e.text, e.ts_ms, (), e.ingest_ms)
    return None


class UserShardJoin(StatefulBatchLogic):
    """One user shard's item join (:class:`OrderedItemJoin`: every item's cluster, content reaching every shard;
    this shard's engagements waiting for content, each user's in arrival order), with its metrics. A batch is one
    call; known items cost one dict lookup. The snapshot is plain dicts of immutable values, so a copy per epoch
    stays cheap for a large catalogue."""

    def __init__(self, max_pending: int, max_wait_ms: int, resume: tuple | None = None) -> None:
        self.join = (OrderedItemJoin(max_pending, max_wait_ms) if resume is None
                     else OrderedItemJoin.from_snapshot(resume, max_pending, max_wait_ms))

    def on_batch(self, values: list[tuple[str, int, int] | Engagement]) -> tuple[list[ClusteredEngagement], bool]:
        """Values: an item's (item_id, cluster, event time), or an engagement. Applied in event-time order, content
        first on equal times: the merged streams deliver a batch's content and engagements in no particular order,
        and an engagement must get its item's cluster as of its own time (and an inline text's cluster, which is
        content at the engagement's time), whatever the batch size."""
        join = self.join
        now_ms = int(time.time() * 1000)
        values = sorted(values, key=_join_order)
        released, dropped = join.expire(now_ms)
        out = [ClusteredEngagement(e, c) for e, c in released]
        if dropped:
            ENGAGEMENTS_UNRESOLVED.inc(dropped)
        clusters, held = join.clusters, join.queues
        for v in values:
            if type(v) is tuple:
                out += [ClusteredEngagement(e, c) for e, c in join.on_item(v[0], v[1])]
                continue
            c = clusters.get(v.item_id)
            if c is not None and v.user_id not in held:  # the common case, inlined: released at once
                out.append(ClusteredEngagement(v, c))
                continue
            released, dropped = join.on_engagement(v, now_ms)
            if not any(e is v for e, _ in released):
                ENGAGEMENTS_WAITING.inc()
            if dropped:
                ENGAGEMENTS_UNRESOLVED.inc(dropped)
            out += [ClusteredEngagement(e, c) for e, c in released]
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple:
        return self.join.snapshot()


def _join_order(v: tuple | Engagement) -> tuple[int, int]:
    return (v[2], 0) if type(v) is tuple else (v.ts_ms, 1)


class ItemTally(StatefulBatchLogic):
    """The engagement tallies of one item shard's items (item -> ``(engagements, positive, first_seen_ms,
    last_seen_ms)``, :func:`tally`), one dict per shard instead of one Bytewax key per item (a key costs a logic
    object and a call per batch; catalogues run to millions of items). Per batch, each item's latest clustered
    engagement carrying its tally (the index keeps only the latest per item, so the others are not sent on), in
    the order the items first appear in the batch. The snapshot is a shallow copy (the tallies are tuples).

    >>> from streams.contract import Engagement
    >>> t = ItemTally()
    >>> out, _ = t.on_batch([ClusteredEngagement(Engagement("u", i, "like", ts, True), 0) for i, ts in
    ...                      [("a", 1), ("b", 2), ("a", 3)]])
    >>> [(ce.engagement.item_id, ce.item_stats) for ce in out]
    [('a', (2, 2, 1, 3)), ('b', (1, 1, 2, 2))]
    """

    def __init__(self, resume: dict[str, tuple[int, int, int, int]] | None = None) -> None:
        self.stats: dict[str, tuple[int, int, int, int]] = dict(resume) if resume else {}

    def on_batch(self, values: list[ClusteredEngagement]) -> tuple[list[ClusteredEngagement], bool]:
        stats = self.stats
        latest: dict[str, ClusteredEngagement] = {}
        for ce in values:
            item = ce.engagement.item_id
            stats[item] = tally(stats.get(item), ce.engagement)
            latest[item] = ce
        return [ClusteredEngagement(ce.engagement, ce.cluster, stats[i]) for i, ce in latest.items()], \
            StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, tuple[int, int, int, int]]:
        return dict(self.stats)


def stable_shard(key: str, shards: int) -> str:
    """The Bytewax key of the shard of a user id or an item id (the join's and the transition rule's user shards,
    the content and tally item shards): stable across processes and restarts (crc32, not Python's salted hash),
    one shard per worker (:func:`streams.routing.shard_keys`: each shard's key lands on its own worker).

    >>> stable_shard("u1", 4) == stable_shard("u1", 4), stable_shard("anyone", 1)
    (True, '0')
    """
    return shard_keys(shards)[zlib.crc32(key.encode()) % shards] if shards > 1 else "0"


def cluster_events(events: Stream[Engagement | ContentEvent], config: ClusteringConfig,
                   counts: StepCounts = NO_COUNTS) -> tuple[Stream[EmbeddedItem], Stream[ClusteredEngagement]]:
    """Wire the content stage onto the stream of valid events; returns (items, clustered engagements), counted in
    ``counts`` as ``items`` and ``clustered`` by the steps that produce them."""
    embedder = ProcessEmbedder(config)
    shards = config.shards
    def shard_content(batch: list[Engagement | ContentEvent]) -> list[tuple[str, ContentEvent]]:
        contents = (inline_text_as_content(e) for e in batch)
        return [(stable_shard(c.item_id, shards), c) for c in contents if c is not None]

    keyed = op.flat_map_batch("shard_content", events, guard_batch("shard_content", shard_content))
    batches = op.stateful("micro_batch", keyed, lambda resume: _micro_batch_logic(config, resume, embedder.known))
    # One model call per Bytewax batch of micro-batches: cached texts leave micro_batch one by one (no wait), and a
    # burst of them (a catalogue re-sent) must still become one call and one downstream batch, not one per text.
    items = op.flat_map_batch("embed_and_assign", batches, counts.counting("items", guard_batch(
        "embed_and_assign", lambda kvs: embedder.embed([c for _, batch in kvs for c in batch]),
        split=lambda kvs: [(c, [("", [c])]) for _, batch in kvs for c in batch])))
    every_shard = shard_keys(shards)
    joined_in = op.merge(
        "items_and_engagements",
        # (item_id, cluster) only, not the vector and text: this goes to every shard, across processes too
        op.flat_map_batch("items_to_every_shard", items,
                          lambda batch: [(k, (i.item_id, i.cluster, i.ts_ms)) for i in batch for k in every_shard]),
        op.flat_map_batch("shard_engagements_by_user", events, shard_engagements_by_user(shards)),
    )
    def join(resume: tuple | None) -> UserShardJoin:
        return UserShardJoin(config.max_pending, config.max_wait_ms, resume)

    clustered = op.flat_map_batch("unkey", op.stateful_batch(
        "join_item_clusters", joined_in, lambda resume: GuardedLogic("join_item_clusters", join, resume)),
        counts.counting("clustered", unkey))
    return items, clustered


def shard_engagements_by_user(shards: int) -> Callable[[list[Engagement | ContentEvent]], list[tuple[str, Any]]]:
    """A batch's engagements keyed by their user's join shard (:func:`stable_shard`). One shard (one worker, the
    usual file or replay job) needs no hash per engagement: every key is ``"0"``.

    >>> e = Engagement("u1", "i1", "like", 1, True)
    >>> by4 = shard_engagements_by_user(4)([e])
    >>> shard_engagements_by_user(1)([e]) == [("0", e)], by4 == [(stable_shard("u1", 4), e)]
    (True, True)
    """
    if shards == 1:
        return lambda batch: [("0", e) for e in batch if type(e) is Engagement]
    return lambda batch: [(stable_shard(e.user_id, shards), e) for e in batch if type(e) is Engagement]


def key_by_item_shard(shards: int) -> Callable[[list[ClusteredEngagement]], list[tuple[str, ClusteredEngagement]]]:
    """A batch's clustered engagements keyed by their item's shard (:func:`stable_shard`), in arrival order."""
    if shards == 1:
        return lambda batch: [("0", ce) for ce in batch]
    return lambda batch: [(stable_shard(ce.engagement.item_id, shards), ce) for ce in batch]


def tally_items(clustered: Stream[ClusteredEngagement], counts: StepCounts = NO_COUNTS, shards: int = 1
                ) -> Stream[ClusteredEngagement]:
    """Each item's engagement tally (``item_stats``), latest per item and batch: what the index keeps (counted in
    ``counts`` as ``tallies``). Items are kept per shard (``shards``: one per worker, as the item join)."""
    by_shard = op.flat_map_batch("key_by_item_shard", clustered, key_by_item_shard(shards))
    # (a new step id: the per-item keys of earlier versions' step "tally_items" are not resumed)
    return op.flat_map_batch("unkey_tallies", op.stateful_batch(
        "tally_item_shards", by_shard, lambda resume: GuardedLogic("tally_items", ItemTally, resume)),
        counts.counting("tallies", unkey))


def _micro_batch_logic(config: ClusteringConfig, resume: list[Any] | None,
                       known: Callable[[str], bool] | None = None) -> MicroBatchLogic:
    batcher: MicroBatcher[ContentEvent] = MicroBatcher(config.max_batch, config.max_latency_s)
    batcher.restore(resume or [], time.monotonic())
    track_embed_queue(batcher)  # driftrag_embed_queue_depth, read at scrape time
    return MicroBatchLogic(batcher, known=known)
