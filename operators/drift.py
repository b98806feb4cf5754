"""Interest drift per cluster, in event time: transition, engagement, content and volume signals (issue #5).

Every signal compares a *current* window (the last ``window_ms[kind]`` of event time, in hourly buckets) with a
*reference*. The reference moves by policy and is stated in each alert:

- ``"rolling"`` (default, no calls needed): the ``reference_ms`` of event time that ends where the current window
  starts (content: every item seen before the current window);
- any reason passed to :meth:`DriftMonitor.mark_reference` (e.g. ``"refresh"``, ``"fine-tune"``): the state as
  of that time, frozen until the next mark (or ``reference_max_age_ms``, after which the monitor rolls again).

Scores are *lower confidence bounds* of an effect size (the effect minus ``z`` standard errors, 0 when the
data cannot tell), so that small, noisy clusters score 0 instead of crying wolf, and every score has units:

- transition (per pair, reported on its second cluster): Jensen-Shannon divergence (bits) of the successor
  distributions minus its small-sample bias; evidence has 1 - Jaccard of the top-5 successors (the paper's);
- engagement: |positive rate now - reference| - z * se;
- content: drop of the fresh items' mean cosine to the reference centroid - z * se (plus centroid shift and
  novel share as evidence);
- volume: |log(share now / share at reference)| - z * se (a cluster with no reference traffic has share ~0,
  smoothed by +0.5, so one that starts trending scores high).

:class:`AlertGate` turns a score series into one alert per drift (hysteresis + cooldown, warning -> critical
escalation at most once). :func:`calibrate` picks thresholds from stationary score series.

>>> m = DriftMonitor(DriftConfig())
>>> h = 3_600_000
>>> rng = np.random.default_rng(0)
>>> alerts = []
>>> for i in range(24 * 6 * 20):  # 6 days, 20 engagements/hour on cluster 1; its rate drops on day 4
...     ts = i * h // 20
...     alerts += m.on_engagement(1, ts, bool(rng.random() < (0.6 if ts < 4 * 24 * h else 0.2)))
...     alerts += m.on_engagement(2, ts, bool(rng.random() < 0.5))
>>> [(a.cluster, a.kind, a.severity, a.reference["policy"]) for a in alerts]
[(1, 'engagement', 'warning', 'rolling'), (1, 'engagement', 'critical', 'rolling')]
>>> alerts[0].alert_id == alerts[1].alert_id, alerts[0].evidence["rate_before"] > alerts[0].evidence["rate_after"]
(True, True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from operators.alerts import KINDS, Alert

__all__ = [
    "AlertGate", "ContentDrift", "DriftConfig", "DriftMonitor", "EngagementDrift", "TransitionDrift",
    "VolumeDrift", "calibrate", "count_episodes", "jaccard_distance", "js_divergence",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


# ------------------------------------------------------------------------------------------------ small maths


def js_divergence(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """Jensen-Shannon divergence in bits (0..1) of two count or share maps.

    >>> js_divergence({"a": 3, "b": 1}, {"a": 6, "b": 2}), js_divergence({"a": 1}, {"b": 5})
    (0.0, 1.0)
    """
    tp, tq = sum(p.values()), sum(q.values())
    if tp <= 0 or tq <= 0:
        return 0.0
    js = 0.0
    for k in set(p) | set(q):
        a, b = p.get(k, 0.0) / tp, q.get(k, 0.0) / tq
        m = 0.5 * (a + b)
        if a > 0:
            js += 0.5 * a * math.log2(a / m)
        if b > 0:
            js += 0.5 * b * math.log2(b / m)
    return max(0.0, min(1.0, js))


def top_k(counts: Mapping[Any, float], k: int) -> list[Any]:
    """Keys by count, largest first (ties: smaller key first, so results are deterministic)."""
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def jaccard_distance(a: Iterable[Any], b: Iterable[Any]) -> float:
    """1 - |A & B| / |A | B| (the paper's top-5 measure); 0.0 for two empty sets.

    >>> jaccard_distance([1, 2, 3], [2, 3, 4])
    0.5
    """
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 - len(sa & sb) / len(union) if union else 0.0


def _check_positive(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


# ----------------------------------------------------------------------------------------------- bucketed window


class _Buckets:
    """Per-bucket additive stats (lists of floats, or Counters) over event time, pruned past ``keep_ms``."""

    __slots__ = ("bucket_ms", "data", "keep_ms")

    def __init__(self, bucket_ms: int, keep_ms: int) -> None:
        self.bucket_ms, self.keep_ms = bucket_ms, keep_ms
        self.data: dict[int, Any] = {}

    def get(self, ts_ms: int, new: Any) -> Any:
        b = ts_ms // self.bucket_ms
        row = self.data.get(b)
        if row is None:
            row = self.data[b] = new()
        return row

    def prune(self, now_ms: int) -> None:
        lo = (now_ms - self.keep_ms) // self.bucket_ms
        for b in [b for b in self.data if b < lo]:
            del self.data[b]

    def rows(self, start_ms: int, end_ms: int) -> list[Any]:
        """Rows of the buckets that start in [start_ms, end_ms)."""
        lo, hi = -(-start_ms // self.bucket_ms), -(-end_ms // self.bucket_ms)
        return [row for b, row in self.data.items() if lo <= b < hi]


class _Running:
    """A Counter kept equal to the sum of a bucket range [lo, hi) as the range slides (no re-summing)."""

    __slots__ = ("hi", "lo", "sum")

    def __init__(self) -> None:
        self.lo: int | None = None
        self.hi: int | None = None
        self.sum: Counter = Counter()

    def move(self, data: dict[int, Counter], lo: int, hi: int) -> Counter:
        old_lo, old_hi = self.lo, self.hi
        if old_lo is None or old_hi is None or lo < old_lo or hi < old_hi or lo >= old_hi \
                or (lo - old_lo) + (hi - old_hi) > 4 * len(data) + 8:
            self.sum = Counter()
            for b, row in data.items():
                if lo <= b < hi:
                    self.sum.update(row)
        else:
            total = self.sum
            for b in range(old_hi, hi):
                row = data.get(b)
                if row:
                    total.update(row)
            for b in range(old_lo, lo):
                row = data.get(b)
                if row:
                    for k, v in row.items():
                        left = total[k] - v
                        if left > 0:
                            total[k] = left
                        else:
                            del total[k]
        self.lo, self.hi = lo, hi
        return self.sum

    def add(self, b: int, key: Any, n: int = 1) -> None:
        if self.lo is not None and self.lo <= b < self.hi:  # type: ignore[operator]
            self.sum[key] += n


def _bucket_range(span: tuple[int, int], bucket_ms: int) -> tuple[int, int]:
    return -(-span[0] // bucket_ms), -(-span[1] // bucket_ms)


def _sum_rows(rows: list[list[float]], width: int) -> list[float]:
    out = [0.0] * width
    for r in rows:
        for i in range(width):
            out[i] += r[i]
    return out


@dataclass(frozen=True)
class _Window:
    """Where the reference and current windows lie at ``now_ms`` (``frozen_ms`` set: a marked reference)."""

    now_ms: int
    window_ms: int
    reference_ms: int
    frozen_ms: int | None = None

    @property
    def current(self) -> tuple[int, int]:
        lo = self.now_ms - self.window_ms
        return (max(lo, self.frozen_ms) if self.frozen_ms is not None else lo), self.now_ms

    @property
    def reference(self) -> tuple[int, int]:
        end = self.frozen_ms if self.frozen_ms is not None else self.now_ms - self.window_ms
        return end - self.reference_ms, end


# ------------------------------------------------------------------------------------------------- the signals


class EngagementDrift:
    """Shift of one cluster's positive-engagement rate: ``|rate now - rate at reference| - z * se`` (0 if below).

    ``None`` until both windows hold ``min_support`` engagements.

    >>> e = EngagementDrift(min_support=20)
    >>> for i in range(200):
    ...     _ = e.update(i * 60_000, i % 2 == 0)  # 30 an hour, half positive
    >>> e.evaluate(200 * 60_000) is None  # not enough reference yet
    True
    >>> for i in range(200, 400):
    ...     _ = e.update(i * 60_000, i % 10 == 0)  # the rate drops to 0.1
    >>> r = e.evaluate(400 * 60_000, _Window(400 * 60_000, 3 * HOUR_MS, 72 * HOUR_MS))
    >>> round(r["rate_before"], 2), round(r["rate_after"], 2), r["score"] > 0.2
    (0.43, 0.1, True)
    """

    def __init__(self, bucket_ms: int = HOUR_MS, keep_ms: int = 96 * HOUR_MS, min_support: int = 60,
                 z: float = 2.0) -> None:
        _check_positive("min_support", min_support)
        self.min_support, self.z = min_support, z
        self._buckets = _Buckets(bucket_ms, keep_ms)
        self._frozen: list[float] | None = None  # [n, positives] at the marked reference

    def update(self, ts_ms: int, positive: bool, n: int = 1) -> EngagementDrift:
        """``n`` engagements at ``ts_ms``, ``positive`` of them positive (a bool counts as 0 or 1 of n=1)."""
        row = self._buckets.get(ts_ms, lambda: [0.0, 0.0])
        row[0] += n
        row[1] += positive
        return self

    def mark_reference(self, win: _Window) -> None:
        self._frozen = _sum_rows(self._buckets.rows(*win.reference), 2)

    def evaluate(self, now_ms: int, win: _Window | None = None) -> dict[str, Any] | None:
        win = win or _Window(now_ms, 12 * HOUR_MS, 72 * HOUR_MS)
        self._buckets.prune(now_ms)
        n0, p0 = self._frozen if win.frozen_ms is not None and self._frozen else _sum_rows(
            self._buckets.rows(*win.reference), 2)
        n1, p1 = _sum_rows(self._buckets.rows(*win.current), 2)
        if n0 < self.min_support or n1 < self.min_support:
            return None
        r0, r1 = p0 / n0, p1 / n1
        se = math.sqrt(max(r0 * (1 - r0), 1e-4) / n0 + max(r1 * (1 - r1), 1e-4) / n1)
        score = max(0.0, abs(r1 - r0) - self.z * se)
        return {"score": score, "measure": "|rate change| - z*se", "rate_before": r0, "n_before": int(n0),
                "rate_after": r1, "n_after": int(n1)}

    def state(self) -> dict[str, Any]:
        return {"buckets": {b: list(r) for b, r in self._buckets.data.items()}, "frozen": self._frozen}

    def load(self, st: dict[str, Any]) -> EngagementDrift:
        self._buckets.data = {b: list(r) for b, r in st["buckets"].items()}
        self._frozen = st["frozen"]
        return self


class VolumeDrift:
    """Each cluster's share of all engagements now vs at the reference: ``|log(share ratio)| - z * se``.

    Shares are smoothed (+0.5 counts), so a cluster with no reference traffic that starts trending scores high.
    ``None`` while the current window has under ``min_support`` engagements in all, or the cluster has fewer than
    ``min_cluster`` in both windows together.

    >>> v = VolumeDrift(min_support=100, min_cluster=10)
    >>> for i in range(6_000):  # 3 clusters, then cluster 9 appears trending after 88 h
    ...     ts = i * 60_000
    ...     _ = v.update(9 if ts >= 88 * HOUR_MS and i % 5 == 0 else i % 3, ts)
    >>> win = _Window(6_000 * 60_000, 12 * HOUR_MS, 72 * HOUR_MS)
    >>> r = v.evaluate(9, win)
    >>> round(r["share_before"], 3), round(r["share_after"], 3), r["score"] > 3
    (0.0, 0.2, True)
    >>> v.evaluate(0, win)["score"] < 0.5
    True
    """

    def __init__(self, bucket_ms: int = HOUR_MS, keep_ms: int = 96 * HOUR_MS, min_support: int = 200,
                 min_cluster: int = 20, z: float = 2.0) -> None:
        _check_positive("min_support", min_support)
        self.min_support, self.min_cluster, self.z = min_support, min_cluster, z
        self._buckets = _Buckets(bucket_ms, keep_ms)  # bucket -> Counter(cluster -> n), with key None = all
        self._frozen: Counter | None = None
        self._cur, self._ref = _Running(), _Running()  # derived: rebuilt after a restore

    def update(self, cluster: int, ts_ms: int, n: int = 1) -> VolumeDrift:
        row = self._buckets.get(ts_ms, Counter)
        row[cluster] += n
        row[None] += n
        b = ts_ms // self._buckets.bucket_ms
        for w in (self._cur, self._ref):
            w.add(b, cluster, n)
            w.add(b, None, n)
        return self

    def mark_reference(self, win: _Window) -> None:
        self._frozen = sum(self._buckets.rows(*win.reference), Counter())

    def counts(self, win: _Window) -> tuple[Counter, Counter]:
        """(reference, current) counts per cluster (key None: all clusters)."""
        bms, data = self._buckets.bucket_ms, self._buckets.data
        ref = self._frozen if win.frozen_ms is not None and self._frozen is not None else \
            self._ref.move(data, *_bucket_range(win.reference, bms))
        return ref, self._cur.move(data, *_bucket_range(win.current, bms))

    def prune(self, now_ms: int) -> None:
        """Drop old buckets: call after :meth:`counts` at each evaluation."""
        self._buckets.prune(now_ms)

    def evaluate(self, cluster: int, win: _Window, counts: tuple[Counter, Counter] | None = None
                 ) -> dict[str, Any] | None:
        ref, cur = counts or self.counts(win)
        n0, n1 = ref[None], cur[None]
        c0, c1 = ref.get(cluster, 0), cur.get(cluster, 0)
        if n0 < self.min_support or n1 < self.min_support or c0 + c1 < self.min_cluster:
            return None
        s0, s1 = (c0 + 0.5) / (n0 + 1), (c1 + 0.5) / (n1 + 1)
        lr = math.log(s1 / s0)
        se = math.sqrt(1 / (c0 + 0.5) + 1 / (c1 + 0.5))
        return {"score": max(0.0, abs(lr) - self.z * se), "measure": "|log share ratio| - z*se",
                "share_before": c0 / n0, "count_before": int(c0), "share_after": c1 / n1, "count_after": int(c1),
                "total_before": int(n0), "total_after": int(n1)}

    def state(self) -> dict[str, Any]:
        return {"buckets": {b: dict(r) for b, r in self._buckets.data.items()},
                "frozen": dict(self._frozen) if self._frozen is not None else None}

    def load(self, st: dict[str, Any]) -> VolumeDrift:
        self._buckets.data = {b: Counter(r) for b, r in st["buckets"].items()}
        self._cur, self._ref = _Running(), _Running()
        self._frozen = Counter(st["frozen"]) if st["frozen"] is not None else None
        return self


class TransitionDrift:
    """One pair's successor distribution now vs at the reference: JSD (bits) minus its small-sample bias.

    The bias of the plug-in JSD of two samples (K successors seen, n0 and n1 triples) is about
    ``(K - 1) * (1/n0 + 1/n1) / (8 ln 2)``; the score is the JSD less ``z / 2`` times that (floored at 0).
    Evidence also has 1 - Jaccard of the top-5 successors, the paper's measure. ``None`` until both windows
    hold ``min_support`` triples.

    >>> t = TransitionDrift(min_support=20)
    >>> for i in range(300):
    ...     _ = t.update("abc"[i % 3] if i < 156 else "xyz"[i % 3], i * 600_000)  # a new successor set at 26 h
    >>> r = t.evaluate(_Window(300 * 600_000, 24 * HOUR_MS, 72 * HOUR_MS))
    >>> r["top_before"], r["top_after"], r["jaccard_distance"], round(r["score"], 2)
    ([['a', 52], ['b', 52], ['c', 52]], [['x', 48], ['y', 48], ['z', 48]], 1.0, 0.99)
    """

    def __init__(self, bucket_ms: int = HOUR_MS, keep_ms: int = 120 * HOUR_MS, min_support: int = 40,
                 z: float = 2.0, k: int = 5) -> None:
        _check_positive("min_support", min_support)
        self.min_support, self.z, self.k = min_support, z, k
        self._buckets = _Buckets(bucket_ms, keep_ms)
        self._frozen: Counter | None = None
        self._cur, self._ref = _Running(), _Running()  # derived: rebuilt after a restore

    def update(self, c_next: Any, ts_ms: int) -> TransitionDrift:
        self._buckets.get(ts_ms, Counter)[c_next] += 1
        b = ts_ms // self._buckets.bucket_ms
        self._cur.add(b, c_next)  # a late event inside a window already summed
        self._ref.add(b, c_next)
        return self

    def mark_reference(self, win: _Window) -> None:
        self._frozen = sum(self._buckets.rows(*win.reference), Counter())

    def evaluate(self, win: _Window) -> dict[str, Any] | None:
        bms, data = self._buckets.bucket_ms, self._buckets.data
        ref = self._frozen if win.frozen_ms is not None and self._frozen is not None else \
            self._ref.move(data, *_bucket_range(win.reference, bms))
        cur = self._cur.move(data, *_bucket_range(win.current, bms))
        self._buckets.prune(win.now_ms)  # after the move: the windows subtract buckets that leave them
        n0, n1 = sum(ref.values()), sum(cur.values())
        if n0 < self.min_support or n1 < self.min_support:
            return None
        js = js_divergence(ref, cur)
        bias = (len(set(ref) | set(cur)) - 1) * (1 / n0 + 1 / n1) / (8 * math.log(2))
        t0, t1 = top_k(ref, self.k), top_k(cur, self.k)
        return {"score": max(0.0, js - self.z * 0.5 * bias), "measure": "JSD bits - bias", "js": js,
                "jaccard_distance": jaccard_distance(t0, t1), "n_before": int(n0), "n_after": int(n1),
                "top_before": [[c, int(ref[c])] for c in t0], "top_after": [[c, int(cur[c])] for c in t1]}

    @property
    def empty(self) -> bool:
        return not self._buckets.data

    def state(self) -> dict[str, Any]:
        return {"buckets": {b: dict(r) for b, r in self._buckets.data.items()},
                "frozen": dict(self._frozen) if self._frozen is not None else None}

    def load(self, st: dict[str, Any]) -> TransitionDrift:
        self._buckets.data = {b: Counter(r) for b, r in st["buckets"].items()}
        self._cur, self._ref = _Running(), _Running()
        self._frozen = Counter(st["frozen"]) if st["frozen"] is not None else None
        return self


class ContentDrift:
    """Fresh items of one cluster vs the reference centroid of its items.

    The reference is every item seen before the current window (or before a marked reference). The score is the
    drop of the fresh items' mean cosine to the reference centroid below the reference items' own mean cosine
    to it (leave-one-out), less ``z`` standard errors; the spread of item cosines is tracked as items arrive
    (each against the centroid of the items before it). Evidence: centroid shift (1 - cosine of the fresh mean
    to the reference centroid) and the novel share before/after (``novel`` as flagged by the caller). ``None``
    under ``min_support`` fresh items or ``min_reference`` reference items.

    >>> rng = np.random.default_rng(1)
    >>> base, other = np.eye(8)[0], np.eye(8)[1]
    >>> c = ContentDrift(min_support=5, min_reference=10, window_ms=12 * HOUR_MS)
    >>> for i in range(40):  # 30 old items around `base`, then 10 new ones around `other` 30 h later
    ...     v = (base if i < 30 else other) + 0.3 * rng.standard_normal(8)
    ...     _ = c.update(i * 60_000 + (30 * HOUR_MS if i >= 30 else 0), v, novel=i >= 30)
    >>> r = c.evaluate(_Window(31 * HOUR_MS, 12 * HOUR_MS, 72 * HOUR_MS))
    >>> r["n_before"], r["n_after"], r["score"] > 0.3, r["novel_share_before"], r["novel_share_after"]
    (30, 10, True, 0.0, 1.0)
    """

    def __init__(self, bucket_ms: int = HOUR_MS, keep_ms: int = 96 * HOUR_MS, min_support: int = 4,
                 min_reference: int = 10, z: float = 2.0, window_ms: int = 24 * HOUR_MS) -> None:
        _check_positive("min_support", min_support)
        self.min_support, self.min_reference, self.z, self.window_ms = min_support, min_reference, z, window_ms
        self._buckets = _Buckets(bucket_ms, window_ms + 2 * bucket_ms)  # bucket -> [(unit vector, novel)]
        self._total: list[Any] | None = None  # [vec_sum, n, novel, sum_a, sum_a2, n_a] over every item seen
        self._frozen: list[Any] | None = None  # the same, at a marked reference

    def update(self, ts_ms: int, vector: np.ndarray, novel: bool = False) -> ContentDrift:
        v = np.asarray(vector, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(v))
        v = v / norm if norm > 0 else v
        tot = self._total
        if tot is None:
            tot = self._total = [np.zeros(len(v)), 0, 0, 0.0, 0.0, 0]
        if tot[1] >= self.min_reference:  # spread: cosine to the centroid of the items before this one
            cn = float(np.linalg.norm(tot[0]))
            a = float(v @ tot[0]) / cn if cn > 0 else 0.0
            tot[3] += a
            tot[4] += a * a
            tot[5] += 1
        tot[0] = tot[0] + v
        tot[1] += 1
        tot[2] += bool(novel)
        self._buckets.get(ts_ms, list).append((v, bool(novel)))
        return self

    def mark_reference(self, win: _Window) -> None:
        if self._total is not None:
            cur = [x for row in self._buckets.rows(win.frozen_ms + 1, 2 ** 62) for x in row] \
                if win.frozen_ms is not None else []
            ref = list(self._total)
            ref[0] = ref[0] - sum((v for v, _ in cur), np.zeros_like(ref[0]))
            ref[1] -= len(cur)
            ref[2] -= sum(n for _, n in cur)
            self._frozen = ref

    def evaluate(self, win: _Window) -> dict[str, Any] | None:
        self._buckets.prune(win.now_ms)
        if self._total is None:
            return None
        lo = win.now_ms - self.window_ms
        frozen = win.frozen_ms is not None and self._frozen is not None
        if frozen:
            lo = max(lo, win.frozen_ms)  # type: ignore[type-var]
        fresh = [x for row in self._buckets.rows(lo, win.now_ms + 1) for x in row]
        if frozen:
            ref = self._frozen
        else:
            ref = list(self._total)
            ref[0] = ref[0] - sum((v for v, _ in fresh), np.zeros_like(ref[0]))
            ref[1] -= len(fresh)
            ref[2] -= sum(n for _, n in fresh)
        assert ref is not None
        s0, n0 = ref[0], ref[1]
        n1 = len(fresh)
        r0 = float(np.linalg.norm(s0))
        if n1 < self.min_support or n0 < self.min_reference or r0 <= 0:
            return None
        c0 = s0 / r0
        m0 = (r0 * r0 - n0) / (n0 * r0)  # mean leave-one-out cosine of the reference items to their centroid
        a = np.array([v @ c0 for v, _ in fresh])
        m1, var1 = float(a.mean()), float(a.var(ddof=1)) if n1 > 1 else 0.0
        var0 = ref[4] / ref[5] - (ref[3] / ref[5]) ** 2 if ref[5] > 1 else var1
        var0 = max(var0, 1e-4)
        se = math.sqrt(var0 / n0 + max(var1, var0) / n1)
        mean1 = sum((v for v, _ in fresh), np.zeros_like(c0))
        shift = 1.0 - float(mean1 @ c0) / (float(np.linalg.norm(mean1)) or 1.0)
        return {"score": max(0.0, (m0 - m1) - self.z * se), "measure": "drop of mean cosine to centroid - z*se",
                "cos_before": m0, "cos_after": m1, "centroid_shift": shift, "n_before": int(n0), "n_after": n1,
                "novel_share_before": ref[2] / n0, "novel_share_after": sum(n for _, n in fresh) / n1}

    def state(self) -> dict[str, Any]:
        def plain(row: list[Any] | None) -> list[Any] | None:
            return None if row is None else [row[0].tolist(), *row[1:]]
        return {"buckets": {b: [(v.tolist(), n) for v, n in r] for b, r in self._buckets.data.items()},
                "total": plain(self._total), "frozen": plain(self._frozen)}

    def load(self, st: dict[str, Any]) -> ContentDrift:
        def arr(row: list[Any] | None) -> list[Any] | None:
            return None if row is None else [np.asarray(row[0], dtype=np.float64), *row[1:]]
        self._buckets.data = {b: [(np.asarray(v, dtype=np.float64), n) for v, n in r]
                              for b, r in st["buckets"].items()}
        self._total, self._frozen = arr(st["total"]), arr(st["frozen"])
        return self


# -------------------------------------------------------------------------------------------- one alert per drift


class AlertGate:
    """De-duplication of one (cluster, kind) score series: one drift -> one alert, escalated at most once.

    ``update(score, ts_ms)`` returns ``"warning"`` or ``"critical"`` when a new alert opens, ``"escalate"`` when
    the open alert goes warning -> critical, else None. An alert stays open while the score is at or above
    ``rearm`` (hysteresis); a new one opens only after it closed *and* ``cooldown_ms`` passed since the last open.

    >>> g = AlertGate(warning=1.0, critical=2.0, rearm=0.5, cooldown_ms=10)
    >>> [g.update(s, t) for t, s in enumerate([0.2, 1.1, 1.5, 2.5, 3.0, 0.7, 1.2, 0.1, 1.3, 0.1, 0.0, 1.4])]
    [None, 'warning', None, 'escalate', None, None, None, None, None, None, None, 'warning']
    """

    __slots__ = ("cooldown_ms", "critical", "opened_ms", "rearm", "severity", "warning")

    def __init__(self, warning: float, critical: float, rearm: float, cooldown_ms: int) -> None:
        if not 0 <= rearm <= warning <= critical:
            raise ValueError(f"need 0 <= rearm <= warning <= critical, got {rearm}, {warning}, {critical}")
        self.warning, self.critical, self.rearm, self.cooldown_ms = warning, critical, rearm, cooldown_ms
        self.severity: str | None = None  # of the open alert
        self.opened_ms: int | None = None

    def update(self, score: float, ts_ms: int) -> str | None:
        if self.severity is not None:
            if score < self.rearm:
                self.severity = None
                return None
            if self.severity == "warning" and score >= self.critical:
                self.severity = "critical"
                return "escalate"
            return None
        if score < self.warning:
            return None
        if self.opened_ms is not None and ts_ms - self.opened_ms < self.cooldown_ms:
            return None
        self.severity = "critical" if score >= self.critical else "warning"
        self.opened_ms = ts_ms
        return self.severity

    @property
    def is_open(self) -> bool:
        return self.severity is not None


def count_episodes(series: Iterable[tuple[int, float]], warning: float, rearm: float, cooldown_ms: int) -> int:
    """How many alerts an :class:`AlertGate` raises on one (ts_ms, score) series.

    >>> count_episodes([(0, 0.0), (1, 2.0), (2, 2.0), (3, 0.0), (50, 2.0)], 1.0, 0.5, 10)
    2
    """
    g = AlertGate(warning, max(warning, 1e300), min(rearm, warning), cooldown_ms)
    return sum(g.update(s, t) is not None for t, s in series)


# -------------------------------------------------------------------------------------------------- the monitor


# Calibrated by :func:`calibrate` on the generator's stationary scenario (seed 11, GeneratorConfig defaults:
# 16 clusters x 14 days = 5,376 cluster-hours), target 0.5 false alarms per 1,000 cluster-hours, with minimal
# effect sizes as floors (transition 0.25 bits, engagement 0.05, content 0.03, volume 0.5 in log share). The
# floors set transition, content and volume; engagement is the calibrated level. Reproduce with
#   .venv/bin/python bench/drift_eval.py --calibrate
DEFAULT_WARNING = {"transition": 0.25, "engagement": 0.0955, "content": 0.03, "volume": 0.5}
DEFAULT_CRITICAL = {"transition": 0.5, "engagement": 0.1911, "content": 0.06, "volume": 1.0}


@dataclass
class DriftConfig:
    """Windows (event time), support floors, thresholds (in each signal's units) and alert policy."""

    bucket_ms: int = HOUR_MS  # evaluation cadence and window granularity
    window_ms: dict[str, int] = field(default_factory=lambda: {
        "transition": 48 * HOUR_MS, "engagement": 12 * HOUR_MS, "content": 24 * HOUR_MS, "volume": 12 * HOUR_MS})
    reference_ms: int = 72 * HOUR_MS  # length of the rolling reference
    reference_max_age_ms: int = 14 * DAY_MS  # a marked reference older than this falls back to rolling
    min_support: dict[str, int] = field(default_factory=lambda: {
        "transition": 40, "engagement": 60, "content": 4, "volume": 20})
    min_total: int = 200  # all engagements in a window, for volume shares
    min_reference_items: int = 10
    z: float = 2.0  # standard errors taken off every effect size
    warning: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WARNING))
    critical: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CRITICAL))
    rearm_fraction: float = 0.5  # an alert closes when its score falls below this share of the warning level
    # After an alert opens, no new one of the same (cluster, kind) for this long. None: per kind, window_ms[kind] +
    # reference_ms, the time the rolling reference takes to move past the drift's start (no second alert while
    # the reference still holds the old state).
    cooldown_ms: int | None = None
    # How often each kind is re-scored (event time; multiples of bucket_ms). Transition and content windows are a
    # day or two long: scoring them every hour cost most of the monitor's time and moved detection little.
    evaluate_every_ms: dict[str, int] = field(default_factory=lambda: {
        "transition": 4 * HOUR_MS, "engagement": HOUR_MS, "content": 2 * HOUR_MS, "volume": HOUR_MS})

    def __post_init__(self) -> None:
        _check_positive("bucket_ms", self.bucket_ms)
        _check_positive("reference_ms", self.reference_ms)
        for name in ("window_ms", "min_support", "warning", "critical"):
            d = getattr(self, name)
            if set(d) != set(KINDS):
                raise ValueError(f"{name} needs exactly the kinds {KINDS}, got {sorted(d)}")
            for k, v in d.items():
                _check_positive(f"{name}[{k}]", v)
        for k in KINDS:
            if self.critical[k] < self.warning[k]:
                raise ValueError(f"critical[{k}] must be >= warning[{k}]")
        if not 0 <= self.rearm_fraction <= 1:
            raise ValueError(f"rearm_fraction must be in [0, 1], got {self.rearm_fraction}")
        if self.cooldown_ms is not None and (isinstance(self.cooldown_ms, bool) or self.cooldown_ms < 0):
            raise ValueError(f"cooldown_ms must be None or >= 0, got {self.cooldown_ms!r}")

    def cooldown(self, kind: str) -> int:
        """The cooldown of ``kind`` in ms (see ``cooldown_ms``)."""
        return self.cooldown_ms if self.cooldown_ms is not None else self.window_ms[kind] + self.reference_ms


def calibrate(series: Mapping[str, Mapping[int, list[tuple[int, float]]]], cluster_hours: float,
              target_per_1000h: float = 0.5, *, rearm_fraction: float = 0.5,
              cooldown_ms: int | Mapping[str, int] = 84 * HOUR_MS,
              margin: float = 1.25, floors: Mapping[str, float] | None = None,
              critical_factor: float = 2.0) -> tuple[dict[str, float], dict[str, float]]:
    """(warning, critical) thresholds per kind from stationary score series ``{kind: {cluster: [(ts, score)]}}``.

    Method: the false-alarm budget ``target_per_1000h * cluster_hours / 1000`` is split evenly over the kinds;
    per kind, the warning level is the smallest observed score level at which the :class:`AlertGate` (same
    hysteresis and cooldown) raises no more alerts than its share, times ``margin`` (the tail is estimated from
    few points), and at least ``floors[kind]`` (a minimal effect size). Critical is ``critical_factor`` times
    warning and above the largest stationary score, so a stationary stream raises no critical alert.

    >>> s = {"volume": {1: [(i * HOUR_MS, 0.1 * (i % 7)) for i in range(1000)]}}
    >>> calibrate(s, cluster_hours=1000, target_per_1000h=1.0, floors={"volume": 0.1})
    ({'volume': 0.75}, {'volume': 1.5})
    """
    budget = target_per_1000h * cluster_hours / 1000 / max(1, len(series))
    floors = floors or {}
    warning, critical = {}, {}
    for kind, per_cluster in series.items():
        scores = sorted({s for ser in per_cluster.values() for _, s in ser if s > 0}, reverse=True)
        chosen = 0.0
        for level in scores:  # from the top down: the lowest level still within budget
            cd = cooldown_ms[kind] if isinstance(cooldown_ms, Mapping) else cooldown_ms
            n = sum(count_episodes(ser, level, rearm_fraction * level, cd) for ser in per_cluster.values())
            if n > budget:
                break
            chosen = level
        if scores and chosen == scores[-1]:
            chosen = scores[-1]
        elif scores and chosen == 0.0:
            chosen = scores[0]
        top = scores[0] if scores else 0.0
        w = max(chosen * margin, floors.get(kind, 0.0), 1e-9)
        warning[kind] = round(w, 4)
        critical[kind] = round(max(critical_factor * w, top * margin), 4)
    return warning, critical


class DriftMonitor:
    """All four signals for every cluster, evaluated at each ``bucket_ms`` boundary of event time.

    Event time is the largest ``ts_ms`` seen (late events are counted in their own bucket). ``on_*`` and
    :meth:`advance` return the alerts raised by the evaluations their event time triggered.
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._reset()

    def _reset(self) -> None:
        cfg = self.config
        self._keep = cfg.reference_ms + max(cfg.window_ms.values()) + 2 * cfg.bucket_ms
        self._engagement: dict[int, EngagementDrift] = {}
        self._content: dict[int, ContentDrift] = {}
        self._pairs: dict[tuple[int, int], TransitionDrift] = {}
        self._volume = VolumeDrift(cfg.bucket_ms, self._keep, cfg.min_total, cfg.min_support["volume"], cfg.z)
        self._gates: dict[tuple[int, str], AlertGate] = {}
        self._open: dict[tuple[int, str], Alert] = {}
        self._scores: dict[int, dict[str, float]] = {}
        self._last: dict[tuple[int, str], dict[str, Any]] = {}
        self._eval_slots: dict[str, int] = {}  # kind -> evaluate_every_ms slot last scored (see _due)
        self._now: int | None = None
        self._evaluated: int | None = None  # the last bucket boundary evaluated
        self._mark: tuple[int, str] | None = None  # (since_ms, reason)
        self.updates = 0

    # -- inputs ------------------------------------------------------------------------------------------

    def on_engagement(self, cluster: int, ts_ms: int, positive: bool) -> list[Alert]:
        out = self.advance(ts_ms)
        e = self._engagement.get(cluster)
        if e is None:
            e = self._engagement[cluster] = EngagementDrift(
                self.config.bucket_ms, self._keep, self.config.min_support["engagement"], self.config.z)
        e.update(ts_ms, positive)
        self._volume.update(cluster, ts_ms)
        self.updates += 1
        return out

    def on_engagements(self, cluster: int, ts_ms: int, n: int, positive: int) -> list[Alert]:
        """``n`` engagements of one cluster in the bucket of ``ts_ms`` (the latest of them), ``positive`` of them
        positive: the same as ``n`` calls of :meth:`on_engagement` within one bucket, at a fraction of the cost."""
        out = self.advance(ts_ms)
        e = self._engagement.get(cluster)
        if e is None:
            e = self._engagement[cluster] = EngagementDrift(
                self.config.bucket_ms, self._keep, self.config.min_support["engagement"], self.config.z)
        e.update(ts_ms, positive, n)
        self._volume.update(cluster, ts_ms, n)
        self.updates += n
        return out

    def on_item(self, cluster: int, ts_ms: int, vector: np.ndarray, novel: bool) -> list[Alert]:
        """A content item of ``cluster``. Its timestamp is a publish time, which may run ahead of the engagements
        (a catalogue loaded in advance, scheduled content): it is counted in its own bucket but never moves event
        time; engagements and triples do. Returns no alerts (kept a list for a uniform interface)."""
        out: list[Alert] = []
        c = self._content.get(cluster)
        if c is None:
            cfg = self.config
            c = self._content[cluster] = ContentDrift(cfg.bucket_ms, self._keep, cfg.min_support["content"],
                                                      cfg.min_reference_items, cfg.z, cfg.window_ms["content"])
        c.update(ts_ms, vector, novel)
        self.updates += 1
        return out

    def on_triple(self, c1: int, c2: int, c_next: int, ts_ms: int) -> list[Alert]:
        out = self.advance(ts_ms)
        t = self._pairs.get((c1, c2))
        if t is None:
            t = self._pairs[(c1, c2)] = TransitionDrift(self.config.bucket_ms, self._keep,
                                                        self.config.min_support["transition"], self.config.z)
        t.update(c_next, ts_ms)
        self.updates += 1
        return out

    def advance(self, ts_ms: int) -> list[Alert]:
        """Move event time to ``ts_ms``; evaluate every cluster at each bucket boundary passed."""
        if self._now is not None and ts_ms <= self._now:
            return []
        self._now = ts_ms
        b = self.config.bucket_ms
        boundary = ts_ms // b * b
        if self._evaluated is None:
            self._evaluated = boundary
            return []
        if boundary <= self._evaluated:
            return []
        self._evaluated = boundary  # a jump over many buckets evaluates once, at the latest boundary
        return self._evaluate(boundary)

    # -- reference policy ----------------------------------------------------------------------------------

    def mark_reference(self, ts_ms: int, reason: str) -> None:
        """Compare everything against the state as of ``ts_ms`` from now on (e.g. reason ``"refresh"``)."""
        if not reason or reason == "rolling":
            raise ValueError("reason must be a non-empty name other than 'rolling'")
        self._mark = (ts_ms, reason)
        for kind, sig in (("engagement", self._engagement), ("content", self._content)):
            for s in sig.values():
                s.mark_reference(self._window(kind, ts_ms))
        for t in self._pairs.values():
            t.mark_reference(self._window("transition", ts_ms))
        self._volume.mark_reference(self._window("volume", ts_ms))

    def _frozen(self, now_ms: int) -> tuple[int, str] | None:
        m = self._mark
        if m is None or now_ms - m[0] > self.config.reference_max_age_ms or now_ms < m[0]:
            return None
        return m

    def _window(self, kind: str, now_ms: int) -> _Window:
        m = self._frozen(now_ms)
        return _Window(now_ms, self.config.window_ms[kind], self.config.reference_ms, m[0] if m else None)

    def reference(self, kind: str, now_ms: int | None = None) -> dict[str, Any]:
        """{"policy", "since_ms"}: what ``kind`` is compared against at ``now_ms`` (default: now)."""
        now = self._now if now_ms is None else now_ms
        if now is None:
            return {"policy": "rolling", "since_ms": None}
        m = self._frozen(now)
        if m is not None:
            return {"policy": m[1], "since_ms": m[0]}
        if kind == "content":
            return {"policy": "rolling", "since_ms": now - self.config.window_ms[kind]}
        w = self._window(kind, now)
        return {"policy": "rolling", "since_ms": w.reference[0], "until_ms": w.reference[1]}

    # -- evaluation ----------------------------------------------------------------------------------------

    def _due(self, kind: str, now: int) -> bool:
        """Whether ``kind`` is re-scored at ``now`` (else its last results stand)."""
        slot = now // self.config.evaluate_every_ms.get(kind, self.config.bucket_ms)
        if self._eval_slots.get(kind) == slot:
            return False
        self._eval_slots[kind] = slot
        return True

    def _evaluate(self, now: int) -> list[Alert]:
        results: dict[tuple[int, str], dict[str, Any]] = {}
        due = {kind: self._due(kind, now) for kind in KINDS}
        for key, r in self._last.items():  # kinds not re-scored now keep their last results
            if not due[key[1]]:
                results[key] = r
        if due["engagement"]:
            for c, e in self._engagement.items():
                r = e.evaluate(now, self._window("engagement", now))
                if r is not None:
                    results[(c, "engagement")] = r
        if due["content"]:
            for c, ct in self._content.items():
                r = ct.evaluate(self._window("content", now))
                if r is not None:
                    results[(c, "content")] = r
        if due["volume"]:
            win = self._window("volume", now)
            counts = self._volume.counts(win)
            self._volume.prune(now)
            for c in set(counts[0]) | set(counts[1]):
                if c is not None:
                    r = self._volume.evaluate(c, win, counts)
                    if r is not None:
                        results[(c, "volume")] = r
        tw = self._window("transition", now)
        for pair in list(self._pairs) if due["transition"] else ():
            t = self._pairs[pair]
            r = t.evaluate(tw)
            if t.empty and self._frozen(now) is None:
                del self._pairs[pair]
                continue
            if r is not None:
                key = (pair[1], "transition")
                if key not in results or r["score"] > results[key]["score"]:
                    results[key] = {**r, "pair": list(pair)}
        scores: dict[int, dict[str, float]] = {}
        for (c, kind), r in results.items():
            scores.setdefault(c, {})[kind] = r["score"] / self.config.warning[kind]
        self._scores = scores
        self._last = results
        out = []
        for key in sorted(set(results) | set(self._gates), key=lambda k: (k[0], KINDS.index(k[1]))):
            c, kind = key
            r = results.get(key)
            score = r["score"] if r is not None else 0.0
            gate = self._gates.get(key)
            if gate is None:
                if r is None or score < self.config.warning[kind]:
                    continue
                w = self.config.warning[kind]
                gate = self._gates[key] = AlertGate(w, self.config.critical[kind], self.config.rearm_fraction * w,
                                                    self.config.cooldown(kind))
            decision = gate.update(score, now)
            if decision is None:
                if not gate.is_open:
                    self._open.pop(key, None)
                continue
            assert r is not None
            severity = "critical" if decision == "escalate" else decision
            first = self._open.get(key)
            start = first.window_end_ms if decision == "escalate" and first is not None else now
            alert = self._alert(c, kind, r, severity, start, now)
            self._open[key] = alert
            out.append(alert)
        return out

    def _alert(self, c: int, kind: str, r: dict[str, Any], severity: str, start: int, now: int) -> Alert:
        w = self._window(kind, now)
        lo = w.current[0] if kind != "content" else max(now - self.config.window_ms[kind], w.frozen_ms or 0)
        evidence = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "score"}
        thr = self.config.critical[kind] if severity == "critical" else self.config.warning[kind]
        return Alert(f"drift-{c}-{kind}-{start}", c, kind, float(r["score"]), thr, severity, lo, now, evidence,
                     now, reference=self.reference(kind, now))

    # -- reading -------------------------------------------------------------------------------------------

    def scores(self) -> dict[int, dict[str, float]]:
        """Score per cluster per kind at the last evaluation, normalised: 1.0 = at the warning threshold."""
        return {c: dict(d) for c, d in self._scores.items()}

    def status(self, cluster: int) -> dict[str, Any]:
        """One cluster: ``scores`` (normalised, as :meth:`scores`), ``evidence`` per kind at the last evaluation,
        ``alerts`` (the open ones, as dicts) and ``reference`` per kind ({"policy", "since_ms", ...})."""
        open_alerts = [a.to_dict() for (c, kind), a in self._open.items()
                       if c == cluster and self._gates[(c, kind)].is_open]
        return {
            "cluster": cluster, "ts_ms": self._evaluated, "scores": dict(self._scores.get(cluster, {})),
            "evidence": {k: v for (c, k), v in self._last.items() if c == cluster},
            "alerts": open_alerts,  # the open alerts (latest severity of each), as Alert.to_dict()
            "reference": {k: self.reference(k) for k in KINDS},
        }

    # -- recovery ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain picklable state (dicts, lists, numbers) for Bytewax recovery."""
        return {
            "config": asdict(self.config),
            "engagement": {c: e.state() for c, e in self._engagement.items()},
            "content": {c: x.state() for c, x in self._content.items()},
            "pairs": {p: t.state() for p, t in self._pairs.items()},
            "volume": self._volume.state(),
            "gates": {k: (g.severity, g.opened_ms) for k, g in self._gates.items()},
            "open": {k: a.to_dict() for k, a in self._open.items()},
            "now": self._now, "evaluated": self._evaluated, "mark": self._mark, "updates": self.updates,
        }

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> DriftMonitor:
        m = cls(DriftConfig(**snap["config"]))
        cfg = m.config
        for c, st in snap["engagement"].items():
            m._engagement[c] = EngagementDrift(cfg.bucket_ms, m._keep, cfg.min_support["engagement"], cfg.z).load(st)
        for c, st in snap["content"].items():
            m._content[c] = ContentDrift(cfg.bucket_ms, m._keep, cfg.min_support["content"], cfg.min_reference_items,
                                         cfg.z, cfg.window_ms["content"]).load(st)
        for p, st in snap["pairs"].items():
            m._pairs[p] = TransitionDrift(cfg.bucket_ms, m._keep, cfg.min_support["transition"], cfg.z).load(st)
        m._volume.load(snap["volume"])
        for (c, kind), (sev, opened) in snap["gates"].items():
            w = cfg.warning[kind]
            g = m._gates[(c, kind)] = AlertGate(w, cfg.critical[kind], cfg.rearm_fraction * w, cfg.cooldown(kind))
            g.severity, g.opened_ms = sev, opened
        for k, d in snap["open"].items():
            m._open[k] = Alert(d["alert_id"], d["cluster"], d["kind"], d["score"], d["threshold"], d["severity"],
                               d["window"]["start"], d["window"]["end"], d["evidence"], d["ts"], d["reference"])
        m._now, m._evaluated, m._mark, m.updates = snap["now"], snap["evaluated"], snap["mark"], snap["updates"]
        m._mark = tuple(m._mark) if m._mark is not None else None
        return m
