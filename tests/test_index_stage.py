"""Dataflow -> index mutations: one per key per batch, the latest state, and the item tally the join keeps."""

from __future__ import annotations

from streams.content_stage import ClusteredEngagement, _join_step, tally
from streams.contract import Engagement
from streams.index_stage import latest_pairs_to_mutations, latest_stats_to_mutations
from streams.transitions_stage import PairState


def eng(item: str, ts: int, positive: bool = True) -> Engagement:
    return Engagement("u", item, "like" if positive else "skip", ts, positive, ingest_ms=ts + 1)


def test_tally_counts_engagements_positives_and_seen_times():
    stats = None
    for e in (eng("i", 50), eng("i", 10, positive=False), eng("i", 30)):
        stats = tally(stats, e)
    assert stats == (3, 2, 10, 50)


def test_join_step_releases_waiting_engagements_with_their_tally():
    from operators.content import EmbeddedItem

    step = _join_step(max_pending=10, max_wait_ms=60_000)
    state, out = step(None, eng("i", 1))
    assert out == []  # waits for the item's cluster
    state, out = step(state, EmbeddedItem("i", 0, 4, 0.1, False, None, "text"))
    assert [(ce.cluster, ce.item_stats) for ce in out] == [(4, (1, 1, 1, 1))]
    state, out = step(state, eng("i", 5, positive=False))
    assert [(ce.cluster, ce.item_stats) for ce in out] == [(4, (2, 1, 1, 5))]


def test_one_stats_mutation_per_item_per_batch_with_the_latest_tally():
    batch = [ClusteredEngagement(eng("a", 1), 2, (1, 1, 1, 1)), ClusteredEngagement(eng("b", 2), 3, (1, 1, 2, 2)),
             ClusteredEngagement(eng("a", 3), 2, (2, 2, 1, 3))]
    muts = {m.key: m.value for m in latest_stats_to_mutations(batch)}
    assert set(muts) == {"stats:a", "stats:b"}
    assert (muts["stats:a"]["engagements"], muts["stats:a"]["last_seen_ms"], muts["stats:a"]["ingest_ms"]) == (2, 3, 4)


def test_one_pair_mutation_per_pair_per_batch_ranked():
    old = PairState((1, 2), ((3, 1.0),), None, 1.0, 10)
    new = PairState((1, 2), ((3, 1.0), (4, 3.0)), {3: 1.0}, 4.0, 20)
    other = PairState((2, 1), ((5, 2.0),), None, 2.0, 15)
    muts = {m.key: m.value for m in latest_pairs_to_mutations([old, other, new])}
    assert set(muts) == {"pair:1,2", "pair:2,1"}
    succ = muts["pair:1,2"]["successors"]
    assert [s["cluster"] for s in succ] == [4, 3] and succ[0]["score"] == 0.75 and succ[1]["trend"] == -0.75
    assert muts["pair:1,2"]["ts_ms"] == 20
