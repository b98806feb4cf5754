"""Dataflow steps from clustered engagements to per-pair successor state (the brief's transition rule).

    ClusteredEngagement (positive only)
      -> key_positive_by_user_shard -> track_user_shards           (h1, h2, last ts) per user     Triple
      -> key_by_source -> count_successors_by_source               LiveSuccessors per c2          PairState

Successor estimates are kept per source cluster c2 (every pair (c1, c2) of it on one key): each pair's time scale
is chosen from its own predictive record backed off to its source cluster's (operators/adaptive_successors.py),
so a source cluster's pairs need nothing from any other and the clusters spread over all workers.

Users are kept per user shard (the item join's shards, :func:`streams.content_stage.stable_shard`), one dict of
plain tuples per shard, not one Bytewax key per user: a key costs the runtime a logic object and a call per batch,
which at 10^6 users was most of the step's time and ~0.4 KB of memory per user.

Each PairState is the full current state of its pair (never an increment), so writing it downstream is an
idempotent upsert: replaying it, or reading only the latest per pair, gives the same answer. One goes out per
pair per batch, after the batch's last triple of the pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter

from operators.adaptive_successors import (
    DEFAULT_HALF_LIVES_MS,
    LiveSnapshot,
    LiveSuccessors,
    PairRecords,
    half_life_label,
)
from operators.successors import Successor, rank_successors
from streams.content_stage import ClusteredEngagement, stable_shard, unkey
from streams.errors import ERRORS, ErrorBudgetExceeded, GuardedLogic, ProcessingErrors
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
    counts: tuple[tuple[int, float], ...]  # every successor's effective (decayed, mixed) count at ts_ms
    reference: dict[int, float] | None  # successor shares at the trend reference (never changed in place)
    support: float  # effective number of observed triples
    ts_ms: int  # event time of the latest triple
    ingest_ms: int = 0
    half_life_ms: float = 0.0  # the effective half-life: the largest weight's (inf: no decay)
    weights: tuple[tuple[str, float], ...] = ()  # each half-life's weight, by label ("2d", "none")
    supports: tuple[float, ...] = ()  # support at each half-life (in the order of weights): order-free
    observed: int = 0  # triples of this pair counted since its previous state (the job's count of triples mined)

    @property
    def half_life(self) -> str:
        """The effective half-life's label (``"7d"``, ``"none"``: no decay)."""
        return half_life_label(self.half_life_ms)

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


@dataclass(frozen=True, slots=True)
class ScoredTriple:
    """A triple handed back by the drift step's event-time hold, in the canonical order (event time, pair,
    successor) of complete hours: the successor estimate scores it now (it counted it on arrival)."""

    c1: int
    c2: int
    c_next: int
    ts_ms: int
    user_id: str


@dataclass(frozen=True, slots=True)
class CadenceFlush:
    """From the drift step's ordering, after the last scored triple before the cadence check at ``ts_ms``: the
    successor step exports the records of ``pairs`` (pairs of source cluster ``c2`` with triples since the
    previous check) to the cadence step, which reads C_p there (streams/cadence_stage.py)."""

    ts_ms: int
    c2: int
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SourceRecords:
    """What one source cluster's successor state exported for the cadence check at ``ts_ms``."""

    ts_ms: int
    c2: int
    records: PairRecords


class CountSuccessors(StatefulBatchLogic):
    """One source cluster's successor state (:class:`LiveSuccessors`), changed in place by each batch: a Triple
    is observed (counted at once), a ScoredTriple scored; with ``ordered=False`` (no drift step to order them) a
    Triple is observed and scored at once, in arrival order. One PairState per pair the batch touched, as of its
    last value; a :class:`CadenceFlush` gives a :class:`SourceRecords` (also when the export fails: the cadence
    step waits for every source's records of a check). Its snapshot is immutable (what a failing batch is
    rebuilt from: see :class:`~streams.errors.GuardedLogic`)."""

    def __init__(self, make: Callable[[], LiveSuccessors], resume: LiveSnapshot | None, ordered: bool,
                 errors: ProcessingErrors = ERRORS) -> None:
        self.state = make() if resume is None else LiveSuccessors.from_snapshot(resume)
        self.ordered = ordered
        # pair -> ingest_ms of its newest observed triple: a state sent after scoring reflects it (wall clock, for
        # freshness only; not in snapshots: 0 until the pair's next triple after a restart)
        self.ingest: dict[tuple[int, int], int] = {}
        self._errors = errors

    def on_batch(self, values: list[Triple | ScoredTriple | CadenceFlush]) -> tuple[list[PairState | SourceRecords],
                                                                                  bool]:
        st = self.state
        last = {(t.c1, t.c2): i for i, t in enumerate(values) if type(t) is not CadenceFlush}
        observe = st.observe if self.ordered else st.update
        out: list[PairState | SourceRecords] = []
        ingest = self.ingest
        observed: dict[tuple[int, int], int] = {}  # triples counted per pair in this batch (not those scored)
        for i, t in enumerate(values):
            if type(t) is CadenceFlush:
                out.append(self._export(t))
                continue
            triple = (t.c1, t.c2, t.c_next)
            if type(t) is ScoredTriple:
                pair = st.score(triple, t.ts_ms, t.user_id)
            else:
                pair = observe(triple, t.ts_ms, t.user_id)
                ingest[pair] = t.ingest_ms  # type: ignore[index]
                observed[pair] = observed.get(pair, 0) + 1  # type: ignore[index]
            if last[pair] == i:  # type: ignore[index]
                e = st.estimate(pair)  # at the pair's newest transition: a late one does not move its clock back
                out.append(PairState(pair, e.counts, e.reference, e.support, e.ts_ms,  # type: ignore[arg-type]
                                     ingest.get(pair, 0), e.half_life_ms, e.weights, e.supports,  # type: ignore[arg-type]
                                     observed.get(pair, 0)))  # type: ignore[arg-type]
        return out, StatefulBatchLogic.RETAIN

    def _export(self, flush: CadenceFlush) -> SourceRecords:
        try:
            records = self.state.table.export(flush.pairs)
        except ErrorBudgetExceeded:
            raise
        except Exception as e:  # noqa: BLE001 - the check goes on without these pairs' new records
            self._errors.report("count_successors", {"cadence_check": flush.ts_ms, "c2": flush.c2}, e)
            records = PairRecords((), ())
        return SourceRecords(flush.ts_ms, flush.c2, records)

    def snapshot(self) -> LiveSnapshot:
        return self.state.snapshot()


def _ts(ce: ClusteredEngagement) -> int:
    return ce.engagement.ts_ms


def _triple_ts(t: Triple) -> int:
    return t.ts_ms


def key_positive_by_user_shard(shards: int) -> Callable[[list[ClusteredEngagement]],
                                                       list[tuple[str, ClusteredEngagement]]]:
    """Positive engagements keyed by their user's shard (:func:`streams.content_stage.stable_shard`), in event-time
    order within the batch. The item join before this step emits a batch grouped by item, so two engagements of one
    user can arrive swapped; the rule must see each user's engagements in the order they happened (else the older
    one is 'late' and a transition is lost or invented), and the result must not depend on where batches split.

    >>> from streams.contract import Engagement
    >>> e = lambda u, ts: ClusteredEngagement(Engagement(u, "i", "like", ts, True), 0)
    >>> [(k, ce.engagement.ts_ms) for k, ce in key_positive_by_user_shard(1)([e("u", 2), e("v", 1)])]
    [('0', 1), ('0', 2)]
    >>> {k for k, _ in key_positive_by_user_shard(4)([e("u", 1)])} == {stable_shard("u", 4)}
    True
    """
    if shards == 1:
        return lambda batch: [("0", ce) for ce in sorted(batch, key=_ts) if ce.engagement.positive]
    return lambda batch: [(stable_shard(ce.engagement.user_id, shards), ce) for ce in sorted(batch, key=_ts)
                          if ce.engagement.positive]


class UserShardTransitions(StatefulBatchLogic):
    """The transition rule for every user of one shard: user -> (h1, h2, event time of the last engagement
    applied), the state :func:`track_user_clusters` keeps, in one dict. A batch is one call; each engagement is
    applied by :func:`track_user_clusters` (looked up per batch, so a test can replace it), and one that raises
    is dead-lettered under the step ``track_user_clusters`` with its user keeping the state it had. The snapshot
    is a shallow copy (the values are immutable tuples).

    >>> from streams.contract import Engagement
    >>> shard = UserShardTransitions(None)
    >>> e = lambda u, c, ts: ClusteredEngagement(Engagement(u, "i", "like", ts, True), c)
    >>> out, _ = shard.on_batch([e("a", 1, 1), e("b", 5, 1), e("a", 2, 2), e("a", 3, 3), e("b", 6, 2)])
    >>> [(t.c1, t.c2, t.c_next, t.user_id) for t in out], shard.snapshot()
    ([(1, 2, 3, 'a')], {'a': (2, 3, 3), 'b': (5, 6, 2)})
    """

    def __init__(self, resume: dict[str, tuple] | None, errors: ProcessingErrors = ERRORS) -> None:
        self.users: dict[str, tuple] = dict(resume) if resume else {}
        self._errors = errors

    def on_batch(self, values: list[ClusteredEngagement]) -> tuple[list[Triple], bool]:
        users, rule, out = self.users, track_user_clusters, []
        get = users.get
        for ce in values:
            user = ce.engagement.user_id
            try:
                state, triples = rule(get(user), ce)
            except ErrorBudgetExceeded:
                raise
            except Exception as e:  # noqa: BLE001 - this record alone is dead-lettered
                self._errors.report("track_user_clusters", ce, e)
                continue
            users[user] = state
            if triples:
                out += triples
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, tuple]:
        return dict(self.users)


def key_by_source(batch: list[Triple]) -> list[tuple[str, Triple]]:
    """Triples keyed by their source cluster c2, in event-time order within the batch."""
    return [(str(t.c2), t) for t in sorted(batch, key=_triple_ts)]


def key_scored_by_source(batch: list[ScoredTriple]) -> list[tuple[str, ScoredTriple]]:
    """Scored triples keyed by their source cluster c2, in the order the hold gave them (canonical)."""
    return [(str(t.c2), t) for t in batch]


def mine_triples(clustered: Stream[ClusteredEngagement], counts: StepCounts = NO_COUNTS, shards: int = 1
                 ) -> Stream[Triple]:
    """Wire the transition rule onto clustered engagements, users kept per shard (``shards``: the item join's, one
    per worker); its triples are counted in ``counts`` as ``triples``."""
    by_shard = op.flat_map_batch("key_positive_by_user_shard", clustered, key_positive_by_user_shard(shards))
    # (a new step id: the per-user keys of earlier versions' step "track_user_clusters" are not resumed)
    return op.flat_map_batch("unkey_triples", op.stateful_batch(
        "track_user_shards", by_shard, UserShardTransitions), counts.counting("triples", unkey))


def count_successors(triples: Stream[Triple], scored: Stream[ScoredTriple | CadenceFlush] | None = None, *,
                     half_lives_ms: Sequence[float] = DEFAULT_HALF_LIVES_MS, trend_window_ms: int = 86_400_000,
                     counts: StepCounts = NO_COUNTS) -> tuple[Stream[PairState], Stream[SourceRecords] | None]:
    """The successor estimates, one key per source cluster; returns (pair states, counted in ``counts`` as
    ``pair_states``; the records exported for the cadence checks, None without ``scored``). ``scored``: the same
    triples in the drift step's canonical order (each is counted on arrival and scored when it comes back from
    there) with the cadence checks' flushes; without it each triple is scored on arrival. ``half_lives_ms``: the
    half-lives each pair mixes (one: a fixed half-life; ``inf``: no decay)."""
    hl = tuple(half_lives_ms)
    LiveSuccessors(hl, trend_window_ms=trend_window_ms)  # bad settings fail here, before the flow runs
    ordered = scored is not None

    def make() -> LiveSuccessors:
        return LiveSuccessors(hl, trend_window_ms=trend_window_ms)

    by_source = op.flat_map_batch("key_by_source", triples, key_by_source)
    if scored is not None:
        by_source = op.merge("observed_and_scored", by_source,
                             op.flat_map_batch("key_scored_by_source", scored, key_scored_by_source))
    # (a new step id: recovery state of the per-pair counts of earlier versions is not resumed into this one)
    states = op.stateful_batch("count_successors_by_source", by_source, lambda resume: GuardedLogic(
        "count_successors", lambda r: CountSuccessors(make, r, ordered), resume))
    if scored is None:
        return op.flat_map_batch("unkey_pair_states", states, counts.counting("pair_states", unkey)), None
    split = op.branch("split_records", op.flat_map_batch("unkey_pair_states", states, unkey),
                      lambda x: type(x) is SourceRecords)
    return op.flat_map_batch("count_pair_states", split.falses, counts.counting("pair_states", _same)), split.trues


def _same(batch: list) -> list:
    return batch


def mine_successors(clustered: Stream[ClusteredEngagement], *, shards: int = 1,
                    half_lives_ms: Sequence[float] = DEFAULT_HALF_LIVES_MS, trend_window_ms: int = 86_400_000,
                    counts: StepCounts = NO_COUNTS) -> tuple[Stream[Triple], Stream[PairState]]:
    """The transition rule and the successor estimates (each triple scored on arrival); returns (triples, pair
    states)."""
    triples = mine_triples(clustered, counts, shards)
    return triples, count_successors(triples, half_lives_ms=half_lives_ms, trend_window_ms=trend_window_ms,
                                     counts=counts)[0]
