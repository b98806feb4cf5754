"""Successor estimates that choose their own time scale: a few half-lives per pair, mixed by predictive score.

Every pair (c1, c2) keeps decayed counts of its successors per half-life in ``half_lives_ms`` (``inf``: no
decay), each the arithmetic of a :class:`~operators.successors.DecayedCounter`, in one compact record per pair.
Each component h predicts the pair's next successor c as

    p_h(c) = (n_h(c) + prior * g_h(c)) / (N_h + prior)

with n_h the pair's decayed counts, N_h their total and g_h the successor shares of its source cluster c2 (all
pairs (x, c2), c1 left out, a small floor for unseen clusters): the hierarchy is pair -> source cluster, so one
source cluster's pairs need nothing from any other (the job keeps them on one key, spread over workers). Before
each triple updates the counts, every component is scored on the successor c_next that arrives, by a proper
scoring rule (the component that would have predicted the pair best scores best), ``score``:

- ``"brier"`` (the default): the quadratic score ``2 p_h(c_next) - sum_x p_h(x)**2`` over the pair's seen
  successors x (an unseen one's prior share, at most prior / (N_h + prior), is left out of the sum). It is
  bounded and rewards the head of the distribution, what the table serves (its top successor);
- ``"log"``: ``log p_h(c_next)``, Bayesian model averaging over the half-lives. The log score is dominated by
  the tail: where the successor tail follows the mix of users active now (likely in the generator, whose users
  also draw from their own interests), a short memory wins it although a long one has the better top one. On the
  stationary scenario (seed 11) 2 days has the best mean log score (-1.578 vs -1.588 for no decay) but a worse
  top-1 (48.3% vs 48.8% of next successors), while the quadratic score ranks 30 days and no decay first.

The scores are summed per pair and per source cluster c2, decaying with ``score_half_life_ms`` of event time so
the choice can change. A pair's weights are the softmax of its own score sums plus ``backoff`` times the mean
score per observation of its source cluster (empirical-Bayes back-off: a new pair starts from what worked for
pairs leaving the same cluster; with none, from all pairs), times ``learning_rate`` (the inverse temperature:
1 with the log score is the posterior; the quadratic score is bounded, its components differ by a few
thousandths per observation, hence the larger default, and its pair sums are noisy, hence the strong back-off:
with ``backoff`` 200 a pair's own evidence outweighs its source's only after ~200 observations within
``score_half_life_ms``).
The defaults (quadratic score, learning rate 10, back-off 200) were chosen with ``bench/adaptive_tune.py`` on
seeds 11, 13, 17, 19, 23 of the evaluation's scenarios, never seed 7. It costs O(len(half_lives_ms)) per
triple for the log score, O(len(half_lives_ms) * the pair's successors) for the quadratic one.

A pair's successor shares are ``sum_h w_h n_h(c) / N_h``; its effective half-life is the component with the
largest weight (``None``: no decay). With one half-life the table is exactly a fixed-half-life table (weights
1.0, no scoring): the evaluation runs every fixed half-life through this same code.

>>> DAY = 86_400_000
>>> t = AdaptiveSuccessorTable(half_lives_ms=(DAY, float("inf")))
>>> t.score, t.learning_rate, t.backoff
('brier', 10.0, 200.0)
>>> for day in range(40):  # the pair (1, 2) always goes to 3 then 4 alternately: a stable mix, long memory wins
...     _ = t.update((1, 2, 3 if day % 2 else 4), day * DAY)
>>> {k: round(v, 3) for k, v in t.weights((1, 2), 40 * DAY).items()}
{'1d': 0.0, 'none': 1.0}
>>> t.effective_half_life_ms((1, 2), 40 * DAY) is None, round(t.support((1, 2), 40 * DAY), 1)
(True, 40.0)
>>> t.top1((1, 2), 40 * DAY, min_support=3.0)
3
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from operators.successors import _MAX_LEAD, CounterSnapshot, DecayedCounter, TrendReference, split_triple

__all__ = [
    "DEFAULT_HALF_LIVES_MS", "SCORES", "AdaptiveSnapshot", "AdaptiveSuccessorTable", "LiveSnapshot", "LiveSuccessors",
    "PairEstimate", "PairRecords", "half_life_label",
]

DAY_MS = 86_400_000
INF = float("inf")
DEFAULT_HALF_LIVES_MS: tuple[float, ...] = (1 * DAY_MS, 2 * DAY_MS, 7 * DAY_MS, 30 * DAY_MS, INF)
_FLOOR = 1e-3  # pseudo-count of every cluster in the global prior (an unseen successor is possible)
_N = "n"  # key of the scored-observation count in a score counter
SCORES = ("brier", "log")

Pair = tuple[Hashable, Hashable]


def half_life_label(half_life_ms: float) -> str:
    """``"2d"``, ``"36h"``, ``"none"`` (no decay): the name a half-life goes by in reports and the API.

    >>> [half_life_label(h) for h in (86_400_000, 129_600_000, 7_200_000, 90_000, float("inf"))]
    ['1d', '36h', '2h', '90000ms', 'none']
    """
    if half_life_ms == INF:
        return "none"
    for unit, ms in (("d", DAY_MS), ("h", 3_600_000)):
        if half_life_ms % ms == 0:
            return f"{int(half_life_ms // ms)}{unit}"
    return f"{int(half_life_ms)}ms"


@dataclass(frozen=True)
class AdaptiveSnapshot:
    """Immutable, picklable state of an :class:`AdaptiveSuccessorTable`."""

    half_lives_ms: tuple[float, ...]
    score_half_life_ms: float
    prior: float
    backoff: float
    learning_rate: float
    pairs: tuple[tuple[Pair, tuple[CounterSnapshot, ...], CounterSnapshot], ...]
    sources: tuple[tuple[Hashable, CounterSnapshot], ...]
    global_counts: tuple[CounterSnapshot, ...]
    global_scores: CounterSnapshot
    score: str = "log"  # snapshots written before the quadratic score existed were log-scored
    source_counts: tuple[tuple[Hashable, tuple[CounterSnapshot, ...]], ...] = ()  # c2 -> counts per half-life


@dataclass(frozen=True, slots=True)
class PairRecords:
    """Copies of some pairs' records and of their source clusters' score counters: everything
    :meth:`AdaptiveSuccessorTable.estimate` reads of those pairs, as of when they were exported
    (:meth:`AdaptiveSuccessorTable.export`, :meth:`AdaptiveSuccessorTable.install`)."""

    pairs: tuple[tuple[Pair, Any], ...]  # (pair, its _PairCounts)
    sources: tuple[tuple[Hashable, DecayedCounter], ...]


class _PairCounts:
    """One pair's successor counts at every half-life and its components' summed scores, in one record.

    It is what a :class:`DecayedCounter` per half-life plus one for the scores were, value for value (the same
    stored values, references and operations in the same order, so every estimate is bit-identical), in ~60% of
    the memory (2.2 vs 3.6 KB per pair of a K=256 stream): one dict of successors (-> position) and a list per
    half-life instead of six counters with a dict and their own bookkeeping each, and ~20% faster where pairs are
    sparse. The job keeps one table per source cluster in the successor step and one in the cadence controller,
    for every pair (up to 10^6 of them).

    ``values[h][position]``: successor ``position``'s stored count at half-life ``h`` (scaled to ``refs[h]``; one
    list per half-life, read in step with ``index``); ``totals[h]``; ``latest``: the newest observation's time
    (the same for every half-life: they are counted together). ``scores``: component ``i``'s summed score at
    ``i < H``, the count of scored observations at ``H`` and their stored total at ``H + 1`` (scaled to
    ``score_ref``, with the table's ``score_half_life_ms``).
    """

    __slots__ = ("index", "latest", "refs", "score_latest", "score_ref", "scores", "totals", "values")

    def __init__(self, h: int) -> None:
        self.index: dict[Hashable, int] = {}
        self.values: list[list[float]] = [[] for _ in range(h)]
        self.totals = array("d", bytes(8 * h))
        self.refs: list[Any] = [None] * h
        self.latest: Any = None
        self.scores = array("d", bytes(8 * (h + 2)))
        self.score_ref: Any = None
        self.score_latest: Any = None

    def copy(self) -> _PairCounts:
        """An independent copy (what a table exports: see :meth:`AdaptiveSuccessorTable.export`)."""
        new = _PairCounts.__new__(_PairCounts)
        new.index, new.values, new.totals = dict(self.index), [list(v) for v in self.values], array("d", self.totals)
        new.refs, new.latest = list(self.refs), self.latest
        new.scores, new.score_ref, new.score_latest = array("d", self.scores), self.score_ref, self.score_latest
        return new

    def count(self, c: Hashable, ts_ms: int, inv: tuple[float, ...], weight: float = 1.0) -> None:
        """``DecayedCounter.update(c, ts_ms, weight)`` at every half-life (``inv``: 1 / each half-life)."""
        n = len(inv)
        pos = self.index.get(c)
        if pos is None:
            pos = self.index[c] = len(self.index)
            for vh in self.values:
                vh.append(0.0)
        refs, values, totals = self.refs, self.values, self.totals
        latest = self.latest
        if latest is None:
            self.latest = ts_ms
            for h in range(n):
                refs[h] = ts_ms
        elif ts_ms > latest:
            self.latest = ts_ms
            for h in range(n):
                if (ts_ms - refs[h]) * inv[h] > _MAX_LEAD:
                    self._rebase(h, ts_ms, inv[h])
        for h in range(n):
            w = weight * 2.0 ** ((ts_ms - refs[h]) * inv[h])
            values[h][pos] += w
            totals[h] += w

    def _rebase(self, h: int, ref_ms: int, inv: float) -> None:
        f = 2.0 ** ((self.refs[h] - ref_ms) * inv)
        values = self.values[h]
        for i in range(len(values)):
            values[i] *= f
        self.totals[h] *= f
        self.refs[h] = ref_ms

    def scale(self, h: int, now_ms: int, inv: float) -> float:
        """Factor from half-life ``h``'s stored values to values read at ``now_ms`` (``DecayedCounter._scale``)."""
        ref = self.refs[h]
        if ref is None:
            return 0.0
        now = max(now_ms, self.latest)
        return 2.0 ** ((ref - now) * inv)

    def total(self, h: int, now_ms: int, inv: float) -> float:
        return self.totals[h] * self.scale(h, now_ms, inv)

    def score(self, lps: list[tuple[int, float]], ts_ms: int, inv: float) -> None:
        """``DecayedCounter.update_each(lps + [("n", 1.0)], ts_ms)`` on the scores: ``lps`` is (component, score)
        for every component in order."""
        scores, n = self.scores, len(self.scores) - 2
        ref = self.score_ref
        if ref is None:
            self.score_ref = self.score_latest = ref = ts_ms
        elif ts_ms > self.score_latest:
            self.score_latest = ts_ms
            if (ts_ms - ref) * inv > _MAX_LEAD:
                f = 2.0 ** ((ref - ts_ms) * inv)
                for i in range(n + 2):
                    scores[i] *= f
                self.score_ref = ref = ts_ms
        i0, s0 = lps[0]
        w = s0 * 2.0 ** ((ts_ms - ref) * inv)
        scores[i0] += w
        total = scores[n + 1] + w
        f = 2.0 ** ((ts_ms - self.score_ref) * inv)
        for i, s in lps[1:]:
            w = s * f
            scores[i] += w
            total += w
        scores[n] += f  # the count: weight 1.0
        total += f
        scores[n + 1] = total

    def score_value(self, i: int, now_ms: int, inv: float) -> float:
        ref = self.score_ref
        if ref is None:
            return 0.0
        return self.scores[i] * 2.0 ** ((ref - max(now_ms, self.score_latest)) * inv)

    def snapshots(self, half_lives: tuple[float, ...], score_half_life: float
                  ) -> tuple[tuple[CounterSnapshot, ...], CounterSnapshot]:
        """The :class:`CounterSnapshot` of each half-life and of the scores, as the counters gave them."""
        n = len(half_lives)
        counts = tuple(CounterSnapshot(hl, self.refs[h], self.latest,
                                       tuple(zip(self.index, self.values[h], strict=True)), self.totals[h])
                       for h, hl in enumerate(half_lives))
        sc = self.scores
        scored = () if self.score_ref is None else (*((i, sc[i]) for i in range(n)), (_N, sc[n]))
        return counts, CounterSnapshot(score_half_life, self.score_ref, self.score_latest, scored,
                                       sc[n + 1] if self.score_ref is not None else 0.0)

    @classmethod
    def from_snapshots(cls, counts: Sequence[CounterSnapshot], sc: CounterSnapshot) -> _PairCounts:
        n = len(counts)
        rec = cls(n)
        for snap in counts:
            for c, _ in snap.values:
                if c not in rec.index:
                    rec.index[c] = len(rec.index)
        for h, snap in enumerate(counts):
            vh = rec.values[h]
            vh.extend([0.0] * len(rec.index))
            for c, v in snap.values:
                vh[rec.index[c]] = v
            rec.totals[h], rec.refs[h] = snap.total, snap.ref_ms
            if snap.latest_ms is not None and (rec.latest is None or snap.latest_ms > rec.latest):
                rec.latest = snap.latest_ms
        for k, v in sc.values:
            rec.scores[n if k == _N else int(k)] = v
        rec.scores[n + 1] = sc.total
        rec.score_ref, rec.score_latest = sc.ref_ms, sc.latest_ms
        return rec


class AdaptiveSuccessorTable:
    """Successor counts of every pair at several half-lives, mixed per pair by their decayed predictive scores."""

    __slots__ = ("_glob", "_glob_scores", "_inv", "_pairs", "_score_inv", "_source_counts", "_sources", "backoff",
                 "half_lives_ms", "labels", "learning_rate", "prior", "score", "score_half_life_ms")

    def __init__(self, half_lives_ms: Sequence[float] = DEFAULT_HALF_LIVES_MS, *,
                 score_half_life_ms: float = 14 * DAY_MS, prior: float = 1.0, backoff: float = 200.0,
                 learning_rate: float = 10.0, score: str = "brier") -> None:
        hl = tuple(half_lives_ms)
        if not hl or len(set(hl)) != len(hl):
            raise ValueError(f"half_lives_ms must be distinct and at least one, got {hl!r}")
        for h in (*hl, score_half_life_ms):
            DecayedCounter(h)  # checks each (inf allowed)
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or not 0 < learning_rate < INF:
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        for name, v in (("prior", prior), ("backoff", backoff)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < INF:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if prior == 0 and len(hl) > 1:
            raise ValueError("prior must be > 0 with several half-lives (a log score of 0 probability)")
        self.half_lives_ms, self.score_half_life_ms, self.prior, self.backoff = hl, score_half_life_ms, prior, backoff
        self.learning_rate, self.score = learning_rate, score
        self.labels = tuple(half_life_label(h) for h in hl)
        self._inv = tuple(1.0 / h for h in hl)  # what each DecayedCounter(h) multiplies ages by
        self._score_inv = 1.0 / score_half_life_ms
        self._reset()

    def _reset(self) -> None:
        # pair -> its counts per half-life and its components' summed scores
        self._pairs: dict[Pair, _PairCounts] = {}
        self._sources: dict[Hashable, DecayedCounter] = {}  # c2 -> score counter over its pairs
        self._source_counts: dict[Hashable, list[DecayedCounter]] = {}  # c2 -> successor counts per half-life
        self._glob = [DecayedCounter(h) for h in self.half_lives_ms]
        self._glob_scores = DecayedCounter(self.score_half_life_ms)

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: Any) -> None:
        """Unpickle, also a table pickled before the compact pair records (a recovery store of an older version:
        each pair a list of DecayedCounter per half-life and one of scores; slots pickled as ``(None, slots)``)."""
        if isinstance(state, tuple):
            state = state[1]
        for name, value in state.items():
            if name != "scores_taken":  # (a count of a process's work some versions kept as an attribute)
                object.__setattr__(self, name, value)
        if "_inv" not in state:
            self._inv = tuple(1.0 / h for h in self.half_lives_ms)
            self._score_inv = 1.0 / self.score_half_life_ms
        for pair, rec in self._pairs.items():
            if type(rec) is not _PairCounts:
                counters, scores = rec
                self._pairs[pair] = _PairCounts.from_snapshots([n.snapshot() for n in counters], scores.snapshot())

    # ------------------------------------------------------------------------------------------------ update

    def update(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int) -> AdaptiveSuccessorTable:
        """Score every component on the triple's successor, then count it."""
        pair, c = split_triple(triple)
        c1, c2 = pair
        rec = self._pairs.get(pair)
        if rec is None:
            rec = self._pairs[pair] = _PairCounts(len(self._inv))
        if len(self._inv) > 1:  # score every component on c before it learns c
            src = self._sources.get(c2)
            if src is None:
                src = self._sources[c2] = DecayedCounter(self.score_half_life_ms)
                self._source_counts[c2] = [DecayedCounter(h) for h in self.half_lives_ms]
            src_counts = self._source_counts[c2]
            lps = self._component_scores(rec, src_counts, c1, c, ts_ms)
            rec.score(lps, ts_ms, self._score_inv)
            lps.append((_N, 1.0))
            src.update_each(lps, ts_ms)
            self._glob_scores.update_each(lps, ts_ms)
            for g in src_counts:
                g.update(c, ts_ms)
        rec.count(c, ts_ms, self._inv)
        for g in self._glob:
            g.update(c, ts_ms)
        return self

    def _component_scores(self, rec: _PairCounts, src_counts: list[DecayedCounter], c1: Hashable,
                          c: Hashable, ts_ms: int) -> list[tuple[int, float]]:
        """Each component's score on successor ``c`` of a pair leaving ``c1``: (component index, score). The
        counters are read at ``ts_ms`` through their stored values and one scale each (this runs for every
        triple); the arithmetic is the formula of the module docstring, term by term."""
        prior, brier, floor = self.prior, self.score == "brier", _FLOOR
        out = []
        index, values, totals = rec.index, rec.values, rec.totals
        pos = index.get(c)
        for i, g in enumerate(src_counts):
            sn, sg = rec.scale(i, ts_ms, self._inv[i]), g._scale(ts_ms)
            gv, vi = g._values, values[i]
            g_den = g._total * sg - gv.get(c1, 0.0) * sg + floor * (len(gv) + 1)  # c2 never follows (x, c2)
            den = totals[i] * sn + prior
            p = ((vi[pos] if pos is not None else 0.0) * sn + prior * ((gv.get(c, 0.0) * sg + floor) / g_den)) / den
            if brier:
                sq = 0.0  # (a loop: a generator's frame per successor cost more than the sum itself)
                get = gv.get
                for x, v in zip(index, vi, strict=True):
                    q = (v * sn + prior * (get(x, 0.0) * sg + floor) / g_den) / den
                    sq += q * q
                out.append((i, 2.0 * p - sq))
            else:
                out.append((i, math.log(p)))
        return out

    # ------------------------------------------------------------------------------------------------- reads

    def _weights(self, pair: Pair, now_ms: int) -> list[float]:
        k = len(self.half_lives_ms)
        if k == 1:
            return [1.0]
        rec = self._pairs.get(pair)
        src = self._sources.get(pair[1])
        if src is None or src.value(_N, now_ms) <= 0:
            src = self._glob_scores
        n_src = src.value(_N, now_ms)
        logits = [self.backoff * src.value(i, now_ms) / n_src if n_src > 0 else 0.0 for i in range(k)]
        if rec is not None:
            inv = self._score_inv
            logits = [lg + rec.score_value(i, now_ms, inv) for i, lg in enumerate(logits)]
        eta = self.learning_rate
        top = max(logits)
        ws = [math.exp(eta * (lg - top)) for lg in logits]
        s = sum(ws)
        return [w / s for w in ws]

    def weights(self, pair: Pair, now_ms: int) -> dict[str, float]:
        """Each half-life's weight for ``pair`` at ``now_ms``, by label (``"none"``: no decay); sums to 1."""
        return dict(zip(self.labels, self._weights(pair, now_ms), strict=True))

    def effective_half_life_ms(self, pair: Pair, now_ms: int) -> float | None:
        """The half-life with the largest weight for ``pair`` (``None``: no decay)."""
        ws = self._weights(pair, now_ms)
        h = self.half_lives_ms[max(range(len(ws)), key=ws.__getitem__)]
        return None if h == INF else h

    def support(self, pair: Pair, now_ms: int) -> float:
        """The pair's decayed number of observations, weighted like its shares (0.0 for an unseen pair)."""
        rec = self._pairs.get(pair)
        if rec is None:
            return 0.0
        return sum(w * rec.total(h, now_ms, inv) for h, (w, inv) in enumerate(zip(self._weights(pair, now_ms),
                                                                                  self._inv, strict=True)))

    def counts(self, pair: Pair, now_ms: int) -> dict[Hashable, float]:
        """Each successor's effective count: ``sum_h w_h n_h(c)`` (first-seen order; shares = count / support)."""
        return self.row(pair, now_ms, 0.0) or {}

    def row(self, pair: Pair, now_ms: int, min_support: float) -> dict[Hashable, float] | None:
        """:meth:`counts` of ``pair`` when its :meth:`support` reaches ``min_support``, else None (one pass)."""
        rec = self._pairs.get(pair)
        if rec is None:
            return None
        ws = self._weights(pair, now_ms)
        if sum(w * rec.total(h, now_ms, inv) for h, (w, inv) in enumerate(zip(ws, self._inv, strict=True))) \
                < min_support:
            return None
        return self.mix(pair, now_ms, ws)[0]

    def mix(self, pair: Pair, now_ms: int, weights: Sequence[float]) -> tuple[dict[Hashable, float], float]:
        """(each successor's count mixed by ``weights``, the support mixed the same way); ({}, 0.0) unseen."""
        rec = self._pairs.get(pair)
        if rec is None:
            return {}, 0.0
        out: dict[Hashable, float] = {}
        support = 0.0
        for h, (w, inv) in enumerate(zip(weights, self._inv, strict=True)):
            if w > 0:
                f = rec.scale(h, now_ms, inv)
                support += w * (rec.totals[h] * f)
                for c, v in zip(rec.index, rec.values[h], strict=True):
                    out[c] = out.get(c, 0.0) + w * (v * f)
        return out, support

    def estimate(self, pair: Pair, now_ms: int) -> tuple[float, dict[Hashable, float], float]:
        """(support, effective counts, effective sample size) of ``pair`` at ``now_ms``, by its current weights. The
        sample size counts a decayed observation twice what it weighs now (the sum of ``2 ** (-age / h)`` over a
        steady stream is half of its square: n_eff = 2 x support) and an undecayed one once."""
        ws = self._weights(pair, now_ms)
        counts, support = self.mix(pair, now_ms, ws)
        rec = self._pairs.get(pair)
        size = 0.0 if rec is None else sum(w * rec.total(i, now_ms, inv) * (1.0 if h == INF else 2.0)
                                           for i, (w, inv, h) in enumerate(zip(ws, self._inv, self.half_lives_ms,
                                                                               strict=True)))
        return support, counts, size

    def add_counts(self, pair: Pair, counts: dict[Hashable, float], ts_ms: int) -> None:
        """Counts carried over from a state kept before this table (each ``counts[c]`` observations' worth at
        ``ts_ms``), added at every half-life without scoring (there is nothing to score them against)."""
        rec = self._pairs.get(pair)
        if rec is None:
            rec = self._pairs[pair] = _PairCounts(len(self._inv))
        for c, v in counts.items():
            rec.count(c, ts_ms, self._inv, v)
            for g in self._glob:
                g.update(c, ts_ms, v)

    def supports(self, pair: Pair, now_ms: int) -> list[float]:
        """The pair's decayed number of transitions at each half-life (zeros: unseen)."""
        rec = self._pairs.get(pair)
        return [0.0] * len(self.half_lives_ms) if rec is None else [rec.total(h, now_ms, inv)
                                                                    for h, inv in enumerate(self._inv)]

    def latest_ms(self, pair: Pair) -> int | None:
        """Event time of the pair's newest triple (None: unseen)."""
        rec = self._pairs.get(pair)
        return rec.latest if rec is not None else None

    def global_counts(self, now_ms: int) -> dict[Hashable, float]:
        """Successor counts over all pairs, mixed with the weights of all pairs' scores."""
        ws = self._weights((None, None), now_ms)
        out: dict[Hashable, float] = {}
        for w, g in zip(ws, self._glob, strict=True):
            if w > 0:
                for c, v in g.items(now_ms):
                    out[c] = out.get(c, 0.0) + w * v
        return out

    def top1(self, pair: Pair, now_ms: int, min_support: float) -> Hashable | None:
        """The pair's top successor (ties: the smallest id) when its support is at least ``min_support``, else
        the global top successor other than c1, c2; None with no data at all."""
        counts = self.row(pair, now_ms, min_support)
        if counts:
            return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        ranked = sorted(self.global_counts(now_ms).items(), key=lambda kv: (-kv[1], kv[0]))
        return next((c for c, v in ranked if v > 0 and c != pair[0] and c != pair[1]), None)

    def pairs(self) -> list[Pair]:
        """Every pair seen, in first-seen order."""
        return list(self._pairs)

    def export(self, pairs: Sequence[Pair]) -> PairRecords:
        """Copies of what :meth:`estimate` reads of ``pairs`` (unseen ones are left out): their records and their
        source clusters' score counters. A table with the same parameters that :meth:`install` s them answers
        :meth:`estimate` for those pairs as this one does now, bit for bit, until this one learns another triple
        of them or of their source clusters; nothing is scored there.

        >>> a, mirror = AdaptiveSuccessorTable(), AdaptiveSuccessorTable()
        >>> for i, c in enumerate([3, 4, 3, 3]):
        ...     _ = a.update((1, 2, c), 1_000 * i)
        ...     _ = a.update((5, 2, 4), 1_000 * i)
        >>> mirror.install(a.export([(1, 2), (9, 9)]))
        >>> mirror.pairs(), mirror.estimate((1, 2), 10_000) == a.estimate((1, 2), 10_000)
        ([(1, 2)], True)
        """
        recs = self._pairs
        out = [(p, recs[p].copy()) for p in pairs if p in recs]
        sources = dict.fromkeys(p[1] for p, _ in out)
        return PairRecords(tuple(out), tuple((c, self._sources[c].copy()) for c in sources if c in self._sources))

    def install(self, records: PairRecords) -> None:
        """Take exported records (see :meth:`export`) in place of this table's own of those pairs and sources."""
        for pair, rec in records.pairs:
            self._pairs[pair] = rec
        for c, src in records.sources:
            self._sources[c] = src

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"AdaptiveSuccessorTable(half_lives={list(self.labels)}, score={self.score!r}, pairs={len(self)})"

    # ------------------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(
            self.half_lives_ms, self.score_half_life_ms, self.prior, self.backoff, self.learning_rate,
            tuple((p, *rec.snapshots(self.half_lives_ms, self.score_half_life_ms)) for p, rec in self._pairs.items()),
            tuple((c, sc.snapshot()) for c, sc in self._sources.items()),
            tuple(g.snapshot() for g in self._glob), self._glob_scores.snapshot(), self.score,
            tuple((c, tuple(g.snapshot() for g in gs)) for c, gs in self._source_counts.items()))

    def to_plain(self) -> dict[str, Any]:
        """The state as plain lists, dicts and numbers (JSON-able with ``Infinity`` for no decay; keys that are
        clusters must be JSON scalars); :meth:`from_plain` reads it back."""
        snap = self.snapshot()
        fields = {f: getattr(snap, f) for f in ("half_lives_ms", "score_half_life_ms", "prior", "backoff",
                                                "learning_rate", "score")}
        return {**fields, "half_lives_ms": list(snap.half_lives_ms),
                "pairs": [[list(p), [_plain(n) for n in ns], _plain(sc)] for p, ns, sc in snap.pairs],
                "sources": [[c, _plain(sc)] for c, sc in snap.sources],
                "source_counts": [[c, [_plain(g) for g in gs]] for c, gs in snap.source_counts],
                "global_counts": [_plain(g) for g in snap.global_counts], "global_scores": _plain(snap.global_scores)}

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> AdaptiveSuccessorTable:
        return cls.from_snapshot(AdaptiveSnapshot(
            tuple(d["half_lives_ms"]), d["score_half_life_ms"], d["prior"], d["backoff"], d["learning_rate"],
            tuple((tuple(p), tuple(map(_unplain, ns)), _unplain(sc)) for p, ns, sc in d["pairs"]),
            tuple((c, _unplain(sc)) for c, sc in d["sources"]), tuple(map(_unplain, d["global_counts"])),
            _unplain(d["global_scores"]), d["score"],
            tuple((c, tuple(map(_unplain, gs))) for c, gs in d["source_counts"])))

    @classmethod
    def from_snapshot(cls, snap: AdaptiveSnapshot) -> AdaptiveSuccessorTable:
        t = cls(snap.half_lives_ms, score_half_life_ms=snap.score_half_life_ms, prior=snap.prior,
                backoff=snap.backoff, learning_rate=snap.learning_rate, score=snap.score)
        t._pairs = {p: _PairCounts.from_snapshots(ns, sc) for p, ns, sc in snap.pairs}
        t._sources = {c: DecayedCounter.from_snapshot(sc) for c, sc in snap.sources}
        counts = {c: [DecayedCounter.from_snapshot(g) for g in gs] for c, gs in snap.source_counts}
        # (snapshots from before the per-source prior: a source's counts start empty)
        t._source_counts = {c: counts.get(c) or [DecayedCounter(h) for h in t.half_lives_ms] for c in t._sources}
        t._glob = [DecayedCounter.from_snapshot(g) for g in snap.global_counts]
        t._glob_scores = DecayedCounter.from_snapshot(snap.global_scores)
        return t


def _plain(c: CounterSnapshot) -> list[Any]:
    return [c.half_life_ms, c.ref_ms, c.latest_ms, c.total, [[k, v] for k, v in c.values]]


def _unplain(x: list[Any]) -> CounterSnapshot:
    h, ref, latest, total, values = x
    return CounterSnapshot(h, ref, latest, tuple((k, v) for k, v in values), total)


# ------------------------------------------------------------------------------------------ the job's state


@dataclass(frozen=True)
class LiveSnapshot:
    """Immutable, picklable state of a :class:`LiveSuccessors`."""

    table: AdaptiveSnapshot
    trend_window_ms: int
    trends: tuple[tuple[Pair, tuple], ...]  # pair -> TrendReference.as_tuple()
    weights: tuple[tuple[Pair, tuple[float, ...]], ...] = ()
    pending: tuple[tuple[Pair, tuple[tuple[tuple, int], ...]], ...] = ()
    latest: tuple[tuple[Pair, int], ...] = ()


@dataclass(frozen=True, slots=True)
class PairEstimate:
    """One pair's successor estimate as served: every successor's effective count (``sum_h w_h n_h(c)``), the trend
    reference, the support, the event time read at, the effective half-life (the component with the largest
    weight; ``inf``: no decay) and every half-life's weight by label."""

    pair: Pair
    counts: tuple[tuple[Hashable, float], ...]
    reference: dict[Hashable, float] | None
    support: float
    ts_ms: int
    half_life_ms: float
    weights: tuple[tuple[str, float], ...]
    supports: tuple[float, ...] = ()  # the support at each half-life: order-free, whatever the weights


class LiveSuccessors:
    """The successor state the stream job keeps for the pairs of one source cluster (or any set of pairs): an
    :class:`AdaptiveSuccessorTable`, each pair's :class:`~operators.successors.TrendReference` (its learned shares
    one to two ``trend_window_ms`` ago), and what makes its answers independent of arrival order.

    Counting is order-free (a decayed count is a sum), scoring is not (each transition is scored before it is
    learned). So a transition is first *observed* (:meth:`observe`: counted at once, pending, so the answer is
    fresh) and later *scored* (:meth:`score`: learned by the table) in a canonical event-time order that the job
    takes from the drift step's hold; :meth:`update` does both at once (one ordered stream). A pair's weights are
    those the table gave it right after scoring its latest scored transition, uniform before its first; its
    counts are the table's plus its pending transitions', all mixed by those weights. Once every transition is
    observed, a pair's answer depends on which were scored and their order, never on when each arrived.
    Every estimate is local to the pairs' source cluster c2, so the job keys this by c2 and any number of
    workers share the clusters.

    >>> DAY = 86_400_000
    >>> s = LiveSuccessors(trend_window_ms=DAY)
    >>> for day in range(30):
    ...     _ = s.update((1, 2, 3 if day % 3 else 4), day * DAY)
    >>> e = s.estimate((1, 2))
    >>> [(c, round(n, 1)) for c, n in e.counts], round(e.support, 1), e.ts_ms // DAY
    ([(4, 10.0), (3, 20.0)], 30.0, 29)
    >>> half_life_label(e.half_life_ms), {c: round(v, 3) for c, v in sorted(e.reference.items())}
    ('none', {3: 0.643, 4: 0.357})
    >>> _ = s.observe((1, 2, 4), 30 * DAY, key="u9")  # fresh: counted at once, with the weights it had
    >>> round(dict(s.estimate((1, 2)).counts)[4], 1), len(s.pending((1, 2)))
    (11.0, 1)
    >>> _ = s.score((1, 2, 4), 30 * DAY, key="u9")  # its hour complete: learned by the table, no longer pending
    >>> round(dict(s.estimate((1, 2)).counts)[4], 1), len(s.pending((1, 2)))
    (11.0, 0)
    """

    __slots__ = ("_latest", "_pending", "_weights", "table", "trend_window_ms", "trends")

    def __init__(self, half_lives_ms: Sequence[float] = DEFAULT_HALF_LIVES_MS, *, trend_window_ms: int = DAY_MS,
                 table: AdaptiveSuccessorTable | None = None, **table_kwargs: float | str) -> None:
        if isinstance(trend_window_ms, bool) or not isinstance(trend_window_ms, int) or trend_window_ms < 1:
            raise ValueError(f"trend_window_ms must be an int >= 1, got {trend_window_ms!r}")
        self.table = table if table is not None else AdaptiveSuccessorTable(half_lives_ms, **table_kwargs)
        self.trend_window_ms = trend_window_ms
        self.trends: dict[Pair, TrendReference] = {}
        self._weights: dict[Pair, tuple[float, ...]] = {}  # as of the pair's latest scored transition
        # pair -> {(c_next, ts_ms, key): observed minus scored}; a negative count: scored before it was observed
        self._pending: dict[Pair, dict[tuple, int]] = {}
        self._latest: dict[Pair, int] = {}  # event time of the pair's newest observed transition

    def observe(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int, key: Hashable = None) -> Pair:
        """Count a transition now (pending until :meth:`score` gets the same ``triple``, ``ts_ms``, ``key``).
        ``key`` tells apart equal transitions (e.g. the user)."""
        pair, c = split_triple(triple)
        self._add_pending(pair, (c, ts_ms, key), 1)
        latest = self._latest.get(pair)
        if latest is None or ts_ms > latest:
            self._latest[pair] = ts_ms
        return pair

    def score(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int, key: Hashable = None) -> Pair:
        """Learn an observed transition in the canonical order: the pair's trend reference rolls (on what the
        table has learned: the same whatever the arrival order), the table scores then counts it, and the pair's
        weights become the table's now."""
        pair, c = split_triple(triple)
        trend = self.trends.get(pair)
        if trend is None:
            trend = self.trends[pair] = TrendReference()
        trend.roll(ts_ms, self.trend_window_ms, lambda: self._learned_shares(pair, ts_ms))
        self._add_pending(pair, (c, ts_ms, key), -1)
        self.table.update(triple, ts_ms)
        self._weights[pair] = tuple(self.table._weights(pair, ts_ms))  # noqa: SLF001
        return pair

    def update(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int, key: Hashable = None) -> Pair:
        """:meth:`observe` and :meth:`score` at once: for a stream already in its canonical order."""
        self.observe(triple, ts_ms, key)
        return self.score(triple, ts_ms, key)

    def _add_pending(self, pair: Pair, k: tuple, n: int) -> None:
        pend = self._pending.get(pair)
        if pend is None:
            pend = self._pending[pair] = {}
        v = pend.get(k, 0) + n
        if v:
            pend[k] = v
        else:
            del pend[k]
            if not pend:
                del self._pending[pair]

    def pending(self, pair: Pair) -> list[tuple[Hashable, int]]:
        """(successor, event time) of each of the pair's observed transitions not scored yet."""
        return [(k[0], k[1]) for k, n in self._pending.get(pair, {}).items() for _ in range(max(n, 0))]

    def _learned_shares(self, pair: Pair, now_ms: int) -> dict[Hashable, float]:
        k = len(self.table.half_lives_ms)
        counts, support = self.table.mix(pair, now_ms, self._weights.get(pair) or (1.0 / k,) * k)
        return {c: v / support for c, v in counts.items()} if support > 0 else {}

    def estimate(self, pair: Pair, now_ms: int | None = None) -> PairEstimate:
        """The pair's estimate at ``now_ms`` (default: its newest transition's event time; never earlier)."""
        t = self.table
        latest = self._latest.get(pair)
        if latest is None:
            raise KeyError(f"pair {pair!r} has no transition")
        now = latest if now_ms is None or now_ms < latest else now_ms
        k = len(t.half_lives_ms)
        ws = self._weights.get(pair) or (1.0 / k,) * k
        counts, support = t.mix(pair, now, ws)
        supports = t.supports(pair, now)
        for (c, ts, _), n in self._pending.get(pair, {}).items():
            if n > 0:
                fs = [n * 2.0 ** (-(now - ts) / h) for h in t.half_lives_ms]
                f = sum(w * x for w, x in zip(ws, fs, strict=True))
                counts[c] = counts.get(c, 0.0) + f
                support += f
                supports = [s + x for s, x in zip(supports, fs, strict=True)]
        best = max(range(k), key=ws.__getitem__)
        trend = self.trends.get(pair)
        return PairEstimate(pair, tuple(counts.items()), trend.reference if trend is not None else None, support, now,
                            t.half_lives_ms[best], tuple(zip(t.labels, ws, strict=True)), tuple(supports))

    def pairs(self) -> list[Pair]:
        """Every pair observed, in first-seen order."""
        return list(self._latest)

    def __len__(self) -> int:
        return len(self._latest)

    def __repr__(self) -> str:
        return f"LiveSuccessors({self.table!r}, trend_window_ms={self.trend_window_ms})"

    def snapshot(self) -> LiveSnapshot:
        return LiveSnapshot(self.table.snapshot(), self.trend_window_ms,
                            tuple((p, r.as_tuple()) for p, r in self.trends.items()),
                            tuple(self._weights.items()),
                            tuple((p, tuple(d.items())) for p, d in self._pending.items()),
                            tuple(self._latest.items()))

    @classmethod
    def from_snapshot(cls, snap: LiveSnapshot) -> LiveSuccessors:
        s = cls(table=AdaptiveSuccessorTable.from_snapshot(snap.table), trend_window_ms=snap.trend_window_ms)
        s.trends = {p: TrendReference.from_tuple(r) for p, r in snap.trends}
        s._weights = dict(snap.weights)
        s._pending = {p: dict(d) for p, d in snap.pending}
        s._latest = dict(snap.latest)
        return s
