"""Pooled transition drift of one cluster (issue #14): every pair into the cluster tested together, sequentially.

A pair-by-pair window test misses a change that moves the successors of *every* pair (c1, X) into a cluster X at
once when each pair carries little traffic, and one window against a reference is slow to see a change spread
over days. :class:`PooledTransitionDrift` keeps, for one cluster X, a CUSUM of *predictive* log-likelihood
ratios of the triples of all of X's pairs:

- null model of a pair p: its reference successor counts, smoothed towards the pooled reference of all of X's
  pairs (``alpha`` pseudo-triples), times an optional global tilt (how every cluster's successors moved, e.g. a
  new cluster that trends everywhere: not X's drift);
- alternative: the pair's recent counts (the ``recent_ms`` before the triples scored), smoothed (``beta``)
  towards the null tilted the way X's pairs moved *together* (pooled recent / pooled reference, ``gamma``), so a
  change shared by X's pairs is learned from all of them at once;
- both are estimated before the triples they score, so without drift the increments have a negative mean; a
  change makes them positive and S = max(0, S + sum of log ratios) accumulates (a gradual change too).

One statistic per cluster however many pairs it has: pooling is the multiple-testing correction (a max over
pairs would raise false alarms with every pair added). The score is S in nats; evidence: the effect size (mean
log ratio per triple over the current run of S, an estimate of the KL divergence new || old), the support
(triples in that run) and the pairs that contributed most.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> d = PooledTransitionDrift(recent_ms=24 * HOUR_MS)
>>> hits = []
>>> for h in range(200):  # 10 pairs (c1 = 0..9) into X, 3 triples an hour in all; from hour 150 all go to "z"
...     for _ in range(3):
...         c1 = int(rng.integers(10))
...         new = h >= 150 and rng.random() < 0.6
...         _ = d.update(c1, "z" if new else "abcde"[(c1 + int(rng.integers(2))) % 5], h * HOUR_MS + 1)
...     r = d.evaluate(_Window((h + 1) * HOUR_MS, 48 * HOUR_MS, 72 * HOUR_MS))
...     if r is not None and r["score"] > 8 and not hits:
...         hits.append(h)
>>> hits, r["top_pairs"][0][0] in range(10), r["effect_nats"] > 0.3  # 4 h after the change, at 3 triples/h
([154], True, True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from operators.drift_cusum import Cusum
from operators.drift_signals import HOUR_MS, _bucket_range, _Buckets, _check_positive, _Running, _Window

__all__ = ["OtherClusters", "PooledTransitionDrift"]


def _norm(d: dict[Any, float]) -> dict[Any, float]:
    z = sum(d.values())
    return {s: v / z for s, v in d.items()} if z > 0 else {s: 1 / len(d) for s in d}


class OtherClusters:
    """The successors of the *other* clusters, as :meth:`PooledTransitionDrift.prepare` reads them: the totals over
    all clusters less one cluster's own, worked out for the few successors asked about instead of two dicts over
    every successor per cluster (what made the monitor's evaluation quadratic in clusters). ``observed`` and
    ``expected`` answer ``get`` as ``Counter(total_o) - own_o`` (only positive counts) and
    ``{s: total_e[s] - own_e.get(s, 0.0) for s in total_e}`` would."""

    __slots__ = ("observed", "expected")

    def __init__(self, total_o: Mapping[Any, int], total_e: Mapping[Any, float], own_o: Mapping[Any, int],
                 own_e: Mapping[Any, float]) -> None:
        self.observed, self.expected = _Less(total_o, own_o, True), _Less(total_e, own_e, False)

    def __iter__(self) -> Any:  # unpacks as (observed, expected), like the tuple it stands for
        return iter((self.observed, self.expected))


class _Less:
    """``total - own`` per key, on demand (see :class:`OtherClusters`)."""

    __slots__ = ("own", "positive", "total")

    def __init__(self, total: Mapping[Any, float], own: Mapping[Any, float], positive: bool) -> None:
        self.total, self.own, self.positive = total, own, positive

    def get(self, key: Any, default: Any = None) -> Any:
        t = self.total.get(key)
        if t is None:
            return default
        if self.positive:
            v = t - self.own.get(key, 0)
            return v if v > 0 else default
        return t - self.own.get(key, 0.0)


class PooledTransitionDrift:
    """CUSUM of predictive log-likelihood ratios over all pairs (c1, X) into one cluster X (module docstring).

    ``update(c1, c_next, ts_ms)`` counts one triple (c1, X, c_next); ``evaluate(win, tilt)`` scores the triples
    that arrived since the last evaluation and returns the result dict (``None`` until the reference holds
    ``min_support`` triples). ``tilt``: successor -> factor (global recent share / reference share), or None.
    """

    def __init__(self, bucket_ms: int = HOUR_MS, keep_ms: int = 144 * HOUR_MS, recent_ms: int = 24 * HOUR_MS,
                 min_support: int = 40, alpha: float = 2.0, beta: float = 4.0, gamma: float = 20.0,
                 k: int = 3, min_pair: int = 5, moved: float = 2.0) -> None:
        for name, v in (("bucket_ms", bucket_ms), ("keep_ms", keep_ms), ("recent_ms", recent_ms),
                        ("min_support", min_support), ("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            _check_positive(name, v)
        self.recent_ms, self.min_support = recent_ms, min_support
        self.alpha, self.beta, self.gamma, self.k, self.min_pair = alpha, beta, gamma, k, min_pair
        self.moved = moved
        self._buckets = _Buckets(bucket_ms, keep_ms)  # bucket -> Counter((c1, c_next) -> n)
        self._frozen: Counter | None = None  # reference counts at a marked reference
        self._reset()

    def _reset(self) -> None:
        self._ref, self._recent, self._new = _Running(), _Running(), _Running()  # derived from the buckets
        self._cusum = Cusum()  # the statistic, its run since it last left 0, its hold after an alarm
        self._run_pairs: Counter = Counter()  # pair c1 -> its log ratio in the run
        self._last_ms: int | None = None  # end of the last scored span
        self._pending: tuple[int, float, int, Counter] = (0, 0.0, 0, Counter())  # prepared, not committed
        self._staged: dict[str, Any] = {"n_ref": 0, "new": Counter(), "qref": {}}

    def update(self, c1: Any, c_next: Any, ts_ms: int) -> PooledTransitionDrift:
        self._buckets.get(ts_ms, Counter)[(c1, c_next)] += 1
        b = ts_ms // self._buckets.bucket_ms
        for w in (self._ref, self._recent, self._new):
            w.add(b, (c1, c_next))
        return self

    @property
    def statistic(self) -> float:
        return self._cusum.level

    def hold(self, until_ms: int) -> None:
        """After an alarm: keep the statistic until ``until_ms``, then restart it (:meth:`Cusum.hold`)."""
        self._cusum.hold(until_ms)

    def mark_reference(self, win: _Window) -> None:
        self._frozen = sum(self._buckets.rows(*win.reference), Counter())

    def counts(self, win: _Window) -> tuple[Counter, Counter]:
        """(reference, recent) counts of (c1, c_next) at ``win``."""
        bms, data = self._buckets.bucket_ms, self._buckets.data
        last = self._last_ms if self._last_ms is not None else win.now_ms
        frozen = self._frozen if win.frozen_ms is not None and self._frozen is not None else None
        return (frozen if frozen is not None else self._ref.move(data, *_bucket_range(win.reference, bms)),
                self._recent.move(data, *_bucket_range((last - self.recent_ms, last), bms)))

    def evaluate(self, win: _Window, others: tuple[Mapping[Any, float], Mapping[Any, float]] | None = None,
                 offset: float = 0.0) -> dict[str, Any] | None:
        """Score the triples since the last evaluation and step the CUSUM (:meth:`stage`, :meth:`prepare`,
        :meth:`commit`); ``others``: (observed, expected) recent successors of the other clusters."""
        self.stage(win)
        self.prepare(others)
        return self.commit(offset)

    def stage(self, win: _Window) -> tuple[Counter, dict[Any, float]]:
        """Move the windows to ``win``; returns (observed, expected): the successors of the cluster's pairs in the
        recent and new triples, and their counts expected under each pair's own reference (a change in the mix
        of pairs is not a change of successors)."""
        bms, data = self._buckets.bucket_ms, self._buckets.data
        last = self._last_ms if self._last_ms is not None else win.now_ms
        ref, recent = self.counts(win)
        new = self._new.move(data, *_bucket_range((last, win.now_ms), bms))
        self._last_ms = win.now_ms
        self._buckets.prune(win.now_ms)
        per_pair: dict[Any, int] = {}
        for (c1, _), n in ref.items():
            per_pair[c1] = per_pair.get(c1, 0) + n
        # Only pairs with a reference can change: a pair new to the cluster is no drift of the ones before it.
        pairs = sorted((c1 for c1, n in per_pair.items() if n >= self.min_pair), key=repr)
        if not pairs:
            # Nothing to score (prepare) and nothing observed or expected to tell the other clusters (an expected
            # count of 0.0 per successor adds nothing to theirs): the rest is skipped, most clusters at large K.
            self._staged = {"n_ref": sum(per_pair.values()), "new": new, "qref": {}}
            return Counter(), {}
        # Counts of successors: over all pairs (pooled, recent_all), and per pair for the pairs scored (plain dicts,
        # read with get: this runs per cluster at every evaluation).
        pooled, recent_all = Counter(), Counter()
        by_ref: dict[Any, dict[Any, int]] = {c1: {} for c1 in pairs}
        by_recent: dict[Any, dict[Any, int]] = {}
        for (c1, s), n in ref.items():
            pooled[s] += n
            rp = by_ref.get(c1)
            if rp is not None:
                rp[s] = rp.get(s, 0) + n
        for (c1, s), n in recent.items():
            recent_all[s] += n
            if c1 in by_ref:
                ap = by_recent.get(c1)
                if ap is None:
                    ap = by_recent[c1] = {}
                ap[s] = ap.get(s, 0) + n
        universe = sorted(set(pooled) | {s for _, s in recent} | {s for _, s in new}, key=repr)
        g = _norm({s: pooled[s] + 0.5 for s in universe})
        qref = {c1: _norm({s: by_ref[c1].get(s, 0) + self.alpha * g[s] for s in universe}) for c1 in pairs}
        observed, expected = Counter(), dict.fromkeys(universe, 0.0)
        for c1 in pairs:
            ap = by_recent.get(c1)
            if ap:
                na = sum(ap.values())
                observed.update(ap)
                for s in universe:
                    expected[s] += na * qref[c1][s]
        # the same with the new triples, for the others' view of which successors moved everywhere
        moved_o, moved_e = Counter(observed), dict(expected)
        for (c1, s), n in new.items():
            if c1 in qref:
                moved_o[s] += n
                for x in universe:
                    moved_e[x] += n * qref[c1][x]
        self._staged = {"n_ref": sum(ref.values()), "new": new, "by_ref": by_ref, "by_recent": by_recent,
                        "g_all": {s: pooled[s] + recent_all[s] + 0.5 for s in universe},
                        "universe": universe, "qref": qref, "observed": observed, "expected": expected}
        return moved_o, moved_e

    @property
    def last_ms(self) -> int | None:
        """End of the span last scored (staged)."""
        return self._last_ms

    def take_staged(self) -> dict[str, Any]:
        """What :meth:`stage` worked out for :meth:`prepare` (the scratch of this evaluation), handed over and
        dropped here: a sharded monitor stages on the cluster's shard and prepares on the combiner."""
        st, self._staged = self._staged, {"n_ref": 0, "new": Counter(), "qref": {}}
        return st

    def receive(self, staged: dict[str, Any], last_ms: int | None) -> None:
        """Take a staging done elsewhere (:meth:`take_staged` of the cluster's windows) before :meth:`prepare`."""
        self._staged, self._last_ms = staged, last_ms

    def prepare(self, others: tuple[Mapping[Any, float], Mapping[Any, float]] | OtherClusters | None = None
                ) -> float | None:
        """The log-likelihood ratio of the new triples (not yet in the CUSUM), per triple; None without new
        triples or reference. Successors that moved by more than ``moved`` times in the *other* clusters
        (``others``: their observed and expected recent counts, read with ``get`` only; e.g. a cluster that just
        started trending everywhere, or one whose positive rate fell) are left out: the test is conditional on the
        rest."""
        st = self._staged
        self._pending = (st["n_ref"], 0.0, 0, Counter())
        if st["n_ref"] < self.min_support or not st["new"] or not st["qref"]:
            return None
        universe, qref, by_ref, by_recent = st["universe"], st["qref"], st["by_ref"], st["by_recent"]
        if others is not None:
            oo, oe = others
            keep = [s for s in universe
                    if oe.get(s, 0.0) < 3 and oo.get(s, 0) < 3
                    or 1 / self.moved <= (oo.get(s, 0) + 1) / (oe.get(s, 0.0) + 1) <= self.moved]
        else:
            keep = universe
        if not keep:
            return None
        observed, expected = st["observed"], st["expected"]
        n_obs = sum(observed[s] for s in keep)
        e = _norm({s: expected[s] for s in keep})
        rho = {s: (observed[s] + self.gamma * e[s]) / (n_obs + self.gamma) / e[s] for s in keep}
        kept = set(keep)
        g_all = _norm({s: st["g_all"][s] for s in keep})
        inc, n_new = 0.0, 0
        contrib: Counter = Counter()
        for c1 in sorted({c1 for c1, s in st["new"] if c1 in qref and s in kept}, key=repr):
            rp, ap = by_ref[c1], by_recent.get(c1, {})
            # null: no change (the pair's reference and recent triples); alternative: the recent ones, over a
            # prior of the reference tilted the way the cluster's pairs moved together
            q = _norm({s: rp.get(s, 0) + ap.get(s, 0) + self.alpha * g_all[s] for s in keep})
            base = _norm({s: qref[c1][s] * rho[s] for s in keep})
            na = sum(ap.get(s, 0) for s in keep)
            for (p, s), n in st["new"].items():
                if p != c1 or s not in kept:
                    continue
                llr = n * math.log((ap.get(s, 0) + self.beta * base[s]) / (na + self.beta) / q[s])
                inc += llr
                contrib[c1] += llr
                n_new += n
        if not n_new:
            return None
        self._pending = (st["n_ref"], inc, n_new, contrib)
        return inc / n_new

    def commit(self, offset: float = 0.0) -> dict[str, Any] | None:
        """Add the prepared ratio, less ``offset`` per triple, to the CUSUM; the result dict (None under
        ``min_support`` reference triples)."""
        n_ref, inc, n_new, contrib = self._pending
        self._pending = (n_ref, 0.0, 0, Counter())
        self._staged = {"n_ref": 0, "new": Counter(), "qref": {}}  # scratch of this evaluation: not kept, not pickled
        if n_ref < self.min_support:
            return None
        if n_new:
            inc -= offset * n_new
            c = self._cusum
            held = c.held_until
            c.step(inc, n_new, self._last_ms)
            if (held is not None and c.held_until is None) or c.statistic == 0.0:  # restarted, or back at 0
                self._run_pairs = Counter()
            if c.statistic > 0.0:
                self._run_pairs.update(contrib)  # Counter.update adds (negative contributions too)
        return self._result(n_ref, n_new, inc / n_new if n_new else 0.0)

    def _result(self, n_ref: int, n_new: int, llr: float = 0.0) -> dict[str, Any]:
        top = sorted(((c1, v) for c1, v in self._run_pairs.items() if v > 0), key=lambda kv: (-kv[1], repr(kv[0])))
        c = self._cusum
        return {"score": c.level, "measure": "pooled CUSUM of predictive log-likelihood ratios, nats",
                "effect_nats": c.effect, "support": int(c.run_n),
                "n_reference": n_ref, "n_new": n_new, "llr_per_triple": llr,
                "top_pairs": [[c1, round(v, 3)] for c1, v in top[: self.k]]}

    def state(self) -> dict[str, Any]:
        c = self._cusum
        return {"buckets": {b: dict(r) for b, r in self._buckets.data.items()}, "s": c.statistic,
                "frozen": dict(self._frozen) if self._frozen is not None else None,
                "run": [c.run_llr, c.run_n, dict(self._run_pairs)], "last_ms": self._last_ms,
                "held": c.state()[3:]}

    def load(self, st: dict[str, Any]) -> PooledTransitionDrift:
        self._buckets.load({b: Counter(r) for b, r in st["buckets"].items()})
        self._reset()
        self._last_ms = st["last_ms"]
        self._frozen = Counter(st["frozen"]) if st.get("frozen") is not None else None
        run_llr, run_n, pairs = st["run"]
        self._cusum.load([st["s"], run_llr, run_n, *st.get("held", [])])
        self._run_pairs = Counter(pairs)
        return self

    @property
    def empty(self) -> bool:
        return not self._buckets.data
