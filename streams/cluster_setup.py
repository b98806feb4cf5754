"""What a job needs before its first event can be clustered: the embedder, the on-disk embedding store, the
texts embedded up front, and the codebook (loaded from its store, or bootstrapped from the run's own content).

    ClusterSetup(settings, args, mode, validator, generator).config()  ->  ClusteringConfig

Split out of ``streams/job.py``'s ``Job`` (which builds the source, sinks and flow): this is the model and codebook
side, the part that reads every content text of a replay and may wait on Kafka for a catalogue.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from operators.content import ContentEmbedder
from operators.embedding import make_embedder, model_id
from streams.content_stage import ClusteringConfig
from streams.contract import ContentEvent, Engagement, RawMessage, Validator
from streams.report import say
from streams.settings import Settings

__all__ = ["ClusterSetup"]


class ClusterSetup:
    """The clustering side of one run. ``mode``: ``"kafka"``, ``"files"`` or ``"embedded"`` (where the bootstrap
    content comes from); ``generator``: the embedded mode's ``GeneratorConfig``. After :meth:`config`,
    ``codebook`` is the codebook the run clusters with and ``warm_cache`` says what was embedded up front (texts,
    from the store, embedded) or is None."""

    def __init__(self, settings: Settings, args: argparse.Namespace, mode: str, validator: Validator,
                 generator: Any = None) -> None:
        self.settings, self.args, self.mode, self.validator, self.generator = settings, args, mode, validator, generator
        self.replay = bool(getattr(args, "replay", False))
        self.codebook: Any = None
        self.warm_cache: dict[str, int] | None = None

    def config(self) -> ClusteringConfig:
        es = self.settings.embedding
        embedder = functools.cache(lambda: make_embedder(es.backend, es.model, batch_size=es.batch_size))
        warm = [p for p in (self.args.items, self.args.events) if p is not None] if self.replay else []
        warm += getattr(self.args, "warm_cache", None) or []
        store = self.embedding_store_factory()
        cache = self.embed_all_texts(embedder, warm, store) if warm else None
        self.codebook = self.load_or_bootstrap_codebook(embedder, cache, store)
        n_proc = len(self.args.addresses.split(";")) if self.args.addresses else 1
        return ClusteringConfig(
            embedder_factory=embedder, codebook=self.codebook, max_batch=es.batch_size,
            max_latency_s=es.max_latency_ms / 1000, cache_entries=es.cache_entries,
            max_pending=es.max_pending_per_item, max_wait_ms=es.max_wait_ms,
            shards=n_proc * self.settings.run.workers_per_process, cache=cache, store_factory=store)

    def embedding_store_factory(self) -> Callable[[Any], Any] | None:
        """Opens the on-disk embeddings of an embedder (``embedding.store_dir``), or None when unset."""
        es = self.settings.embedding
        if es.store_dir is None:
            return None
        from index.embedding_store import EmbeddingStore
        from operators.embedding import model_fingerprint

        @functools.cache  # one connection per embedder (per process): the bootstrap and the stream share it
        def open_store(embedder):  # noqa: ANN001, ANN202
            store = EmbeddingStore.for_embedder(es.store_dir, embedder, model=model_id(es.model),
                                                fingerprint=model_fingerprint(es.model),
                                                max_entries=es.store_max_entries)
            say(f"embedding store {store.path} ({len(store):,} vectors)")
            return store

        return open_store

    def embed_all_texts(self, embedder: Callable[[], Any], paths: list[Path],
                        store_factory: Callable[[Any], Any] | None = None) -> Any:
        """Embed every distinct content text of these JSONL files (content events, and engagements' inline text) up
        front, in large batches, into the cache the content stage starts from: the job then never waits on the
        model for them. Replay does this for its own files; `--warm-cache` for a known catalogue."""
        from operators.embedding_cache import EmbeddingCache

        texts: dict[str, None] = {}
        k = self.settings.kafka
        topics = (k.topic("items"), k.topic("engagements"))
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"file not found: {path}")
            with path.open("rb") as f:
                for n, line in enumerate(f):
                    line = line.rstrip(b"\r\n")
                    for topic in topics:  # a content event, else an engagement that may carry its item's text
                        ev = self.validator.validate(RawMessage(topic, 0, n, None, line))
                        if type(ev) in (ContentEvent, Engagement):
                            if ev.text is not None:
                                texts[ev.text] = None
                            break
        emb = embedder()
        cache = EmbeddingCache(max(self.settings.embedding.cache_entries, len(texts)),
                               store=store_factory(emb) if store_factory else None)
        fill = ContentEmbedder(emb, None, cache).vectors  # embeds what the cache lacks, and keeps it
        todo, chunk, t0 = list(texts), 4096, time.monotonic()
        for i in range(0, len(todo), chunk):
            fill(todo[i:i + chunk])
            stored = f", {cache.store_hits:,} from the store" if cache.store is not None else ""
            say(f"embedded {min(i + chunk, len(todo)):,}/{len(todo):,} known content texts ({emb.name}{stored}, "
                f"{time.monotonic() - t0:.1f}s)")
        self.warm_cache = {"texts": len(todo), "from_store": cache.store_hits, "embedded": cache.misses}
        return cache

    def load_or_bootstrap_codebook(self, embedder: Callable[[], Any], cache: Any = None,
                                   store_factory: Callable[[Any], Any] | None = None) -> Any:
        """The current codebook of the store; without one, bootstrap it from this run's own content."""
        from index.codebooks import CodebookStore
        from operators.clusters import build_codebook

        cs = self.settings.clusters
        store = CodebookStore(cs.codebook_dir)
        try:
            cb = store.load()
            say(f"codebook {cb.version}: {cb.k} interest clusters from {cs.codebook_dir}")
            return cb
        except FileNotFoundError:
            if self.mode == "files" and self.args.items is None:
                raise FileNotFoundError(
                    f"no codebook in {cs.codebook_dir}: build one with `driftrag clusters build --items FILE`, "
                    "pass --items, or run with --no-clusters to validate only") from None
        if self.mode == "kafka" and self.args.process_id not in (None, 0):
            return self._wait_for_codebook(store)  # process 0 bootstraps; the others share its codebook
        texts = self.bootstrap_texts(cs.sample, cs.k)
        emb = embedder()
        say(f"no codebook in {cs.codebook_dir}: bootstrapping {cs.k} clusters from {len(texts):,} items "
            f"({emb.name})")
        if cache is None and store_factory is not None:  # a restart re-bootstraps from stored vectors
            from operators.embedding_cache import EmbeddingCache

            cache = EmbeddingCache(0, store=store_factory(emb))
        vectors = emb.encode(texts) if cache is None else ContentEmbedder(emb, None, cache).vectors(texts)
        cb = build_codebook(vectors, texts, cs.k, model=model_id(self.settings.embedding.model))
        labels = "; ".join(f"{c}: {cb.label(c)}" for c in range(min(cb.k, 4))) + (" ..." if cb.k > 4 else "")
        if self.mode == "kafka":  # a deployment keeps it: restarts and other processes use the same clusters
            store.save(cb)
            say(f"codebook {cb.version} saved to {cs.codebook_dir}: {labels}")
        else:
            say(f"codebook {cb.version} (in memory): {labels}")
        return cb

    @staticmethod
    def _wait_for_codebook(store: Any) -> Any:
        while True:
            try:
                return store.load()
            except FileNotFoundError:
                say(f"waiting for process 0 to bootstrap the codebook in {store.root}")
                time.sleep(5)

    def bootstrap_texts(self, n: int, k: int) -> list[str]:
        """Up to ``n`` valid content texts of this run's own input: generator, items file, or items topic."""
        if self.mode == "kafka":
            return self._bootstrap_texts_from_kafka(n, k)
        if self.mode == "files":
            from streams.clusters_cli import read_items

            texts = list(read_items(self.args.items, self.validator)[0].values())[:n]
        else:
            from streams.generator import WorkloadGenerator

            items_topic = self.settings.kafka.topic("items")
            raw = (RawMessage(items_topic, 0, i, m.key, m.value)
                   for i, m in enumerate(WorkloadGenerator(self.generator).messages()) if m.topic == "items")
            content = (ev for ev in map(self.validator.validate, raw) if type(ev) is ContentEvent)
            texts = [ev.text for ev in itertools.islice(content, n)]  # stops as soon as it has n
        if len(texts) < k:
            raise ValueError(f"{len(texts)} content texts cannot bootstrap {k} clusters")
        return texts

    def _bootstrap_texts_from_kafka(self, n: int, k: int, min_per_cluster: int = 20) -> list[str]:
        """Read the items topic from the start; wait (saying so) until it holds enough content to cluster."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition
        from confluent_kafka.admin import AdminClient

        kafka, topic = self.settings.kafka, self.settings.kafka.topic("items")
        md = AdminClient(kafka.client()).list_topics(topic, timeout=30).topics.get(topic)
        if md is None or md.error is not None:
            raise FileNotFoundError(f"topic {topic!r} not found on {kafka.bootstrap_servers}: "
                                    "create it with `driftrag topics create`")
        consumer = Consumer(kafka.client(**{"group.id": "driftrag-bootstrap", "enable.auto.commit": False,
                                            "enable.partition.eof": True}))
        consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        texts: dict[str, str] = {}
        need, eof, last_said = k * min_per_cluster, set(), 0.0
        try:
            while len(texts) < n:
                for m in consumer.consume(500, 1.0):
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            eof.add(m.partition())
                            continue
                        raise RuntimeError(f"reading {topic}: {m.error()}")
                    ev = self.validator.validate(RawMessage(topic, m.partition(), m.offset(), m.key(), m.value()))
                    if type(ev) is ContentEvent:
                        texts[ev.item_id] = ev.text
                if len(eof) == len(md.partitions):
                    if len(texts) >= need:
                        break
                    if time.monotonic() - last_said > 10:
                        say(f"no codebook yet: waiting for {need:,} content events on {topic} to bootstrap "
                            f"{k} clusters (have {len(texts):,}); or run `driftrag clusters build`")
                        last_said = time.monotonic()
                    eof.clear()  # keep reading what arrives
        finally:
            consumer.close()
        return list(texts.values())[:n]
