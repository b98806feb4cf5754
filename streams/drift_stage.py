"""Dataflow steps from items, clustered engagements and triples to drift alerts and drift status.

    EmbeddedItem | ClusteredEngagement | Triple
      -> drift_observations   per batch: compact (kind, cluster, ts, ...) tuples
      -> monitor_drift        one DriftMonitor over every cluster (volume is a share of all traffic)
           -> Alert                          -> drift-alerts topic / alerts.jsonl, webhook, metrics
           -> drift:{cluster} mutation       -> the live index (GET /v1/drift, /v1/clusters/{id})

The monitor sees all clusters, so it is one keyed step; it gets whole batches (one call per batch, a few
Python-level calls per event), which keeps it off the per-event Bytewax path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from prometheus_client import Counter, Gauge

from index.mutations import Mutation, drift_mutation
from operators.alerts import KINDS, Alert
from operators.content import EmbeddedItem
from streams.content_stage import ClusteredEngagement
from streams.transitions_stage import Triple

__all__ = ["DRIFT_ALERTS", "drift_alerts_and_status", "observe"]

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
            obs.append(("e", x.cluster, e.ts_ms, e.positive))
        elif t is Triple:
            obs.append(("t", x.c1, x.c2, x.c_next, x.ts_ms))
        else:
            obs.append(("i", x.cluster, x.ts_ms, x.vector, x.novel))
    return [("drift", obs)] if obs else []


def _feed(monitor: Any, obs: list[tuple]) -> tuple[list[Alert], int | None]:
    """Feed a batch hour bucket by hour bucket (the monitor evaluates only at bucket boundaries, so order within a
    bucket does not matter), engagements summed per cluster: one monitor call per cluster and hour, not per event."""
    bucket_ms = monitor.config.bucket_ms
    by_bucket: dict[int, list[tuple]] = {}
    for o in obs:
        ts = o[2] if o[0] != "t" else o[4]
        by_bucket.setdefault(ts // bucket_ms, []).append(o)
    alerts: list[Alert] = []
    latest = None
    for b in sorted(by_bucket):
        engaged: dict[int, list[int]] = {}  # cluster -> [n, positive, latest ts]
        for o in by_bucket[b]:
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
                alerts += monitor.on_triple(o[1], o[2], o[3], o[4])
            else:
                alerts += monitor.on_item(o[1], o[2], o[3], o[4])
        for cluster, (n, pos, ts) in engaged.items():
            alerts += monitor.on_engagements(cluster, ts, n, pos)
        # Event time moves with engagements (and their triples), never with content publish times.
        top = max((o[2] if o[0] == "e" else o[4] for o in by_bucket[b] if o[0] != "i"), default=None)
        if top is not None:
            latest = top if latest is None or top > latest else latest
            alerts += monitor.advance(top)
    return alerts, latest


def _monitor_step(make_monitor: Callable[[], Any]):  # noqa: ANN202
    def step(state: tuple | None, obs: list[tuple]) -> tuple[tuple, list[Alert | Mutation]]:
        monitor, last_scores = state if state is not None else (make_monitor(), {})
        alerts, latest = _feed(monitor, obs)
        for a in alerts:
            DRIFT_ALERTS.labels(a.kind, a.severity).inc()
        out: list[Alert | Mutation] = list(alerts)
        scores = monitor.scores()
        changed = {c for c, s in scores.items() if last_scores.get(c) != _rounded(s)}
        changed |= {a.cluster for a in alerts}
        for c in sorted(changed):
            st = monitor.status(c)
            out.append(drift_mutation(c, scores=scores.get(c, {}), alerts=[_alert_json(a) for a in st["alerts"]],
                                      reference=st.get("reference", {}), ts_ms=latest or 0))
            last_scores[c] = _rounded(scores.get(c, {}))
        for kind in KINDS:
            DRIFT_SCORE.labels(kind).set(max((s.get(kind, 0.0) for s in scores.values()), default=0.0))
        return (monitor, last_scores), out

    return step


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in scores.items()}


def _alert_json(a: Any) -> dict[str, Any]:
    return a.to_dict() if hasattr(a, "to_dict") else dict(a)


def drift_alerts_and_status(items: Stream[EmbeddedItem], clustered: Stream[ClusteredEngagement],
                            triples: Stream[Triple], make_monitor: Callable[[], Any]
                            ) -> tuple[Stream[Alert], Stream[Mutation]]:
    """Wire the drift monitor; returns (alerts, drift status mutations for the live index)."""
    merged = op.merge("drift_inputs", items, clustered, triples)
    keyed = op.flat_map_batch("drift_observations", merged, observe)
    out = op.flat_map_batch("unkey_drift", op.stateful_flat_map("monitor_drift", keyed, _monitor_step(make_monitor)),
                            lambda batch: [v for _, v in batch])
    split = op.branch("split_alerts", out, lambda x: type(x) is Alert)
    return split.trues, split.falses
