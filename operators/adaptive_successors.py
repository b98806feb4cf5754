"""Successor estimates that choose their own time scale: a few half-lives per pair, mixed by predictive score.

Every pair (c1, c2) keeps one :class:`~operators.successors.DecayedCounter` of its successors per half-life in
``half_lives_ms`` (``inf``: no decay). Each component h predicts the pair's next successor c as

    p_h(c) = (n_h(c) + prior * g_h(c)) / (N_h + prior)

with n_h the pair's decayed counts, N_h their total and g_h the global successor shares (all pairs, c1 and c2 left
out, a small floor for unseen clusters). Before each triple updates the counts, every component is scored on
the successor c_next that arrives, by a proper scoring rule (the component that would have predicted the pair
best scores best), ``score``:

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
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from operators.successors import CounterSnapshot, DecayedCounter, split_triple

__all__ = ["DEFAULT_HALF_LIVES_MS", "SCORES", "AdaptiveSnapshot", "AdaptiveSuccessorTable", "half_life_label"]

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


class AdaptiveSuccessorTable:
    """Successor counts of every pair at several half-lives, mixed per pair by their decayed predictive scores."""

    __slots__ = ("_glob", "_glob_scores", "_pairs", "_sources", "backoff", "half_lives_ms", "labels",
                 "learning_rate", "prior", "score", "score_half_life_ms")

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
        self._reset()

    def _reset(self) -> None:
        # pair -> ([counter per half-life], score counter: component index -> summed log score, "n" -> count)
        self._pairs: dict[Pair, tuple[list[DecayedCounter], DecayedCounter]] = {}
        self._sources: dict[Hashable, DecayedCounter] = {}  # c2 -> score counter over its pairs
        self._glob = [DecayedCounter(h) for h in self.half_lives_ms]
        self._glob_scores = DecayedCounter(self.score_half_life_ms)

    # ------------------------------------------------------------------------------------------------ update

    def update(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int) -> AdaptiveSuccessorTable:
        pair, c = split_triple(triple)
        c1, c2 = pair
        rec = self._pairs.get(pair)
        if rec is None:
            rec = self._pairs[pair] = ([DecayedCounter(h) for h in self.half_lives_ms],
                                       DecayedCounter(self.score_half_life_ms))
        counters, scores = rec
        if len(counters) > 1:  # score every component on c before it learns c
            src = self._sources.get(c2)
            if src is None:
                src = self._sources[c2] = DecayedCounter(self.score_half_life_ms)
            prior, gs, brier = self.prior, self._glob_scores, self.score == "brier"
            for i, (n, g) in enumerate(zip(counters, self._glob, strict=True)):
                g_den = g.total(ts_ms) - g.value(c1, ts_ms) - g.value(c2, ts_ms) + _FLOOR * (len(g) + 1)
                den = n.total(ts_ms) + prior
                p = (n.value(c, ts_ms) + prior * ((g.value(c, ts_ms) + _FLOOR) / g_den)) / den
                if brier:
                    sq = sum(((v + prior * (g.value(x, ts_ms) + _FLOOR) / g_den) / den) ** 2
                             for x, v in n.items(ts_ms))
                    lp = 2.0 * p - sq
                else:
                    lp = math.log(p)
                scores.update(i, ts_ms, lp)
                src.update(i, ts_ms, lp)
                gs.update(i, ts_ms, lp)
            scores.update(_N, ts_ms)
            src.update(_N, ts_ms)
            gs.update(_N, ts_ms)
        for n, g in zip(counters, self._glob, strict=True):
            n.update(c, ts_ms)
            g.update(c, ts_ms)
        return self

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
            scores = rec[1]
            logits = [lg + scores.value(i, now_ms) for i, lg in enumerate(logits)]
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
        return sum(w * n.total(now_ms) for w, n in zip(self._weights(pair, now_ms), rec[0], strict=True))

    def counts(self, pair: Pair, now_ms: int) -> dict[Hashable, float]:
        """Each successor's effective count: ``sum_h w_h n_h(c)`` (first-seen order; shares = count / support)."""
        return self.row(pair, now_ms, 0.0) or {}

    def row(self, pair: Pair, now_ms: int, min_support: float) -> dict[Hashable, float] | None:
        """:meth:`counts` of ``pair`` when its :meth:`support` reaches ``min_support``, else None (one pass)."""
        rec = self._pairs.get(pair)
        if rec is None:
            return None
        ws = self._weights(pair, now_ms)
        if sum(w * n.total(now_ms) for w, n in zip(ws, rec[0], strict=True)) < min_support:
            return None
        out: dict[Hashable, float] = {}
        for w, n in zip(ws, rec[0], strict=True):
            if w > 0:
                for c, v in n.items(now_ms):
                    out[c] = out.get(c, 0.0) + w * v
        return out

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

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"AdaptiveSuccessorTable(half_lives={list(self.labels)}, score={self.score!r}, pairs={len(self)})"

    # ------------------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> AdaptiveSnapshot:
        return AdaptiveSnapshot(
            self.half_lives_ms, self.score_half_life_ms, self.prior, self.backoff, self.learning_rate,
            tuple((p, tuple(n.snapshot() for n in ns), sc.snapshot()) for p, (ns, sc) in self._pairs.items()),
            tuple((c, sc.snapshot()) for c, sc in self._sources.items()),
            tuple(g.snapshot() for g in self._glob), self._glob_scores.snapshot(), self.score)

    @classmethod
    def from_snapshot(cls, snap: AdaptiveSnapshot) -> AdaptiveSuccessorTable:
        t = cls(snap.half_lives_ms, score_half_life_ms=snap.score_half_life_ms, prior=snap.prior,
                backoff=snap.backoff, learning_rate=snap.learning_rate, score=snap.score)
        t._pairs = {p: ([DecayedCounter.from_snapshot(n) for n in ns], DecayedCounter.from_snapshot(sc))
                    for p, ns, sc in snap.pairs}
        t._sources = {c: DecayedCounter.from_snapshot(sc) for c, sc in snap.sources}
        t._glob = [DecayedCounter.from_snapshot(g) for g in snap.global_counts]
        t._glob_scores = DecayedCounter.from_snapshot(snap.global_scores)
        return t
