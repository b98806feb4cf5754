"""Dataflow steps from items, clustered engagements and triples to drift alerts and drift status.

    EmbeddedItem | ClusteredEngagement | Triple
      -> drift_observations   per batch: compact (kind, cluster, ts, ...) tuples
      -> monitor_drift        one DriftMonitor over every cluster (volume is a share of all traffic)
           -> Alert                          -> drift-alerts topic / alerts.jsonl, webhook, metrics
           -> drift:{cluster} mutation       -> the live index (GET /v1/drift, /v1/clusters/{id})
      -> (same step) CadenceController over the triples
           -> CadenceEvent (rag_refresh | fine_tune) -> cadence topic / cadence.jsonl, metrics
              a fine-tune re-bases the monitor: drift is then measured against what the new model learned

The monitor sees all clusters, so it is one keyed step; it gets whole batches (one call per batch, a few
Python-level calls per event), which keeps it off the per-event Bytewax path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from prometheus_client import Counter, Gauge

from index.mutations import Mutation, drift_mutation
from operators.alerts import KINDS, Alert
from operators.cadence import CadenceEvent
from operators.content import EmbeddedItem
from streams.content_stage import ClusteredEngagement
from streams.errors import guard_redo
from streams.transitions_stage import ScoredTriple, Triple

__all__ = ["DRIFT_ALERTS", "drift_alerts_and_status", "observe"]

DRIFT_ALERTS = Counter("driftrag_drift_alerts_total", "Drift alerts raised", ["kind", "severity"])
CADENCE_EVENTS = Counter("driftrag_cadence_events_total", "Cadence signals emitted", ["kind"])
CADENCE_PAIRS = Counter("driftrag_cadence_pairs_refreshed_total", "Pair rows a RAG refresh signal asked to re-infer")
CADENCE_DEBT = Gauge("driftrag_cadence_drift_debt", "Drift debt accrued since the last fine-tune (cost units)")
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


def _feed(monitor: Any, obs: list[tuple], cadence: Any, hold: Hold) -> tuple[list[Any], int | None]:
    """Feed complete hour buckets (see :class:`Hold`), oldest first, each in a canonical order (event time, then
    cluster), engagements summed per cluster: one monitor call per cluster and hour, not per event.
    The cadence controller, when given, sees the triples and the same event time; its events join the alerts.
    Each triple also goes out again as a ScoredTriple, in that canonical order: the successor estimates score
    their transitions in it (streams/transitions_stage.py)."""
    bucket_ms = monitor.config.bucket_ms
    buckets = hold.add(obs, bucket_ms)
    alerts: list[Any] = []
    latest = None
    for rows in buckets:
        rows.sort(key=_ts_key)
        # Hours before this one are complete: evaluate their boundaries before this hour's rows are fed, so what
        # an evaluation sees does not depend on how many hours one call brings.
        first = rows[0]
        alerts += monitor.advance((first[4] if first[0] == "t" else first[2]) // bucket_ms * bucket_ms)
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
                alerts.append(ScoredTriple(o[1], o[2], o[3], o[4], o[6] if len(o) > 6 else ""))
                alerts += monitor.on_triple(o[1], o[2], o[3], o[4])
                if cadence is not None:
                    alerts += _cadence_events(cadence.on_triple(o[1], o[2], o[3], o[4]), monitor)
            else:
                alerts += monitor.on_item(o[1], o[2], o[3], o[4])
        for cluster in sorted(engaged):
            n, pos, ts = engaged[cluster]
            alerts += monitor.on_engagements(cluster, ts, n, pos)
        # Event time moves with engagements (and their triples), never with content publish times.
        top = max((o[2] if o[0] == "e" else o[4] for o in rows if o[0] != "i"), default=None)
        if top is not None:
            latest = top if latest is None or top > latest else latest
            alerts += monitor.advance(top)
            if cadence is not None:
                alerts += _cadence_events(cadence.advance(top), monitor)
    if hold.complete_until is not None and monitor.now_ms is not None:
        # Every hour before this boundary is complete: score it now, not when the next hour's data is fed
        # (which, at the end of a replay, never comes), also when no hour came complete in this call. Not before
        # any hour has been fed: event time starts with the data, not with the hold's first estimate.
        boundary = hold.complete_until * bucket_ms
        alerts += monitor.advance(boundary)
        if cadence is not None:
            alerts += _cadence_events(cadence.advance(boundary), monitor)
        latest = boundary if latest is None or boundary > latest else latest
    return alerts, latest


def _cadence_events(events: list[Any], monitor: Any) -> list[Any]:
    for ev in events:
        CADENCE_EVENTS.labels(ev.kind).inc()
        if ev.kind == "fine_tune":
            monitor.mark_reference(ev.ts_ms, "fine-tune")
        else:
            CADENCE_PAIRS.inc(len(ev.pairs))
    return events


def _monitor_step(make_monitor: Callable[[], Any], make_cadence: Callable[[], Any] | None = None,  # noqa: ANN202
                  partitions: int = 1):
    def step(state: tuple | None, obs: list[tuple]) -> tuple[tuple, list[Any]]:
        if state is None:
            state = (make_monitor(), {})
        if len(state) == 2:  # new, or recovered from a version without the cadence controller and the hold
            state = (*state, make_cadence() if make_cadence is not None else None, Hold(partitions))
        monitor, sent_at, cadence, hold = state
        if not hasattr(hold, "partitions"):  # recovered from the version with one watermark
            hold = Hold.upgrade(hold, partitions)
        out, latest = _feed(monitor, obs, cadence, hold)
        alerts = [a for a in out if type(a) is Alert]
        for a in alerts:
            DRIFT_ALERTS.labels(a.kind, a.severity).inc()
        if cadence is not None:
            CADENCE_DEBT.set(cadence.debt)
        scores = monitor.scores()  # for the gauge below
        # A status goes out when the monitor saw it change (scores, a lapsed score, open alerts), as of the
        # boundary where it changed: what the index ends with must not depend on how the calls split the stream.
        # (sent_at: cluster -> boundary of the last status sent; a dict of scores in an older recovered state.)
        for c in monitor.changed_clusters():
            at = monitor.changed_at(c)
            if sent_at.get(c) == at:
                continue
            st = monitor.status(c)
            out.append(drift_mutation(c, scores=st["scores_at_change"], alerts=[_alert_json(a) for a in st["alerts"]],
                                      reference=st["reference_at_change"], ts_ms=at))
            sent_at[c] = at
        for kind in KINDS:
            DRIFT_SCORE.labels(kind).set(max((s.get(kind, 0.0) for s in scores.values()), default=0.0))
        return (monitor, sent_at, cadence, hold), out

    return step


def _alert_json(a: Any) -> dict[str, Any]:
    return a.to_dict() if hasattr(a, "to_dict") else dict(a)


def drift_alerts_and_status(items: Stream[EmbeddedItem], clustered: Stream[ClusteredEngagement],
                            triples: Stream[Triple], make_monitor: Callable[[], Any],
                            make_cadence: Callable[[], Any] | None = None, partitions: int = 1
                            ) -> tuple[Stream[Alert], Stream[Mutation], Stream[Any], Stream[ScoredTriple]]:
    """Wire the drift monitor (and the cadence controller); returns (alerts, drift status mutations for the live
    index, cadence events, the triples in the hold's canonical order). ``partitions``: of the engagements source,
    waited for by the event-time hold."""
    merged = op.merge("drift_inputs", items, clustered, triples)
    keyed = op.flat_map_batch("drift_observations", merged, observe)
    step = guard_redo("monitor_drift", _monitor_step(make_monitor, make_cadence, partitions))
    out = op.flat_map_batch("unkey_drift", op.stateful_flat_map("monitor_drift", keyed, step),
                            lambda batch: [v for _, v in batch])
    scored = op.branch("split_scored", out, lambda x: type(x) is ScoredTriple)
    split = op.branch("split_alerts", scored.falses, lambda x: type(x) is Alert)
    rest = op.branch("split_cadence", split.falses, lambda x: type(x) is CadenceEvent)
    return split.trues, rest.falses, rest.trues, scored.trues
