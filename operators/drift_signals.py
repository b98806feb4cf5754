"""The four drift signals, one class each (see :mod:`operators.drift` for the monitor that runs them).

Each keeps hourly buckets of event time and scores a current window against a reference window as a lower
confidence bound of an effect size; :class:`_Window` says which is which (rolling, or frozen at a mark).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from operators.drift_cusum import MeanDropCusum, RateCusum

__all__ = ["ContentDrift", "EngagementDrift", "TransitionDrift", "VolumeDrift", "jaccard_distance",
           "js_divergence", "top_k"]

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

    __slots__ = ("_oldest", "bucket_ms", "data", "keep_ms")

    def __init__(self, bucket_ms: int, keep_ms: int) -> None:
        self.bucket_ms, self.keep_ms = bucket_ms, keep_ms
        self.data: dict[int, Any] = {}
        self._oldest: int | None = None  # a lower bound of the bucket keys (None: unknown): prune's fast exit

    def get(self, ts_ms: int, new: Any) -> Any:
        b = ts_ms // self.bucket_ms
        row = self.data.get(b)
        if row is None:
            row = self.data[b] = new()
            if self._oldest is not None and b < self._oldest:
                self._oldest = b
        return row

    def prune(self, now_ms: int) -> None:
        lo = (now_ms - self.keep_ms) // self.bucket_ms
        if self._oldest is not None and self._oldest >= lo:
            return  # called at every evaluation; most find nothing old enough
        data = self.data
        for b in [b for b in data if b < lo]:
            del data[b]
        self._oldest = min(data, default=lo)

    def load(self, data: dict[int, Any]) -> None:
        self.data, self._oldest = data, None

    def __setstate__(self, state: Any) -> None:
        """Unpickle, also a state from before ``_oldest`` existed (a recovered drift monitor)."""
        slots = state[1] if isinstance(state, tuple) else state
        self._oldest = None
        for k, v in slots.items():
            setattr(self, k, v)

    def rows(self, start_ms: int, end_ms: int) -> list[Any]:
        """Rows of the buckets that start in [start_ms, end_ms)."""
        lo, hi = -(-start_ms // self.bucket_ms), -(-end_ms // self.bucket_ms)
        data = self.data
        if hi - lo < len(data):
            return [data[b] for b in range(lo, hi) if b in data]
        return [row for b, row in data.items() if lo <= b < hi]


def _slide(old_lo: int | None, old_hi: int | None, lo: int, hi: int, n_buckets: int) -> tuple[range, range] | None:
    """How a window [old_lo, old_hi) becomes [lo, hi): (buckets entering, buckets leaving), or None where summing
    afresh is right (no window yet, a move backwards, no overlap, or a jump longer than the data)."""
    if old_lo is None or old_hi is None or lo < old_lo or hi < old_hi or lo >= old_hi \
            or (lo - old_lo) + (hi - old_hi) > 4 * n_buckets + 8:
        return None
    return range(old_hi, hi), range(old_lo, lo)


class _RunningPair:
    """[n, positives] kept equal to the sum of a bucket range [lo, hi) of ``[n, positives]`` rows as the range
    slides, like :class:`_Running`. The values are counts (integral floats), so adding and subtracting is exact:
    the same numbers a re-sum gives."""

    __slots__ = ("hi", "lo", "n", "p")

    def __init__(self) -> None:
        self.lo: int | None = None
        self.hi: int | None = None
        self.n = self.p = 0.0

    def move(self, data: dict[int, list[float]], lo: int, hi: int) -> tuple[float, float]:
        slide = _slide(self.lo, self.hi, lo, hi, len(data))
        if slide is None:
            n = p = 0.0
            for b, row in data.items():
                if lo <= b < hi:
                    n += row[0]
                    p += row[1]
        else:
            n, p = self.n, self.p
            entering, leaving = slide
            for b in entering:
                row = data.get(b)
                if row:
                    n += row[0]
                    p += row[1]
            for b in leaving:
                row = data.get(b)
                if row:
                    n -= row[0]
                    p -= row[1]
        self.lo, self.hi, self.n, self.p = lo, hi, n, p
        return n, p

    def add(self, b: int, n: float, p: float) -> None:
        if self.lo is not None and self.lo <= b < self.hi:  # type: ignore[operator]
            self.n += n
            self.p += p


class _Running:
    """A Counter kept equal to the sum of a bucket range [lo, hi) as the range slides (no re-summing)."""

    __slots__ = ("hi", "lo", "sum")

    def __init__(self) -> None:
        self.lo: int | None = None
        self.hi: int | None = None
        self.sum: Counter = Counter()

    def move(self, data: dict[int, Counter], lo: int, hi: int) -> Counter:
        slide = _slide(self.lo, self.hi, lo, hi, len(data))
        if slide is None:
            self.sum = Counter()
            for b, row in data.items():
                if lo <= b < hi:
                    self.sum.update(row)
        else:
            total = self.sum
            entering, leaving = slide
            for b in entering:
                row = data.get(b)
                if row:
                    total.update(row)
            for b in leaving:
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


class _CounterWindows:
    """State of a signal over per-bucket Counters with two running windows (volume, transition): the buckets and
    the frozen reference are the state; the running window sums are derived and rebuilt on load."""

    _buckets: _Buckets
    _frozen: Counter | None

    def state(self) -> dict[str, Any]:
        return {"buckets": {b: dict(r) for b, r in self._buckets.data.items()},
                "frozen": dict(self._frozen) if self._frozen is not None else None}

    def load(self, st: dict[str, Any]) -> Self:
        self._buckets.load({b: Counter(r) for b, r in st["buckets"].items()})
        self._cur, self._ref = _Running(), _Running()
        self._frozen = Counter(st["frozen"]) if st["frozen"] is not None else None
        return self


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
                 z: float = 2.0, recent_ms: int = 12 * HOUR_MS, min_effect: float = 0.0) -> None:
        _check_positive("min_support", min_support)
        _check_positive("recent_ms", recent_ms)
        self.min_support, self.z, self.recent_ms = min_support, z, recent_ms
        self._buckets = _Buckets(bucket_ms, keep_ms)
        self._frozen: list[float] | None = None  # [n, positives] at the marked reference
        # the accumulating test, against the same reference
        self.cusum = RateCusum(min_reference=min_support, min_effect=min_effect)
        self._last_ms: int | None = None  # end of the span the CUSUM last scored
        self._running()

    def _running(self) -> None:
        """The window sums derived from the buckets (rebuilt after a restore)."""
        self._cur, self._ref, self._recent, self._new = _RunningPair(), _RunningPair(), _RunningPair(), _RunningPair()

    def update(self, ts_ms: int, positive: bool, n: int = 1) -> EngagementDrift:
        """``n`` engagements at ``ts_ms``, ``positive`` of them positive (a bool counts as 0 or 1 of n=1)."""
        row = self._buckets.get(ts_ms, lambda: [0.0, 0.0])
        row[0] += n
        row[1] += positive
        b = ts_ms // self._buckets.bucket_ms
        for w in (self._cur, self._ref, self._recent, self._new):  # a late engagement inside a window already summed
            w.add(b, n, positive)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a monitor recovered from before the running window sums (or the CUSUM) existed."""
        self.__dict__.update(state)
        if "_cur" not in state or "_new" not in state:
            self._running()
        if "cusum" not in state:
            self.cusum, self._last_ms, self.recent_ms = RateCusum(min_reference=self.min_support), None, 12 * HOUR_MS

    def mark_reference(self, win: _Window) -> None:
        self._frozen = _sum_rows(self._buckets.rows(*win.reference), 2)

    def evaluate(self, now_ms: int, win: _Window | None = None) -> dict[str, Any] | None:
        win = win or _Window(now_ms, 12 * HOUR_MS, 72 * HOUR_MS)
        bms, data = self._buckets.bucket_ms, self._buckets.data
        n0, p0 = self._frozen if win.frozen_ms is not None and self._frozen else \
            self._ref.move(data, *_bucket_range(win.reference, bms))
        n1, p1 = self._cur.move(data, *_bucket_range(win.current, bms))
        last = self._last_ms if self._last_ms is not None else now_ms
        recent = self._recent.move(data, *_bucket_range((last - self.recent_ms, last), bms))
        new = self._new.move(data, *_bucket_range((last, now_ms), bms))
        self._last_ms = now_ms
        self.cusum.update((n0, p0), recent, new, now_ms)
        self._buckets.prune(now_ms)  # after the moves: the windows subtract buckets that leave them
        if n0 < self.min_support or n1 < self.min_support:
            return None
        r0, r1 = p0 / n0, p1 / n1
        se = math.sqrt(max(r0 * (1 - r0), 1e-4) / n0 + max(r1 * (1 - r1), 1e-4) / n1)
        score = max(0.0, abs(r1 - r0) - self.z * se)
        return {"score": score, "measure": "|rate change| - z*se", "rate_before": r0, "n_before": int(n0),
                "rate_after": r1, "n_after": int(n1)}

    def state(self) -> dict[str, Any]:
        return {"buckets": {b: list(r) for b, r in self._buckets.data.items()}, "frozen": self._frozen,
                "cusum": self.cusum.state(), "last_ms": self._last_ms}

    def load(self, st: dict[str, Any]) -> EngagementDrift:
        self._buckets.load({b: list(r) for b, r in st["buckets"].items()})
        self._running()
        self._frozen = st["frozen"]
        if "cusum" in st:  # absent in a state from before the CUSUM
            self.cusum.load(st["cusum"])
            self._last_ms = st["last_ms"]
        return self


class VolumeDrift(_CounterWindows):
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
                 min_cluster: int = 20, z: float = 2.0, recent_ms: int = 12 * HOUR_MS, min_effect: float = 0.0) -> None:
        _check_positive("min_support", min_support)
        _check_positive("recent_ms", recent_ms)
        self.min_support, self.min_cluster, self.z, self.recent_ms = min_support, min_cluster, z, recent_ms
        self.min_effect = min_effect  # of the share CUSUMs, in log share
        self._buckets = _Buckets(bucket_ms, keep_ms)  # bucket -> Counter(cluster -> n), with key None = all
        self._frozen: Counter | None = None
        # The accumulating test per cluster: its share of all engagements as a rate (see step_cusums).
        self.cusums: dict[Any, RateCusum] = {}
        self._last_ms: int | None = None
        self._running()

    def _running(self) -> None:
        self._cur, self._ref, self._recent, self._new = _Running(), _Running(), _Running(), _Running()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a monitor recovered from before the CUSUMs existed."""
        self.__dict__.update(state)
        if "_cur" not in state or "_new" not in state:
            self._running()
        if "cusums" not in state:
            self.cusums, self._last_ms, self.recent_ms = {}, None, 12 * HOUR_MS

    def update(self, cluster: int, ts_ms: int, n: int = 1) -> VolumeDrift:
        row = self._buckets.get(ts_ms, Counter)
        row[cluster] += n
        row[None] += n
        b = ts_ms // self._buckets.bucket_ms
        for w in (self._cur, self._ref, self._recent, self._new):
            w.add(b, cluster, n)
            w.add(b, None, n)
        return self

    def _new_cusum(self) -> RateCusum:
        return RateCusum(min_reference=self.min_support, min_effect=getattr(self, "min_effect", 0.0), scale="log")

    def step_cusums(self, win: _Window, counts: tuple[Counter, Counter]) -> None:
        """Score the engagements since the last call in every cluster's share CUSUM (call after :meth:`counts`,
        before :meth:`prune`): null the reference share, alternative the share of the ``recent_ms`` before."""
        bms, data = self._buckets.bucket_ms, self._buckets.data
        last = self._last_ms if self._last_ms is not None else win.now_ms
        recent = self._recent.move(data, *_bucket_range((last - self.recent_ms, last), bms))
        new = self._new.move(data, *_bucket_range((last, win.now_ms), bms))
        self._last_ms = win.now_ms
        ref = counts[0]
        n0, nr, nn = ref[None], recent[None], new[None]
        # Shares are parts of one whole: when one cluster starts trending every other share falls a little. Each
        # cluster is tested against the reference moved the way the median cluster's share moved (recent vs
        # reference, over the clusters with min_cluster engagements in both), so only its own change counts.
        moved = sorted(math.log((recent[c] + 0.5) / (nr + 1.0)) - math.log((ref[c] + 0.5) / (n0 + 1.0))
                       for c in ref if c is not None and ref[c] >= self.min_cluster
                       and recent.get(c, 0) >= self.min_cluster)
        tilt = float(np.median(moved)) if len(moved) >= 3 else 0.0
        for c in set(ref) | set(recent) | set(new):
            if c is None:
                continue
            cu = self.cusums.get(c)
            if cu is None:
                cu = self.cusums[c] = self._new_cusum()
            cu.update((n0, ref.get(c, 0)), (nr, recent.get(c, 0)), (nn, new.get(c, 0)), win.now_ms, tilt)

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
        return {**super().state(), "cusums": {c: cu.state() for c, cu in self.cusums.items()},
                "last_ms": self._last_ms}

    def load(self, st: dict[str, Any]) -> VolumeDrift:
        super().load(st)
        self._running()
        self.cusums = {c: self._new_cusum().load(v) for c, v in st.get("cusums", {}).items()}
        self._last_ms = st.get("last_ms")
        return self


class TransitionDrift(_CounterWindows):
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

    # Position in the monitor's pair table (:class:`operators.drift.DriftMonitor` ranks pairs by it) and the
    # monitor's transition evaluation this pair's windows were last moved to; class defaults for pickles of old.
    seq = 0
    seen = -1

    def follow(self, reference: tuple[int, int], current: tuple[int, int]) -> None:
        """The windows moved to these bucket ranges while no bucket of this pair was at their edges: what
        :meth:`_Running.move` would do then is only to take the new bounds (the sums stay as they are)."""
        self._ref.lo, self._ref.hi = reference
        self._cur.lo, self._cur.hi = current

    def buckets(self) -> list[int]:
        """The buckets that hold triples."""
        return list(self._buckets.data)

    @property
    def empty(self) -> bool:
        return not self._buckets.data


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
                 min_reference: int = 10, z: float = 2.0, window_ms: int = 24 * HOUR_MS, min_effect: float = 0.0
                 ) -> None:
        _check_positive("min_support", min_support)
        self.min_support, self.min_reference, self.z, self.window_ms = min_support, min_reference, z, window_ms
        self._buckets = _Buckets(bucket_ms, window_ms + 2 * bucket_ms)  # bucket -> [(unit vector, novel)]
        self._total: list[Any] | None = None  # [vec_sum, n, novel, sum_a, sum_a2, n_a] over every item seen
        self._frozen: list[Any] | None = None  # the same, at a marked reference
        # The accumulating test: fresh items' cosines to the reference centroid, scored as they arrive.
        self.cusum = MeanDropCusum(min_reference=min_reference, min_effect=min_effect)
        self.recent_ms = min(12 * HOUR_MS, window_ms)
        self._last_ms: int | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a monitor recovered from before the CUSUM existed."""
        self.__dict__.update(state)
        if "cusum" not in state:
            self.cusum, self._last_ms = MeanDropCusum(min_reference=self.min_reference), None
            self.recent_ms = min(12 * HOUR_MS, self.window_ms)

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
        last = self._last_ms if self._last_ms is not None else win.now_ms
        self._last_ms = win.now_ms
        if n0 < self.min_reference or r0 <= 0:
            return None
        c0 = s0 / r0
        m0 = (r0 * r0 - n0) / (n0 * r0)  # mean leave-one-out cosine of the reference items to their centroid
        var_ref = ref[4] / ref[5] - (ref[3] / ref[5]) ** 2 if ref[5] > 1 else None
        self._step_cusum(c0, m0, var_ref, n0, last, win.now_ms)
        if n1 < self.min_support:
            return None
        a = np.array([v @ c0 for v, _ in fresh])
        m1, var1 = float(a.mean()), float(a.var(ddof=1)) if n1 > 1 else 0.0
        var0 = var_ref if var_ref is not None else var1
        var0 = max(var0, 1e-4)
        se = math.sqrt(var0 / n0 + max(var1, var0) / n1)
        mean1 = sum((v for v, _ in fresh), np.zeros_like(c0))
        shift = 1.0 - float(mean1 @ c0) / (float(np.linalg.norm(mean1)) or 1.0)
        return {"score": max(0.0, (m0 - m1) - self.z * se), "measure": "drop of mean cosine to centroid - z*se",
                "cos_before": m0, "cos_after": m1, "centroid_shift": shift, "n_before": int(n0), "n_after": n1,
                "novel_share_before": ref[2] / n0, "novel_share_after": sum(n for _, n in fresh) / n1}

    def _step_cusum(self, c0: np.ndarray, m0: float, var_ref: float | None, n0: int, last: int, now: int) -> None:
        """Score the items of the buckets in [last, now) in the CUSUM (items published ahead of event time wait
        for it); the alternative is the mean of the ``recent_ms`` before ``last``."""
        if var_ref is None:
            return
        bms, data = self._buckets.bucket_ms, self._buckets.data
        first, mid, end = -(-(last - self.recent_ms) // bms), -(-last // bms), -(-now // bms)
        recent = [float(v @ c0) for b in range(first, mid) for v, _ in data.get(b, ())]
        new = [float(v @ c0) for b in range(mid, end) for v, _ in data.get(b, ())]
        self.cusum.update((m0, var_ref, n0), (sum(recent), len(recent)), new, now)

    def state(self) -> dict[str, Any]:
        def plain(row: list[Any] | None) -> list[Any] | None:
            return None if row is None else [row[0].tolist(), *row[1:]]
        return {"buckets": {b: [(v.tolist(), n) for v, n in r] for b, r in self._buckets.data.items()},
                "total": plain(self._total), "frozen": plain(self._frozen), "cusum": self.cusum.state(),
                "last_ms": self._last_ms}

    def load(self, st: dict[str, Any]) -> ContentDrift:
        def arr(row: list[Any] | None) -> list[Any] | None:
            return None if row is None else [np.asarray(row[0], dtype=np.float64), *row[1:]]
        self._buckets.load({b: [(np.asarray(v, dtype=np.float64), n) for v, n in r]
                            for b, r in st["buckets"].items()})
        self._total, self._frozen = arr(st["total"]), arr(st["frozen"])
        if "cusum" in st:  # absent in a state from before the CUSUM
            self.cusum.load(st["cusum"])
            self._last_ms = st["last_ms"]
        return self
