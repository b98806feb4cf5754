"""Dataflow -> index mutations: one per key per batch, the latest state; the user-shard join and the item tally."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.content_stage import ClusteredEngagement, ItemTally, UserShardJoin, tally, tally_items
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


def test_user_shard_join_releases_each_users_engagements_in_order_and_snapshots():
    def item(item_id: str, cluster: int) -> tuple[str, int, int]:
        return (item_id, cluster, 0)  # (item, cluster, event time): published before every engagement here

    def released(out: list[ClusteredEngagement]) -> list[tuple[str, int, int]]:
        return [(ce.engagement.user_id, ce.engagement.ts_ms, ce.cluster) for ce in out]

    join = UserShardJoin(max_pending=10, max_wait_ms=60_000)
    assert join.on_batch([eng("i", 1), eng("i", 2)])[0] == []  # both wait for the item's cluster
    out, retain = join.on_batch([item("i", 4), eng("i", 3), eng("j", 4)])
    assert released(out) == [("u", 1, 4), ("u", 2, 4), ("u", 3, 4)] and retain is False
    # u waits for j; u's next engagement, on a known item, queues behind it; another user's does not
    out, _ = join.on_batch([eng("i", 5), Engagement("v", "i", "like", 6, True)])
    assert released(out) == [("v", 6, 4)]
    again = UserShardJoin(10, 60_000, join.snapshot())  # recovery keeps the clusters and the queue
    out, _ = again.on_batch([item("j", 7)])
    assert released(out) == [("u", 4, 7), ("u", 5, 4)]


def test_item_tally_sends_the_latest_engagement_of_a_batch_with_the_tally():
    t = ItemTally()
    out, _ = t.on_batch([ClusteredEngagement(eng("i", 1), 4), ClusteredEngagement(eng("i", 5, positive=False), 4)])
    assert [(ce.engagement.ts_ms, ce.item_stats) for ce in out] == [(5, (2, 1, 1, 5))]
    out, _ = ItemTally(t.snapshot()).on_batch([ClusteredEngagement(eng("i", 3), 4)])
    assert out[0].item_stats == (3, 2, 1, 5)


@pytest.mark.parametrize("shards,batch_size", [(1, 1), (1, 50), (4, 50), (9, 333)])
def test_item_shards_end_with_every_items_tally_over_all_its_engagements(shards, batch_size):
    """Items kept per shard: the last tally sent for each item is :func:`tally` over all of its engagements, and a
    batch sends each item it touched once, whatever the shard count and batch size (item ids collide on purpose:
    60 items, 2,000 engagements)."""
    import random

    rng = random.Random(shards + batch_size)
    events = [ClusteredEngagement(eng(f"i{rng.randrange(60)}", rng.randrange(500), rng.random() < 0.6), 0)
              for _ in range(2_000)]
    flow = Dataflow("tally_test")
    got: list[ClusteredEngagement] = []
    op.output("out", tally_items(op.input("in", flow, TestingSource(events, batch_size)), shards=shards),
              TestingSink(got))
    run_main(flow)
    expected: dict[str, tuple] = {}
    for ce in events:
        expected[ce.engagement.item_id] = tally(expected.get(ce.engagement.item_id), ce.engagement)
    last = {ce.engagement.item_id: ce.item_stats for ce in got}
    assert last == expected
    assert len(got) <= sum(len({ce.engagement.item_id for ce in events[i:i + batch_size]})
                           for i in range(0, len(events), batch_size))


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
