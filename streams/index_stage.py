"""Dataflow steps from embedded items, clustered engagements and pair states to index mutations.

    EmbeddedItem        -> item_to_mutation                               item:{id}   vector + payload
    ClusteredEngagement -> key_by_item -> count_item_engagements         stats:{id}  counts, first/last seen
    PairState           -> pair_to_mutation                               pair:c1,c2  every successor

Every mutation is the full current state of its key (see ``index/mutations.py``), so the sinks downstream are
idempotent: a replay after recovery, or a compacted changelog, gives the same index.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream

from index.mutations import Mutation, item_mutation, pair_mutation, stats_mutation
from operators.content import EmbeddedItem
from streams.content_stage import ClusteredEngagement
from streams.transitions_stage import PairState


def item_to_mutation(i: EmbeddedItem) -> Mutation:
    return item_mutation(i.item_id, cluster=i.cluster, distance=i.distance, novel=i.novel, text=i.text,
                         ts_ms=i.ts_ms, ingest_ms=i.ingest_ms, vector=i.vector)


def count_item_engagements(state: tuple | None, ce: ClusteredEngagement) -> tuple[tuple, Mutation]:
    """Per item: (engagements, positive, first_seen_ms, last_seen_ms), a plain tuple so recovery can store it."""
    e = ce.engagement
    n, pos, first, last = state or (0, 0, e.ts_ms, e.ts_ms)
    state = (n + 1, pos + (1 if e.positive else 0), min(first, e.ts_ms), max(last, e.ts_ms))
    return state, stats_mutation(e.item_id, cluster=ce.cluster, engagements=state[0], positive=state[1],
                                 first_seen_ms=state[2], last_seen_ms=state[3], ingest_ms=e.ingest_ms)


def pair_to_mutation(st: PairState) -> Mutation:
    return pair_mutation(
        st.pair[0], st.pair[1],
        successors=[{"cluster": s.cluster, "count": s.count, "score": s.score, "trend": s.trend}
                    for s in st.successors],
        support=st.support, half_life_ms=st.half_life_ms, ts_ms=st.ts_ms, ingest_ms=st.ingest_ms)


def index_mutations(items: Stream[EmbeddedItem], clustered: Stream[ClusteredEngagement],
                    pair_states: Stream[PairState]) -> Stream[Mutation]:
    """One stream of index mutations from the three kinds of state the dataflow keeps."""
    by_item = op.key_on("key_by_item", clustered, lambda ce: ce.engagement.item_id)
    stats = op.map("unkey_stats", op.stateful_map("count_item_engagements", by_item, count_item_engagements),
                   lambda kv: kv[1])
    return op.merge(
        "index_mutations",
        op.map("item_to_mutation", items, item_to_mutation),
        stats,
        op.map("pair_to_mutation", pair_states, pair_to_mutation),
    )
