"""Dataflow steps from clustered engagements to per-pair successor state (the brief's transition rule).

    ClusteredEngagement (positive only)
      -> key_by_user -> track_user_clusters   TransitionTracker per user        Triple
      -> key_by_pair -> count_successors      PairSuccessors per (c1, c2)       PairState

Each PairState is the full current state of its pair (never an increment), so writing it downstream is an
idempotent upsert: replaying it, or reading only the latest per pair, gives the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from prometheus_client import Counter

from operators.successors import PairSuccessors, Successor, rank_successors
from streams.content_stage import ClusteredEngagement, unkey
from streams.errors import KeyedFold
from streams.metrics import NO_COUNTS, StepCounts

LATE_ENGAGEMENTS = Counter("driftrag_transitions_late_total",
                           "Positive engagements left out of the transition rule: older than the user's last one")


@dataclass(frozen=True, slots=True)
class Triple:
    c1: int
    c2: int
    c_next: int
    ts_ms: int
    user_id: str
    ingest_ms: int = 0  # when the engagement that completed the triple entered the pipeline
    partition: int = 0  # that engagement's source partition


@dataclass(frozen=True, slots=True)
class PairState:
    """A pair's full state after a triple. Kept raw (counts + the trend reference): ranking costs a sort, and
    downstream only the latest state per pair in a batch is ever ranked."""

    pair: tuple[int, int]
    counts: tuple[tuple[int, float], ...]  # every successor's decayed count at ts_ms
    reference: dict[int, float] | None  # successor shares at the trend reference (never changed in place)
    support: float  # decayed number of observed triples
    ts_ms: int  # event time of the latest triple
    ingest_ms: int = 0
    half_life_ms: float = 0.0

    @property
    def successors(self) -> list[Successor]:
        """Every successor, frequency-ranked, with share, count and trend."""
        return rank_successors(self.counts, self.reference)


def track_user_clusters(state: tuple | None, ce: ClusteredEngagement) -> tuple[tuple, list[Triple]]:
    """One user's (h1, h2) and the event time of the last engagement applied, as a plain tuple for recovery.

    An engagement older than the last one applied is not fed to the rule: it waited for its item's content
    while the user's later engagements went ahead, and applying it now would invent a transition the user never
    made. It is counted in ``driftrag_transitions_late_total``."""
    h1, h2, last_ts = (state + (None,))[:3] if state and len(state) == 2 else (state or (None, None, None))
    e = ce.engagement
    if last_ts is not None and e.ts_ms < last_ts:
        LATE_ENGAGEMENTS.inc()
        return (h1, h2, last_ts), []
    c = ce.cluster
    if c == h2:  # TransitionTracker's rule, inlined: this runs for every positive engagement
        return (h1, h2, e.ts_ms), []
    out = [Triple(h1, h2, c, e.ts_ms, e.user_id, e.ingest_ms, e.partition)] if h1 is not None and c != h1 else []
    return (h2, c, e.ts_ms), out


def _count_successors(half_life_ms: int, trend_window_ms: int):  # noqa: ANN202
    """The per-triple step ``(state, triple) -> (state, [PairState])``; its ``fold`` does a pair's whole batch."""
    def step(state: PairSuccessors | None, t: Triple) -> tuple[PairSuccessors, list[PairState]]:
        # A new state object, the old one untouched: a failure part-way leaves the pair as it was (streams.errors).
        return fold(state, [t])

    def fold(state: PairSuccessors | None, triples: list[Triple]) -> tuple[PairSuccessors, list[PairState]]:
        """A pair's triples of one batch: one copy of the state for all of them (the old one untouched), one full
        PairState after each."""
        state = PairSuccessors(half_life_ms) if state is None else state.copy()
        out = []
        for t in triples:
            state.roll_reference(t.ts_ms, trend_window_ms)
            state.update(t.c_next, t.ts_ms)
            now = state.latest_ms or t.ts_ms  # a late triple does not move the pair's clock back
            out.append(PairState((t.c1, t.c2), state.counts(now), state.reference, state.total(now), now,
                                 t.ingest_ms, half_life_ms))
        return state, out

    step.fold = fold
    return step


@operator
def _stateful(step_id: str, up: KeyedStream[Any], builder: Callable[[Any], StatefulBatchLogic]
              ) -> KeyedStream[Any]:
    return op.stateful_batch("stateful_batch", up, builder)


@operator
def keyed_fold(step_id: str, up: KeyedStream[Any], builder: Callable[[Any], StatefulBatchLogic]
               ) -> KeyedStream[Any]:
    """``op.stateful_batch`` under the step id ``op.stateful_flat_map`` gives its core step (``{step_id}.stateful.
    stateful_batch``): recovery snapshots written by the earlier per-value steps resume into the batch ones."""
    return _stateful("stateful", up, builder)


def _ts(ce: ClusteredEngagement) -> int:
    return ce.engagement.ts_ms


def _triple_ts(t: Triple) -> int:
    return t.ts_ms


def key_positive_by_user(batch: list[ClusteredEngagement]) -> list[tuple[str, ClusteredEngagement]]:
    """Positive engagements keyed by user, in event-time order within the batch. The item join before this step
    emits a batch grouped by item, so two engagements of one user can arrive swapped; the rule must see each user's
    engagements in the order they happened (else the older one is 'late' and a transition is lost or invented),
    and the result must not depend on where batches happen to split.

    >>> from streams.contract import Engagement
    >>> e = lambda ts, item: ClusteredEngagement(Engagement("u", item, "like", ts, True), 0)
    >>> [ce.engagement.ts_ms for _, ce in key_positive_by_user([e(2, "b"), e(1, "a")])]
    [1, 2]
    """
    return [(ce.engagement.user_id, ce) for ce in sorted(batch, key=_ts) if ce.engagement.positive]


def mine_successors(clustered: Stream[ClusteredEngagement], *, half_life_ms: int, trend_window_ms: int = 86_400_000,
                    counts: StepCounts = NO_COUNTS) -> tuple[Stream[Triple], Stream[PairState]]:
    """Wire the transition rule and the decayed successor counts onto clustered engagements; returns (triples,
    pair states), counted in ``counts`` as ``triples`` and ``pair_states`` by the steps that produce them."""
    by_user = op.flat_map_batch("key_positive_by_user", clustered, key_positive_by_user)
    triples = op.flat_map_batch("unkey_triples", keyed_fold(
        "track_user_clusters", by_user, lambda resume: KeyedFold("track_user_clusters", track_user_clusters, resume)),
        counts.counting("triples", unkey))
    by_pair = op.flat_map_batch("key_by_pair", triples,
                                lambda batch: [(f"{t.c1},{t.c2}", t) for t in sorted(batch, key=_triple_ts)])
    step = _count_successors(half_life_ms, trend_window_ms)
    fold = getattr(step, "fold", None)
    states = keyed_fold("count_successors", by_pair,
                        lambda resume: KeyedFold("count_successors", step, resume, fold))
    return triples, op.flat_map_batch("unkey_pair_states", states, counts.counting("pair_states", unkey))
