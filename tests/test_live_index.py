"""LiveIndex logic without HTTP or Kafka: mutations in, context out; snapshots; order independence; bad records;
and the dataflow's mutations from a real embedded run."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from index.live import BadRequest, LiveIndex, NotFound, NotReady
from index.mutations import (
    Mutation,
    MutationError,
    codebook_mutation,
    decode,
    encode,
    item_mutation,
    pair_mutation,
    stats_mutation,
)

DIM, K = 8, 6
RNG = np.random.default_rng(3)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


CENTROIDS = unit(RNG.standard_normal((K, DIM)))
KEYWORDS = [[f"topic{c}", f"word{c}"] for c in range(K)]


def succ(*pairs: tuple[int, float], trend: float = 0.0) -> list[dict]:
    total = sum(n for _, n in pairs)
    return [{"cluster": c, "count": n, "score": n / total, "trend": trend} for c, n in pairs]


def world(n_items: int = 60) -> list[Mutation]:
    muts = [codebook_mutation(CENTROIDS, KEYWORDS, version="v1", model="test")]
    for i in range(n_items):
        c = i % K
        vec = unit(CENTROIDS[c] + 0.1 * RNG.standard_normal(DIM))
        muts.append(item_mutation(f"it{i:03d}", cluster=c, distance=0.1, novel=False, text=f"item {i} of {c}",
                                  ts_ms=1_000 + i, ingest_ms=0, vector=vec))
        muts.append(stats_mutation(f"it{i:03d}", cluster=c, engagements=i + 1, positive=i // 2,
                                   first_seen_ms=1_000 + i, last_seen_ms=10_000 + 7 * i % 50, ingest_ms=0))
    muts.append(pair_mutation(0, 1, successors=succ((2, 30.0), (3, 10.0)), support=40.0, half_life_ms=1e9,
                              ts_ms=20_000, ingest_ms=0))
    muts.append(pair_mutation(1, 2, successors=succ((4, 5.0), (5, 15.0)), support=20.0, half_life_ms=1e9,
                              ts_ms=20_000, ingest_ms=0))
    muts.append(pair_mutation(3, 4, successors=succ((0, 1.0)), support=1.0, half_life_ms=1e9,
                              ts_ms=20_000, ingest_ms=0))
    return muts


@pytest.fixture
def live() -> LiveIndex:
    ix = LiveIndex(backend="cpu", min_support=3.0)
    ix.apply(world())
    return ix


def test_exact_pair_ranks_by_share_and_labels_by_keywords(live):
    ctx = live.context(clusters=[0, 1], k=2)
    assert ctx["source"] == "exact"
    assert [s["cluster"] for s in ctx["successors"]] == [2, 3]
    assert ctx["successors"][0]["score"] == pytest.approx(0.75)
    assert ctx["labels"] == ["topic0, word0", "topic1, word1"]
    assert 'cluster 2 "topic2, word2": 75% of next steps' in ctx["prompt"]
    assert {i["cluster"] for i in ctx["items"]} == {2, 3} and len(ctx["items"]) == 4


def test_sparse_pair_backs_off_to_nearest_supported_pairs_never_to_itself(live):
    ctx = live.context(clusters=[3, 4])  # support 1 < 3
    assert ctx["source"] == "neighbor"
    assert all(s["cluster"] not in (3, 4) for s in ctx["successors"])
    assert ctx["evidence"]["pairs"] and [3, 4] not in ctx["evidence"]["pairs"]


def test_no_supported_neighbour_means_global():
    ix = LiveIndex(backend="cpu", min_support=1e6)
    ix.apply(world())
    ctx = ix.context(clusters=[0, 1])
    assert ctx["source"] == "global"
    assert all(s["cluster"] not in (0, 1) for s in ctx["successors"])


def test_history_applies_the_transition_rule(live):
    # clusters of it000..: i % 6. History 0,0,1,0 -> (h1, h2) = (1, 0); unknown ids reported.
    ctx = live.context(history=["it000", "it006", "it001", "nope", "it012"])
    assert ctx["pair"] == [1, 0]
    assert ctx["unknown_items"] == ["nope"]
    assert live.context(history=["it000", "it001"])["pair"] == [0, 1]
    assert live.context(history=["nope"])["source"] == "global"


def test_trend_mode_ranks_by_trend():
    ix = LiveIndex(backend="cpu", min_support=0.0)
    ix.apply([codebook_mutation(CENTROIDS, KEYWORDS, version="v1", model="t"),
              pair_mutation(0, 1, successors=[{"cluster": 2, "count": 9.0, "score": 0.9, "trend": -0.1},
                                              {"cluster": 3, "count": 1.0, "score": 0.1, "trend": 0.1}],
                            support=10.0, half_life_ms=1e9, ts_ms=0, ingest_ms=0)])
    assert [s["cluster"] for s in ix.context(clusters=[0, 1], mode="trend")["successors"]] == [3, 2]
    assert [s["cluster"] for s in ix.context(clusters=[0, 1])["successors"]] == [2, 3]


def test_counts_decay_to_the_watermark():
    ix = LiveIndex(backend="cpu", min_support=0.0)
    ix.apply([codebook_mutation(CENTROIDS, KEYWORDS, version="v1", model="t"),
              pair_mutation(0, 1, successors=succ((2, 8.0)), support=8.0, half_life_ms=1_000, ts_ms=0,
                            ingest_ms=0),
              pair_mutation(2, 3, successors=succ((4, 1.0)), support=1.0, half_life_ms=1_000, ts_ms=2_000,
                            ingest_ms=0)])
    assert ix.context(clusters=[0, 1])["successors"][0]["count"] == pytest.approx(2.0)  # two half-lives


def test_errors_are_typed(live):
    with pytest.raises(BadRequest):
        live.context()
    with pytest.raises(BadRequest):
        live.context(clusters=[0, 1], history=["x"])
    with pytest.raises(BadRequest):
        live.context(clusters=[0, 1], k=0)
    with pytest.raises(NotFound):
        live.context(clusters=[0, 99])
    with pytest.raises(NotFound):
        live.cluster(99)
    with pytest.raises(NotReady):
        LiveIndex(backend="cpu").context(clusters=[0, 1])
    with pytest.raises(NotReady):
        live.search(text="needs a model")


def test_bad_mutations_are_counted_and_skipped_the_rest_applies(live):
    before = live.rejected
    good = item_mutation("fresh", cluster=1, distance=0.0, novel=False, text="x", ts_ms=1, ingest_ms=0,
                         vector=CENTROIDS[1])
    bad_vec = Mutation("item:bad", {**good.value, "item_id": "bad", "vector": "AAAA"})
    live.apply([bad_vec, Mutation("pair:zz", {"successors": []}), good])
    assert live.rejected == before + 2
    assert live.search(vector=CENTROIDS[1], k=1)["items"][0]["item_id"] in {"fresh"} | set(live.item_payloads)
    assert "fresh" in live.item_payloads and "bad" not in live.item_payloads
    with pytest.raises(MutationError):
        decode(b"nonsense:1", b"{}")
    with pytest.raises(MutationError):
        decode(b"item:x", b"not json")


def test_wire_round_trip_and_delete():
    ix = LiveIndex(backend="cpu")
    ix.apply([decode(*encode(m)) for m in world()])
    assert len(ix.items) == 60
    ix.apply([decode(b"item:it000", None)])
    assert len(ix.items) == 59 and "it000" not in ix.item_payloads
    assert all(h["item_id"] != "it000" for h in ix.search(vector=CENTROIDS[0], k=59)["items"])


def test_search_returns_nearest_items_with_payload(live):
    res = live.search(vector=CENTROIDS[2].tolist(), k=5)
    scores = [h["score"] for h in res["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(h["cluster"] == 2 for h in res["items"][:5])
    with pytest.raises(BadRequest):
        live.search(vector=[1.0, 2.0], k=3)


def test_answers_do_not_depend_on_mutation_order_or_replays():
    """What a replica gets from a changelog partitioned differently, or replayed after a crash."""
    muts = world()
    a, b = LiveIndex(backend="cpu"), LiveIndex(backend="cpu")
    a.apply(muts)
    shuffled = muts[:1] + random.Random(1).sample(muts[1:], len(muts) - 1)
    for i in range(0, len(shuffled), 7):
        b.apply(shuffled[i:i + 7])
    b.apply(muts[1:40])  # a replay of older full states of the same keys changes nothing
    for q in ([0, 1], [1, 2], [3, 4], [5]):
        ca, cb = a.context(clusters=q), b.context(clusters=q)
        for c in (ca, cb):
            c.pop("freshness")
            c.pop("prompt")
        assert ca == cb


def test_snapshot_round_trip_keeps_answers_offsets_and_watermark(live, tmp_path):
    live.apply([], offsets={"t.index-mutations": {0: 10, 1: 7}})
    live.save_snapshot(tmp_path)
    back = LiveIndex.load_snapshot(tmp_path, backend="cpu", min_support=3.0)
    assert back.offsets == {"t.index-mutations": {0: 10, 1: 7}}
    assert back.watermark_ts == live.watermark_ts and back.version == live.version
    for q in ([0, 1], [3, 4], [2]):
        assert back.context(clusters=q) | {"freshness": None} == live.context(clusters=q) | {"freshness": None}
    assert back.search(vector=CENTROIDS[3], k=4)["items"] == live.search(vector=CENTROIDS[3], k=4)["items"]
    assert back.cluster(2)["size"] == live.cluster(2)["size"] == 10
    with pytest.raises(FileNotFoundError):
        LiveIndex.load_snapshot(tmp_path / "none")


def test_snapshots_are_switched_atomically_and_old_ones_pruned(live, tmp_path):
    for _ in range(4):
        live.apply([stats_mutation("it001", cluster=1, engagements=5, positive=5, first_seen_ms=0,
                                   last_seen_ms=live.version, ingest_ms=0)])
        live.save_snapshot(tmp_path, keep=2)
    assert len(list(tmp_path.glob("snap-*"))) == 2
    assert not list(tmp_path.glob(".*tmp*"))
    assert LiveIndex.load_snapshot(tmp_path).version == live.version


def test_freshness_measures_ingest_to_apply():
    clock = [100.0]
    ix = LiveIndex(backend="cpu", clock=lambda: clock[0])
    ix.apply([stats_mutation("a", cluster=0, engagements=1, positive=1, first_seen_ms=5, last_seen_ms=5,
                             ingest_ms=99_750)])
    assert list(ix.freshness_ms) == [250.0]
    clock[0] = 101.0
    assert ix.freshness() == {"watermark_ts": 5, "index_version": 1, "lag_ms": 1_250}


def test_drift_status_ranks_clusters_and_shows_in_the_cluster_view(live, tmp_path):
    from index.mutations import drift_mutation

    alert = {"alert_id": "a1", "cluster": 2, "kind": "engagement", "severity": "critical"}
    live.apply([drift_mutation(2, scores={"engagement": 2.5, "volume": 0.2}, alerts=[alert],
                               reference={"policy": "rolling", "since_ms": 0}, ts_ms=30_000),
                drift_mutation(4, scores={"transition": 1.1}, alerts=[], reference={}, ts_ms=30_000),
                drift_mutation(1, scores={}, alerts=[], reference={}, ts_ms=30_000)])
    ranking = live.drift_ranking()["clusters"]
    assert [(r["cluster"], r["kind"], r["severity"]) for r in ranking] == [
        (2, "engagement", "critical"), (4, "transition", None), (1, None, None)]
    assert live.cluster(2)["drift"]["alerts"] == [alert] and live.cluster(3)["drift"] is None
    live.save_snapshot(tmp_path)
    assert LiveIndex.load_snapshot(tmp_path).drift_ranking()["clusters"] == ranking
    with pytest.raises(BadRequest):
        live.drift_ranking(0)


def test_replicas_fed_in_another_order_answer_alike():
    """(a, b) and (b, a) get the same pair vector, so a back-off to neighbours meets exact ties: replicas of one
    changelog applied in another order must still choose the same neighbours (ties break by pair id)."""
    rng = random.Random(9)
    pairs = []
    for a in range(K):
        for b in range(K):
            if a != b:
                n = float(rng.randint(1, 40))
                pairs.append(pair_mutation(a, b, successors=succ(((a + b) % K, n), ((a * b + 1) % K, n / 2)),
                                           support=n * 1.5, half_life_ms=1e9, ts_ms=20_000, ingest_ms=0))
    answers = []
    for seed in range(4):
        order = pairs[:]
        random.Random(seed).shuffle(order)
        ix = LiveIndex(backend="cpu", min_support=30.0)
        ix.apply([codebook_mutation(CENTROIDS, KEYWORDS, version="v1", model="test")])
        ix.apply(order)
        answers.append([ix.context(clusters=[a, b], k=3) for a in range(K) for b in range(K) if a != b])
    strip = [[{k: v for k, v in c.items() if k != "freshness" and k != "prompt"} for c in ans] for ans in answers]
    assert any(c["source"] == "neighbor" for c in answers[0])
    for other in strip[1:]:
        assert other == strip[0]


def test_the_pairs_time_scale_is_in_the_answer_and_no_decay_survives_the_wire_and_snapshots(tmp_path):
    ix = LiveIndex(backend="cpu", min_support=0.0)
    weights = (("1d", 0.0), ("2d", 0.01), ("7d", 0.09), ("30d", 0.2), ("none", 0.7))
    muts = [codebook_mutation(CENTROIDS, KEYWORDS, version="v1", model="t"),
            pair_mutation(0, 1, successors=succ((2, 8.0)), support=8.0, half_life_ms=float("inf"), ts_ms=0,
                          ingest_ms=0, weights=weights),
            pair_mutation(1, 2, successors=succ((3, 4.0)), support=4.0, half_life_ms=7 * 86_400_000, ts_ms=0,
                          ingest_ms=0, weights=(("7d", 1.0),)),
            pair_mutation(5, 6, successors=succ((3, 1.0)), support=1.0, half_life_ms=1_000, ts_ms=10**9,
                          ingest_ms=0)]
    key, value = encode(muts[1])
    wire = orjson.loads(value)
    assert wire["half_life_ms"] is None and wire["half_life"] == "none" and wire["weights"]["none"] == 0.7
    ix.apply([decode(*encode(m)) for m in muts])  # the watermark is now 10^9 ms: 11.6 days after (0, 1)
    ctx = ix.context(clusters=[0, 1])
    assert ctx["successors"][0]["count"] == pytest.approx(8.0)  # no decay: not decayed to the watermark
    assert ctx["evidence"]["half_life"] == "none" and ctx["evidence"]["weights"]["none"] == 0.7
    assert "(8.0 recent transitions, no decay)" in ctx["prompt"]
    assert "(4.0 recent transitions, half-life 7d)" not in ix.context(clusters=[1, 2])["prompt"]  # decayed
    assert ", half-life 7d)" in ix.context(clusters=[1, 2])["prompt"]
    assert ix.pair_history(0, 1)["half_life"] == "none"
    ix.save_snapshot(tmp_path)
    back = LiveIndex.load_snapshot(tmp_path, backend="cpu", min_support=0.0)
    assert back.context(clusters=[0, 1])["successors"] == ctx["successors"]
    assert back.context(clusters=[0, 1])["evidence"] == ctx["evidence"]
