"""Dataflow steps from embedded items, clustered engagements and pair states to index mutations.

    EmbeddedItem        -> item_to_mutation                     item:{id}   vector + payload
    ClusteredEngagement -> stats_to_mutation (latest per item)  stats:{id}  the item's tally (tally_items)
    PairState           -> pair_to_mutation (latest per pair)   pair:c1,c2  every successor, ranked

Every mutation is the full current state of its key (see ``index/mutations.py``), so the sinks downstream are
idempotent: a replay after recovery, or a compacted changelog, gives the same index.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream

from index.mutations import Mutation, item_mutation, pair_mutation, stats_mutation
from operators.content import EmbeddedItem
from streams.content_stage import ClusteredEngagement
from streams.errors import guard_batch
from streams.transitions_stage import PairState


def item_to_mutation(i: EmbeddedItem) -> Mutation:
    return item_mutation(i.item_id, cluster=i.cluster, distance=i.distance, novel=i.novel, text=i.text,
                         ts_ms=i.ts_ms, ingest_ms=i.ingest_ms, vector=i.vector)


def latest_stats_to_mutations(clustered: list[ClusteredEngagement]) -> list[Mutation]:
    """One stats mutation per item of a batch, from its latest tally (``content_stage.tally_items``)."""
    latest = {ce.engagement.item_id: ce for ce in clustered}
    out = []
    for item_id, ce in latest.items():
        n, pos, first, last = ce.item_stats
        out.append(stats_mutation(item_id, cluster=ce.cluster, engagements=n, positive=pos, first_seen_ms=first,
                                  last_seen_ms=last, ingest_ms=ce.engagement.ingest_ms))
    return out


def pair_to_mutation(st: PairState) -> Mutation:
    return pair_mutation(
        st.pair[0], st.pair[1],
        successors=[{"cluster": s.cluster, "count": s.count, "score": s.score, "trend": s.trend}
                    for s in st.successors],
        support=st.support, half_life_ms=st.half_life_ms, ts_ms=st.ts_ms, ingest_ms=st.ingest_ms, weights=st.weights)


def latest_pairs_to_mutations(states: list[PairState]) -> list[Mutation]:
    """One mutation per pair of a batch: each state is its pair's whole state, so only the last one counts (and
    only it pays for ranking and encoding)."""
    latest = {st.pair: st for st in states}
    return [pair_to_mutation(st) for st in latest.values()]


def index_mutations(items: Stream[EmbeddedItem], clustered: Stream[ClusteredEngagement],
                    pair_states: Stream[PairState]) -> Stream[Mutation]:
    """One stream of index mutations from the three kinds of state the dataflow keeps."""
    return op.merge(
        "index_mutations",
        op.flat_map_batch("item_to_mutation", items,
                          guard_batch("item_to_mutation", lambda batch: [item_to_mutation(i) for i in batch])),
        op.flat_map_batch("stats_to_mutation", clustered, guard_batch("stats_to_mutation", latest_stats_to_mutations)),
        op.flat_map_batch("pair_to_mutation", pair_states, guard_batch("pair_to_mutation", latest_pairs_to_mutations)),
    )
