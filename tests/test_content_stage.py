"""The content stage: micro-batches on a latency budget, the real model, clusters, engagements waiting for content."""

from __future__ import annotations

from datetime import UTC, datetime

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from operators.microbatch import MicroBatcher
from streams.content_stage import ClusteredEngagement, ClusteringConfig, MicroBatchLogic, cluster_events
from streams.contract import ContentEvent, Engagement


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_batches_close_on_the_latency_budget():
    clock = FakeClock()
    logic = MicroBatchLogic(MicroBatcher(max_size=3, max_latency_s=0.020), clock)
    assert logic.on_item("a") == ([], False) and logic.on_item("b") == ([], False)
    wake = logic.notify_at()
    assert 0 <= (wake - datetime.now(UTC)).total_seconds() <= 0.021
    clock.t += 0.010
    assert logic.on_notify() == ([], False)  # woken early: budget not spent, nothing emitted
    clock.t += 0.010
    assert logic.on_notify() == ([["a", "b"]], False)
    assert logic.notify_at() is None


def test_batches_close_on_size_and_at_eof():
    logic = MicroBatchLogic(MicroBatcher(max_size=2, max_latency_s=10), FakeClock())
    assert logic.on_item(1) == ([], False)
    assert logic.on_item(2) == ([[1, 2]], False)
    logic.on_item(3)
    assert logic.snapshot() == [3]
    assert logic.on_eof() == ([[3]], False)


class Centroids:
    """A tiny codebook: one centroid per topic from the real model's vectors."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.centroids = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.dim = vectors.shape[1]

    def assign(self, v: np.ndarray):
        sims = v @ self.centroids.T
        return sims.argmax(1), (1 - sims.max(1)).astype(np.float32)

    def is_novel(self, d: float) -> bool:
        return d > 0.75


TOPICS = [
    "sourdough bread, cast iron skillet and braised short ribs for a weeknight dinner",
    "goalkeeper saves a penalty in the champions league final, midfield pressing and offside",
    "telescope views of Jupiter's moons, nebula photography and a meteor shower tonight",
]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def embedder():
    from operators.embedding import make_embedder

    return make_embedder("onnx")


def test_content_stage_end_to_end(embedder):
    codebook = Centroids(embedder.encode(TOPICS))
    cfg = ClusteringConfig(embedder_factory=lambda: embedder, codebook=codebook, max_batch=2, max_latency_s=0.01,
                           max_pending=2)
    e = lambda u, item, ts, text=None: Engagement(u, item, "like", ts, True, None, f"{u}{item}{ts}", text)  # noqa: E731
    events = [
        e("u1", "soccer-1", 1),                    # before its content: waits
        ContentEvent("bread-1", "homemade sourdough bread with a cast iron skillet", 2),
        ContentEvent("soccer-1", "a late penalty save decides the league final", 3),
        e("u1", "bread-1", 4),                     # content known: clustered at once
        e("u2", "star-1", 5, text="a meteor shower seen through a small telescope"),  # inline text
        e("u3", "ghost", 6), e("u3", "ghost", 7), e("u3", "ghost", 8),  # never gets content: bounded wait
        ContentEvent("bread-2", "homemade sourdough bread with a cast iron skillet", 9),  # same text: cached
    ]
    dropped0 = counter("driftrag_engagements_unresolved_total")
    hits0 = counter("driftrag_embedding_cache_total", result="hit")
    flow = Dataflow("content_stage_test")
    src = op.input("in", flow, TestingSource(events))
    items, clustered = cluster_events(src, cfg)
    got_items, got_eng = [], []
    op.output("items", items, TestingSink(got_items))
    op.output("eng", clustered, TestingSink(got_eng))
    run_main(flow)

    by_item = {i.item_id: i.cluster for i in got_items}
    assert by_item == {"bread-1": 0, "bread-2": 0, "soccer-1": 1, "star-1": 2}
    assert all(0 <= i.distance < 0.75 and not i.novel for i in got_items)
    assert all(i.vector.shape == (384,) for i in got_items)
    assert sorted((c.engagement.user_id, c.engagement.item_id, c.cluster) for c in got_eng) == [
        ("u1", "bread-1", 0), ("u1", "soccer-1", 1), ("u2", "star-1", 2)]
    assert all(isinstance(c, ClusteredEngagement) for c in got_eng)
    assert counter("driftrag_engagements_unresolved_total") - dropped0 == 1  # 3 waited, bound 2: 1 dropped
    assert counter("driftrag_embedding_cache_total", result="hit") - hits0 == 1  # bread-2's text, a later batch
