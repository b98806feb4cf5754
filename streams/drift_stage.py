"""Dataflow steps from items, clustered engagements and triples to drift alerts and drift status.

    EmbeddedItem | ClusteredEngagement | Triple
      -> drift_observations   per batch: compact (kind, cluster, ts, ...) tuples
      -> monitor_drift        one key: the event-time hold, each complete hour in a canonical order, and the
           |                  cadence clock (which hourly checks each triple passes)
           -> ScoredTriple (the triples in that order), CadenceFlush (before each check)
           |                  -> the successor step: each pair's time scale; C_p's records for the check
           -> DriftBundle (each call's ops for the shards, with the checks they pass)
      -> decide_cadence       one key: the cadence decisions (streams/cadence_stage.py); a bundle goes on once
           |                  its checks are decided (a fine-tune marks a new drift reference)
           -> CadenceEvent (rag_refresh | fine_tune) -> cadence topic / cadence.jsonl, metrics
      -> drift_shards         key = cluster % shards: each cluster's engagement and content signals, the pairs
           |                  into it (pair JSD) and its pooled test's windows (ClusterDrift); every shard sees
           |                  every boundary and reports each one
      -> combine_drift        one key: waits for every shard's report of a boundary, then volume shares, the
                              pooled tests against the other clusters, gates and status (DriftCombiner)
           -> Alert                          -> drift-alerts topic / alerts.jsonl, webhook, metrics
           -> drift:{cluster} mutation       -> the live index (GET /v1/drift, /v1/clusters/{id})

The shards hold the state that grows with clusters and pairs, spread over the workers (so does the successor
step, which holds the cadence controller's C_p); the one-key steps handle a few calls per cluster and hour (and
the ordering one list append per event). Every step gets whole batches (one call per batch), which keeps drift
off the per-event Bytewax path. The alerts, statuses and cadence decisions do not depend on the number of
shards: the combiner reads every shard's report of a boundary in shard order and sums across clusters in
cluster order, and the cadence step reads each check's pairs in first-seen order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Stream
from prometheus_client import Counter, Gauge

from index.mutations import Mutation, drift_mutation
from operators.alerts import KINDS, Alert
from operators.cadence import CadenceCheck, CadenceClock, CadenceConfig, CadenceController, CadenceEvent
from operators.content import EmbeddedItem
from operators.drift import ClusterDrift, DriftCombiner
from streams.cadence_stage import CADENCE_DEBT, DriftBundle, adopt_controller, cadence_step, count_cadence, flushes
from streams.content_stage import ClusteredEngagement
from streams.errors import ERRORS, ErrorBudgetExceeded, ProcessingErrors, guard_redo
from streams.routing import shard_keys
from streams.transitions_stage import CadenceFlush, ScoredTriple, SourceRecords, Triple

log = logging.getLogger(__name__)

__all__ = ["DRIFT_ALERTS", "DriftOrdering", "drift_alerts_and_status", "observe", "order_drift"]

DRIFT_ALERTS = Counter("driftrag_drift_alerts_total", "Drift alerts raised", ["kind", "severity"])
DRIFT_SCORE = Gauge("driftrag_drift_score_max", "Largest current drift score over clusters (1 = warning)",
                    ["kind"])


def observe(batch: list[EmbeddedItem | ClusteredEngagement | Triple]) -> list[tuple[str, list[tuple]]]:
    """A batch of the three streams as one list of compact observations, under the monitor's single key."""
    obs: list[tuple] = []
    for x in batch:
        t = type(x)
        if t is ClusteredEngagement:
            e = x.engagement
            obs.append(("e", x.cluster, e.ts_ms, e.positive, e.partition))
        elif t is Triple:
            obs.append(("t", x.c1, x.c2, x.c_next, x.ts_ms, x.partition, x.user_id))
        else:
            obs.append(("i", x.cluster, x.ts_ms, x.vector, x.novel, x.item_id))
    return [("drift", obs)] if obs else []


# How far event time may run ahead of the triples before the monitor stops waiting for them (a stream whose
# positive transitions stopped must still be scored).
MAX_TRIPLE_LAG_MS = 86_400_000


class Hold:
    """Observations waiting for their hour bucket to be complete in both streams the monitor reads, on every
    source partition.

    Clustered engagements and the triples mined from them reach the monitor by different paths, so a batch's
    triples can arrive after the engagements of later hours. A bucket is fed only when both streams have moved
    past it (engagements past it, and triples past it or at most ``MAX_TRIPLE_LAG_MS`` behind): then every
    evaluation sees complete hours, and the alerts depend on the events alone, not on how they were batched
    (a replay and a Kafka run agree). Content waits the same way, so items published ahead are counted when event
    time reaches them.

    The watermark is per source partition of the engagements topic, and the slowest one counts: a Kafka consumer
    reads partitions in turns, so on a backlog one partition can be most of a day of event time ahead of another,
    and an hour fed on the fastest one's word would miss the others' events of that hour. ``expected`` partitions
    are waited for from the start; one that delivers nothing for ``idle_s`` seconds (wall clock) stops holding
    the others back until it delivers again, so an idle partition cannot stall drift detection.

    >>> h = Hold(expected=2)  # observations: ("e", cluster, ts, positive, partition), ("t", c1, c2, c3, ts, partition)
    >>> h.add([("e", 1, 10, True, 0), ("t", 1, 2, 3, 10, 0), ("e", 1, 250, True, 0), ("t", 1, 2, 3, 250, 0)],
    ...       100, now_s=0)  # partition 1 has not delivered yet: nothing is complete
    []
    >>> [len(b) for b in h.add([("e", 2, 220, True, 1), ("t", 1, 2, 3, 220, 1)], 100, now_s=1)]  # both past 200
    [2]
    >>> [len(b) for b in h.add([("e", 2, 360, True, 0), ("t", 1, 2, 3, 360, 0)], 100, now_s=100)]  # 1 idle
    [4]
    """

    __slots__ = ("complete_until", "expected", "idle_s", "partitions", "pending")

    def __init__(self, expected: int = 1, idle_s: float = 30.0) -> None:
        self.expected, self.idle_s = expected, idle_s
        # partition -> [latest engagement ts or None, latest triple ts or None, wall time it last delivered]
        self.partitions: dict[int, list] = {}
        self.pending: dict[int, list[tuple]] = {}
        self.complete_until: int | None = None  # every bucket before this one has been handed out

    def add(self, obs: list[tuple], bucket_ms: int, now_s: float | None = None) -> list[list[tuple]]:
        """Take a batch; return the complete buckets' observations, oldest bucket first."""
        now_s = time.time() if now_s is None else now_s
        parts, pending = self.partitions, self.pending
        if not parts:  # the first batch: from now on, wait for every expected partition (or its idle time)
            for p in range(self.expected):
                parts[p] = [None, None, now_s]
        for o in obs:
            kind = o[0]
            if kind == "i":  # content does not move event time
                pending.setdefault(o[2] // bucket_ms, []).append(o)
                continue
            ts, p, slot = (o[2], o[4], 0) if kind == "e" else (o[4], o[5], 1)
            st = parts.get(p)
            if st is None:
                st = parts[p] = [None, None, now_s]
            if st[slot] is None or ts > st[slot]:
                st[slot] = ts
            if slot == 0:  # a partition is live while its engagements come
                st[2] = now_s
            pending.setdefault(ts // bucket_ms, []).append(o)
        marks = [self._mark(st) for st in parts.values() if now_s - st[2] <= self.idle_s]
        if not marks or None in marks:  # an active partition without engagements yet holds everything
            return []
        upto = min(marks) // bucket_ms
        if self.complete_until is None or upto > self.complete_until:
            self.complete_until = upto
        return [pending.pop(b) for b in sorted(b for b in pending if b < upto)]

    @staticmethod
    def _mark(st: list) -> int | None:
        """How far one partition is complete: its engagements, and its triples at most a day behind them."""
        e, t = st[0], st[1]
        if e is None:
            return None
        return min(e, e - MAX_TRIPLE_LAG_MS if t is None else max(t, e - MAX_TRIPLE_LAG_MS))

    @classmethod
    def upgrade(cls, old: Any, expected: int = 1) -> Hold:
        """A hold recovered from the version with one watermark for all partitions."""
        new = cls(expected)
        e, t = getattr(old, "engagements_ms", None), getattr(old, "triples_ms", None)
        if e is not None:
            new.partitions[0] = [e, t, time.time()]
        new.pending, new.complete_until = old.pending, old.complete_until
        return new


def _ts_key(o: tuple) -> tuple:
    """A total order within an hour: content drift's running sums depend on the order items arrive in, and items
    published at the same time come in whatever order the topic's partitions interleave. Keys are (time, kind,
    fields of that kind): fields of different kinds (an item id, a cluster) are never compared."""
    kind = o[0]
    if kind == "t":
        return (o[4], 2, o[1], o[2], o[3], o[6] if len(o) > 6 else "")
    if kind == "i":
        return (o[2], 1, o[1], o[5], bool(o[4]))
    return (o[2], 0, o[1], bool(o[3]), o[4])


class DriftOrder:
    """The ordering step's state: the event-time hold, the cadence clock (or, in stores of earlier versions and
    in-process runs, a whole cadence controller), whether any hour was fed (event time starts with the data, not
    with the hold's first estimate), and the number of shards the clusters are spread over (fixed for the life of
    a recovery store: the shards' state is where the clusters are)."""

    __slots__ = ("cadence", "hold", "sent", "shards", "started")

    def __init__(self, hold: Hold, cadence: Any = None, started: bool = False, shards: int | None = None) -> None:
        self.hold, self.cadence, self.started, self.shards = hold, cadence, started, shards
        self.sent: int | None = None  # the latest event time every shard was advanced to

    def __getstate__(self) -> tuple:
        return self.hold, self.cadence, self.started, self.shards, self.sent

    def __setstate__(self, state: tuple) -> None:
        self.hold, self.cadence, self.started, self.shards, self.sent = (*state, None)[:5]


def order(state: DriftOrder, obs: list[tuple], bucket_ms: int, shards: int) -> tuple[list[list[tuple]], list[Any]]:
    """Feed complete hour buckets (see :class:`Hold`), oldest first, each in a canonical order (event time, then
    cluster), engagements summed per cluster: one shard call per cluster and hour, not per event.

    Returns (ops per shard, outputs). A shard's ops, in order: ``("a", ts)`` advance event time (every shard gets
    every one, so all evaluate the same boundaries), ``("t", c1, c2, c_next, ts)`` a triple (to the shard of
    c2), ``("e", cluster, ts, n, positive)`` an hour's engagements of a cluster, ``("i", cluster, ts, vector,
    novel)`` an item, ``("m", ts, reason)`` a new reference (every shard), ``("c", ts)`` where a fine-tune's
    mark goes if the cadence check at ``ts`` decides one (every shard; the cadence step replaces or drops it),
    and ``("r", op)`` an op the shard passes on to the combiner with its next report (shard 0 only: the volume
    counts ``("v", cluster, ts, n)`` and the marks, in the order they happened). Outputs: each triple again as a
    ScoredTriple in the canonical order (the successor estimates score their transitions in it,
    streams/transitions_stage.py) and ``state.cadence``'s: a CadenceClock's checks (each after the flushes that
    make the successor step export the records it reads, placed before the triple that passed it) or a
    CadenceController's events (it sees the triples and event time first: a fine-tune marks a new reference)."""
    hold, cadence = state.hold, state.cadence
    ops: list[list[tuple]] = [[] for _ in range(shards)]
    out: list[Any] = []

    def everywhere(op: tuple) -> None:
        for o in ops:
            o.append(op)

    def advance_all(ts_ms: int) -> None:
        """Advance every shard to ``ts_ms``; not again to a time they have passed (a shard would do nothing): a
        batch that completes no hour costs the shards no call."""
        if state.sent is None or ts_ms > state.sent:
            everywhere(("a", ts_ms))
            state.sent = ts_ms

    def cadence_events(events: list[Any]) -> None:
        for ev in events:
            if type(ev) is CadenceCheck:
                # decided by the cadence step: the successor step exports the records it reads (after the triples
                # before the check, before the next), and a fine-tune's mark goes where this placeholder is
                out.extend(flushes(ev))
                mark = ("c", ev.ts_ms)
            elif ev.kind == "fine_tune":
                # a fine-tune re-bases the monitor: drift is then measured against what the new model learned
                mark = ("m", ev.ts_ms, "fine-tune")
            else:
                mark = None
            if mark is not None:
                everywhere(mark)
                ops[0].append(("r", mark))
            out.append(ev)
        if events and type(events[0]) is CadenceEvent:
            count_cadence(events)

    for rows in hold.add(obs, bucket_ms):
        rows.sort(key=_ts_key)
        # Hours before this one are complete: evaluate their boundaries before this hour's rows are fed, so what
        # an evaluation sees does not depend on how many hours one call brings.
        first = rows[0]
        advance_all((first[4] if first[0] == "t" else first[2]) // bucket_ms * bucket_ms)
        state.started = True
        engaged: dict[int, list[int]] = {}  # cluster -> [n, positive, latest ts]
        for o in rows:
            kind = o[0]
            if kind == "e":
                row = engaged.get(o[1])
                if row is None:
                    engaged[o[1]] = [1, int(o[3]), o[2]]
                else:
                    row[0] += 1
                    row[1] += o[3]
                    if o[2] > row[2]:
                        row[2] = o[2]
            elif kind == "t":
                ops[o[2] % shards].append(("t", o[1], o[2], o[3], o[4]))
                if cadence is not None:
                    cadence_events(cadence.on_triple(o[1], o[2], o[3], o[4]))  # the checks before this triple
                out.append(ScoredTriple(o[1], o[2], o[3], o[4], o[6] if len(o) > 6 else ""))
            else:
                ops[o[1] % shards].append(("i", o[1], o[2], o[3], o[4]))
        relay = ops[0]
        for cluster in sorted(engaged):
            n, pos, ts = engaged[cluster]
            ops[cluster % shards].append(("e", cluster, ts, n, pos))
            relay.append(("r", ("v", cluster, ts, n)))
        # Event time moves with engagements (and their triples), never with content publish times.
        top = max((o[2] if o[0] == "e" else o[4] for o in rows if o[0] != "i"), default=None)
        # (The shards are not advanced to ``top``: it is in the hour just started, which crosses no boundary.)
        if top is not None and cadence is not None:
            cadence_events(cadence.advance(top))
    if hold.complete_until is not None and state.started:
        # Every hour before this boundary is complete: score it now, not when the next hour's data is fed
        # (which, at the end of a replay, never comes), also when no hour came complete in this call.
        boundary = hold.complete_until * bucket_ms
        advance_all(boundary)
        if cadence is not None:
            cadence_events(cadence.advance(boundary))
    if type(cadence) is CadenceController:
        CADENCE_DEBT.set(cadence.debt)
    return ops, out


def feed_monitor(monitor: Any, obs: list[tuple], state: DriftOrder) -> tuple[list[Any], int | None]:
    """:func:`order` into one in-process :class:`operators.drift.DriftMonitor` (every cluster, its own combiner):
    what the three drift steps compute, without a dataflow. Returns (alerts, ScoredTriples and cadence events in
    the order they arose; the latest event time fed)."""
    ops, out = order(state, obs, monitor.config.bucket_ms, 1)
    latest = None
    for op_ in ops[0]:
        kind = op_[0]
        if kind == "a":
            out += monitor.advance(op_[1])
            latest = op_[1] if latest is None or op_[1] > latest else latest
        elif kind == "t":
            out += monitor.on_triple(op_[1], op_[2], op_[3], op_[4])
        elif kind == "e":
            out += monitor.on_engagements(op_[1], op_[2], op_[3], op_[4])
        elif kind == "i":
            out += monitor.on_item(op_[1], op_[2], op_[3], op_[4])
        elif kind == "m":
            monitor.mark_reference(op_[1], op_[2])
        # "r": the combiner's copy of the volume counts and marks, which the monitor took above
    return out, latest


def _order_step(bucket_ms: int, shards: int, make_cadence: Callable[[], Any] | None,  # noqa: ANN202
                partitions: int, workers: int = 1):
    """The ordering step. ``make_cadence``: a CadenceClock (the job: the decisions are the cadence step's, its
    outputs for the drift shards go out in one DriftBundle per call) or a CadenceController (in this step, as
    earlier versions had it; tests compare the two), or None (no cadence)."""
    def step(state: Any, obs: list[tuple]) -> tuple[DriftOrder, list[Any]]:
        handover: list[list[tuple]] = [[] for _ in range(shards)]
        adopt = None
        if state is None:
            state = DriftOrder(Hold(partitions), make_cadence() if make_cadence is not None else None, shards=shards)
        elif isinstance(state, tuple):  # recovered from the version with one monitor step: spread it over the shards
            state, handover = _from_one_monitor(state, shards, partitions, make_cadence)
        if type(state.cadence) is CadenceController and clocked:
            # recovered from a version with the controller in this step: its decisions and C_p go to the cadence
            # step, its clock stays here
            adopt, state.cadence = adopt_controller(state.cadence), state.cadence.clock
        elif type(state.cadence) is CadenceClock and not clocked:
            log.info("cadence: off in this run; the recovery store's cadence clock is dropped")
            state.cadence = None
        elif state.cadence is None and clocked:  # turned on for a store written without it: it starts now
            state.cadence = make_cadence()
        n = state.shards
        if n != shards and not warned:
            log.warning("drift: the recovery store spreads the clusters over %d shards; keeping %d, not the %d "
                        "configured (a fresh store takes the new number)", n, n, shards)
            warned.append(True)
        ops, out = order(state, obs, bucket_ms, n)
        keys = shard_keys(n, workers)  # shard i on worker i % workers
        sent = [(keys[i], [("n", i, n), *(handover[i] if i < len(handover) else ()), *o])
                for i, o in enumerate(ops) if o or (i < len(handover) and handover[i])]
        if not clocked:
            return state, [*sent, *out]
        checks = [x for x in out if type(x) is CadenceCheck]
        rest = [x for x in out if type(x) is not CadenceCheck]
        if sent or checks or adopt is not None:
            rest.append(("cadence", DriftBundle(sent, checks, adopt)))
        return state, rest

    warned: list[bool] = []
    clocked = make_cadence is not None and type(make_cadence()) is CadenceClock

    return step


def _from_one_monitor(state: tuple, shards: int, partitions: int, make_cadence: Callable[[], Any] | None
                      ) -> tuple[DriftOrder, list[list[tuple]]]:
    """The state of the single drift step of earlier versions, (monitor, sent_at[, cadence, hold]), as this
    step's state and the ops that hand each shard its clusters and the combiner the rest."""
    monitor, sent_at = state[0], state[1]
    cadence, hold = (state[2], state[3]) if len(state) > 2 else (None, Hold(partitions))
    if cadence is None and make_cadence is not None:
        cadence = make_cadence()
    if not hasattr(hold, "partitions"):  # recovered from the version with one watermark
        hold = Hold.upgrade(hold, partitions)
    parts, combiner = monitor.split(shards, lambda c: c % shards)
    handover = [[("adopt", p)] for p in parts]
    handover[0].append(("r", ("adopt", combiner, sent_at)))
    return DriftOrder(hold, cadence, monitor.now_ms is not None, shards), handover


class _StepState:
    """A step's state pickled as the tuple of its ``__slots__`` (in that order); :meth:`of` also reads the list
    the first sharded version kept instead."""

    __slots__ = ()

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    @classmethod
    def of(cls, state: Any) -> Any:
        """The state as recovered: this class, or the list the first sharded version kept."""
        return state if isinstance(state, cls) else cls(*state)


class ShardState(_StepState):
    """One drift shard step's state: its :class:`ClusterDrift`, the ops it passes on to the combiner with its next
    report (``relay``: volume counts and marks, shard 0 only) and ``place`` = (its index, the number of shards)."""

    __slots__ = ("shard", "relay", "place")

    def __init__(self, shard: ClusterDrift, relay: list[tuple] | None = None, place: tuple[int, int] = (0, 1)) -> None:
        self.shard, self.relay, self.place = shard, [] if relay is None else relay, place


class CombineState(_StepState):
    """The combiner step's state: its :class:`DriftCombiner`, ``waiting`` (boundary -> {shard: report}) for the
    boundaries not every shard has reported yet, ``sent_at`` (cluster -> the boundary of the status last sent) and
    ``latest`` (shard -> the latest boundary it reported)."""

    __slots__ = ("combiner", "waiting", "sent_at", "latest")

    def __init__(self, combiner: DriftCombiner, waiting: dict[int, dict[int, dict]] | None = None,
                 sent_at: dict[int, int] | None = None, latest: dict[int, int] | None = None) -> None:
        self.combiner = combiner
        self.waiting = {} if waiting is None else waiting
        self.sent_at = {} if sent_at is None else sent_at
        self.latest = {} if latest is None else latest


def _shard_step(make_shard: Callable[[], ClusterDrift], errors: ProcessingErrors = ERRORS):  # noqa: ANN202
    """One drift shard: its clusters' signals (operators.drift.ClusterDrift); a report per boundary.

    A boundary whose evaluation raises is dead-lettered once (the record: the boundary and the shard) and then
    passed without evaluating (the step's guard restores the shard and applies the ops again): the shard's state
    at that boundary would fail the same way every time, and drift must go on."""
    failed: set[int] = set()  # boundaries this process could not evaluate

    def advance(state: ShardState, ts_ms: int) -> list[dict[str, Any]]:
        shard = state.shard
        try:
            return shard.advance(ts_ms, failed)
        except ErrorBudgetExceeded:
            raise
        except Exception as e:
            failed.add(shard._evaluated)
            errors.report("monitor_drift", {"boundary": shard._evaluated, "shard": state.place[0]}, e)
            raise

    def step(state: Any, ops: list[tuple]) -> tuple[ShardState, list[dict[str, Any]]]:
        state = ShardState(make_shard()) if state is None else ShardState.of(state)
        out: list[dict[str, Any]] = []
        for op_ in ops:
            shard = state.shard
            kind = op_[0]
            if kind == "a":
                reports = advance(state, op_[1])
            elif kind == "t":
                reports = shard.on_triple(op_[1], op_[2], op_[3], op_[4])
            elif kind == "e":
                reports = shard.on_engagements(op_[1], op_[2], op_[3], op_[4])
            elif kind == "i":
                reports = shard.on_item(op_[1], op_[2], op_[3], op_[4])
            elif kind == "m":
                shard.mark_reference(op_[1], op_[2])
                continue
            elif kind == "r":
                state.relay.append(op_[1])
                continue
            elif kind == "n":
                state.place = op_[1], op_[2]
                continue
            elif kind == "adopt":
                state.shard = op_[1]
                continue
            else:
                raise ValueError(f"unknown drift shard op {kind!r}")
            for rep in reports:
                (rep["shard"], rep["shards"]), rep["ops"] = state.place, state.relay
                state.relay = []
                out.append(rep)
        return state, out

    return step


def _combine_step(make_combiner: Callable[[], DriftCombiner], errors: ProcessingErrors = ERRORS):  # noqa: ANN202
    """The combiner: every shard's report of a boundary (they come in boundary order from each shard; each says
    how many shards there are), then the alerts of that boundary and the status of every cluster whose status
    changed. A boundary is evaluated once every shard has reported it or a later one: a report lost to a
    processing error (dead-lettered by its step) leaves that shard out of one boundary instead of stalling drift
    for good. A boundary whose evaluation raises is dead-lettered once and passed (as a shard does)."""
    failed: set[int] = set()

    def step(state: Any, reports: list[dict[str, Any]]) -> tuple[CombineState, list[Any]]:
        state = CombineState(make_combiner()) if state is None else CombineState.of(state)
        waiting, latest = state.waiting, state.latest
        shards = 1
        done = state.combiner._evaluated
        for rep in reports:
            if done is not None and rep["now"] <= done:
                continue  # evaluated without it (its shard's report came after a later one of the same shard)
            waiting.setdefault(rep["now"], {})[rep["shard"]] = rep
            if rep["now"] > latest.get(rep["shard"], rep["now"] - 1):
                latest[rep["shard"]] = rep["now"]
            shards = rep["shards"]
        out: list[Any] = []
        for now in sorted(waiting):
            if len(latest) < shards or min(latest.values()) < now:
                break  # a shard has not reported this boundary yet: it and the later ones wait
            got = waiting.pop(now)
            ordered = [got[i] for i in sorted(got)]
            for rep in ordered:  # what happened before this boundary: engagement counts, marks (shard 0 relays)
                for op_ in rep["ops"]:
                    comb = state.combiner
                    if op_[0] == "v":
                        comb.on_volume(op_[1], op_[2], op_[3])
                    elif op_[0] == "m":
                        comb.mark_reference(op_[1], op_[2])
                    elif op_[0] == "adopt":
                        state.combiner, state.sent_at = op_[1], dict(op_[2])
            if now in failed:
                state.combiner.pass_boundary(now)
                continue
            try:
                out += state.combiner.evaluate(ordered)
            except ErrorBudgetExceeded:
                raise
            except Exception as e:
                failed.add(now)
                errors.report("combine_drift", {"boundary": now}, e)
                raise
        comb, sent_at = state.combiner, state.sent_at
        for a in out:
            DRIFT_ALERTS.labels(a.kind, a.severity).inc()
        # A status goes out when the monitor saw it change (scores, a lapsed score, open alerts), as of the
        # boundary where it changed: what the index ends with must not depend on how the calls split the stream.
        for c in comb.changed_clusters():
            at = comb.changed_at(c)
            if sent_at.get(c) == at:
                continue
            st = comb.status(c)
            out.append(drift_mutation(c, scores=st["scores_at_change"], alerts=[_alert_json(a) for a in st["alerts"]],
                                      reference=st["reference_at_change"], ts_ms=at))
            sent_at[c] = at
        scores = comb.scores()
        for kind in KINDS:
            DRIFT_SCORE.labels(kind).set(max((s.get(kind, 0.0) for s in scores.values()), default=0.0))
        return state, out

    return step


def _alert_json(a: Any) -> dict[str, Any]:
    return a.to_dict() if hasattr(a, "to_dict") else dict(a)


class DriftOrdering(NamedTuple):
    """The ordering step's streams (:func:`order_drift`), for :func:`drift_alerts_and_status`."""

    config: Any  # the DriftConfig
    cadence: CadenceConfig | None  # the cadence step's (None: no cadence, or the controller in the ordering step)
    to_drift: Stream[tuple]  # (shard key, ops), or ("cadence", DriftBundle) with a cadence step
    scored: Stream[ScoredTriple | CadenceFlush]  # -> the successor step
    events: Stream[CadenceEvent]  # a controller's in the ordering step (none with a cadence step)


def order_drift(items: Stream[EmbeddedItem], clustered: Stream[ClusteredEngagement], triples: Stream[Triple],
                make_monitor: Callable[[], Any], cadence: CadenceConfig | None = None, partitions: int = 1,
                shards: int = 1, workers: int = 1) -> DriftOrdering:
    """Wire the ordering step: the event-time hold, the canonical order and (with ``cadence``) the clock of the
    cadence checks. ``make_monitor``: a DriftMonitor (its config is what counts); ``partitions``: of the
    engagements source, waited for by the hold; ``shards``: how many keys the clusters are spread over (cluster c
    on shard c % shards; results do not depend on it), shard i on worker i % ``workers``. The scored triples (and
    the cadence flushes) go to the successor step (streams/transitions_stage.py), whose exported records go with
    this to :func:`drift_alerts_and_status`."""
    config = make_monitor().config
    merged = op.merge("drift_inputs", items, clustered, triples)
    keyed = op.flat_map_batch("drift_observations", merged, observe)
    make_clock = (lambda: CadenceClock(cadence.check_every_ms)) if cadence is not None else None
    # (step id "monitor_drift" is the single drift step of earlier versions: its recovered state is handed over)
    ordered = op.stateful_flat_map("monitor_drift", keyed, guard_redo(
        "order_drift", _order_step(config.bucket_ms, shards, make_clock, partitions, workers)))
    out = op.branch("split_shard_ops", op.flat_map_batch("unkey_order", ordered, lambda b: [v for _, v in b]),
                    lambda x: type(x) is tuple)
    scored = op.branch("split_scored", out.falses, lambda x: type(x) is ScoredTriple or type(x) is CadenceFlush)
    return DriftOrdering(config, cadence, out.trues, scored.trues, scored.falses)


def drift_alerts_and_status(ordering: DriftOrdering, records: Stream[SourceRecords] | None = None
                            ) -> tuple[Stream[Alert], Stream[Mutation], Stream[CadenceEvent]]:
    """Wire the cadence decisions (with ``ordering.cadence``: the ``records`` the successor step exported for
    them), the drift shards and the combiner; returns (alerts, drift status mutations for the live index, cadence
    events)."""
    config = ordering.config
    for kind in KINDS:  # the gauges exist (at 0) from the start, not from the first boundary the combiner scores
        DRIFT_SCORE.labels(kind).set(0.0)
    to_shards, events = ordering.to_drift, ordering.events
    if ordering.cadence is not None:
        if records is None:
            raise ValueError("the cadence step needs the successor step's records (count_successors)")
        inputs = op.merge("cadence_inputs", ordering.to_drift, records)
        batched = op.flat_map_batch("cadence_batches", inputs, lambda batch: [
            ("cadence", [x[1] if type(x) is tuple else x for x in batch])])
        decided = op.stateful_flat_map("decide_cadence", batched, guard_redo(
            "decide_cadence", cadence_step(ordering.cadence)))
        split = op.branch("split_cadence", op.flat_map_batch("unkey_cadence", decided, lambda b: [v for _, v in b]),
                          lambda x: type(x) is tuple)
        to_shards, events = split.trues, op.merge("cadence_events", events, split.falses)
    shard_reports = op.stateful_flat_map("drift_shards", to_shards, guard_redo(
        "monitor_drift", _shard_step(lambda: ClusterDrift(config))))
    to_combiner = op.flat_map_batch("drift_reports", shard_reports, lambda batch: [("drift", [r for _, r in batch])])
    combined = op.stateful_flat_map("combine_drift", to_combiner, guard_redo(
        "combine_drift", _combine_step(lambda: DriftCombiner(config))))
    split = op.branch("split_alerts", op.flat_map_batch("unkey_drift", combined, lambda batch: [v for _, v in batch]),
                      lambda x: type(x) is Alert)
    return split.trues, split.falses, events
