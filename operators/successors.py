"""Successor counts per cluster pair that decay in event time, and their rankings (brief: 'Transitions').

Each triple (c1, c2, c_next) from :class:`~operators.transitions.TransitionTracker` adds one observation of
c_next to the pair (c1, c2), weighted ``2 ** (-age / half_life_ms)`` by the event-time age at which it is read.
Rankings, for the context API's {cluster, score, count, trend}:

- ``"frequency"`` (default, as in the paper): score = decayed share of the pair's observations;
- ``"trend"``: ranked by trend = current share - share at the last :meth:`PairSuccessors.mark_reference`.

:class:`SuccessorTable` holds every pair plus the global successor counts (over all pairs), the last fallback
for a pair with too little support.

>>> t = SuccessorTable(half_life_ms=60_000, min_support=2.0)
>>> for ts, triple in [(0, (1, 2, 3)), (0, (1, 2, 3)), (0, (1, 2, 4)), (60_000, (1, 2, 4)), (60_000, (5, 6, 1))]:
...     _ = t.update(triple, ts)
>>> succ, source = t.top((1, 2), k=2, now_ms=60_000)
>>> source, [(s.cluster, round(s.score, 3), s.count) for s in succ]
('exact', [(4, 0.6, 1.5), (3, 0.4, 1.0)])
>>> succ, source = t.top((3, 4), k=3, now_ms=60_000)  # unseen pair: global counts, never 3 or 4 themselves
>>> source, [(s.cluster, round(s.score, 3)) for s in succ]
('global', [(1, 1.0)])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MODES", "SOURCES", "CounterSnapshot", "DecayedCounter", "PairSnapshot", "PairSuccessors", "Successor",
    "SuccessorTable", "TableSnapshot", "TrendReference", "rank_successors", "split_triple",
]

MODES = ("frequency", "trend")
SOURCES = ("exact", "neighbor", "global")  # "neighbor" is produced by the index layer, not here
# Stored values are scaled by at most 2 ** _MAX_LEAD over their true value at the reference time; past that the
# counter renormalises (O(keys), at most once per _MAX_LEAD half-lives of event time). 2**64 ~ 1.8e19 leaves
# ~1e289 of headroom in a float64 for the counts themselves.
_MAX_LEAD = 64.0


def _check_k_mode(k: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")


# ------------------------------------------------------------------------------------------- decayed counter


@dataclass(frozen=True)
class CounterSnapshot:
    """Immutable, picklable state of a :class:`DecayedCounter`; values are scaled to ``ref_ms``."""

    half_life_ms: float
    ref_ms: int | None
    latest_ms: int | None
    values: tuple[tuple[Hashable, float], ...]
    total: float


class DecayedCounter:
    """Counts per key, each observation decaying by half every ``half_life_ms`` of event time.

    The value of a key read at ``now_ms`` is ``sum(weight * 2 ** (-(now_ms - ts_ms) / half_life_ms))`` over its
    observations. Internally values are stored relative to one reference time per counter (no per-key
    timestamps, no ``e^{+t}`` growth over months of event time): an observation adds
    ``weight * 2 ** ((ts_ms - ref) / half_life_ms)``, and the reference moves to the latest event (rescaling
    every value) only when that factor would exceed ``2 ** 64``.

    ``half_life_ms=float("inf")`` counts without decay (the same code: every factor is 1).

    Out-of-order observations (``ts_ms`` before the latest seen) decay by their own timestamp. Reads at a
    ``now_ms`` before the latest observation are read at the latest observation instead: ages are never
    negative, so a value never exceeds the plain sum of weights.

    >>> c = DecayedCounter(half_life_ms=1_000)
    >>> c.update("a", 0).update("a", 1_000).update("b", 500)  # "b" arrives late, decays from its own ts
    DecayedCounter(half_life_ms=1000, keys=2, latest_ms=1000)
    >>> round(c.value("a", 1_000), 6), round(c.value("b", 1_000), 6), round(c.value("a", 3_000), 6)
    (1.5, 0.707107, 0.375)
    """

    __slots__ = ("_inv_half_life", "_latest", "_ref", "_total", "_values", "half_life_ms")

    def __init__(self, half_life_ms: float) -> None:
        if isinstance(half_life_ms, bool) or not isinstance(half_life_ms, int | float) or not half_life_ms > 0:
            raise ValueError(f"half_life_ms must be a number > 0 (inf: no decay), got {half_life_ms!r}")
        self.half_life_ms = half_life_ms
        self._reset()

    def _reset(self) -> None:
        self._inv_half_life = 1.0 / self.half_life_ms
        self._values: dict[Hashable, float] = {}
        self._total = 0.0
        self._ref: int | None = None  # the time stored values are scaled to
        self._latest: int | None = None  # the latest observation's ts

    def update(self, key: Hashable, ts_ms: int, weight: float = 1.0) -> DecayedCounter:
        ref = self._ref
        if ref is None:
            self._ref = self._latest = ref = ts_ms
        elif ts_ms > self._latest:  # type: ignore[operator]
            self._latest = ts_ms
            if (ts_ms - ref) * self._inv_half_life > _MAX_LEAD:
                self._rebase(ts_ms)
                ref = ts_ms
        w = weight * 2.0 ** ((ts_ms - ref) * self._inv_half_life)  # <= weight * 2**64; late events: < weight
        values = self._values
        values[key] = values.get(key, 0.0) + w
        self._total += w
        return self

    def update_each(self, weights: Sequence[tuple[Hashable, float]], ts_ms: int) -> DecayedCounter:
        """``update(key, ts_ms, weight)`` for each (key, weight) in turn, at one time (one clock check)."""
        self.update(weights[0][0], ts_ms, weights[0][1])
        f = 2.0 ** ((ts_ms - self._ref) * self._inv_half_life)  # type: ignore[operator]
        values = self._values
        total = self._total
        for key, weight in weights[1:]:
            w = weight * f
            values[key] = values.get(key, 0.0) + w
            total += w
        self._total = total
        return self

    def copy(self) -> DecayedCounter:
        """An independent copy (the values dict copied; O(keys))."""
        new = DecayedCounter.__new__(DecayedCounter)
        new.half_life_ms, new._inv_half_life = self.half_life_ms, self._inv_half_life
        new._values, new._total, new._ref, new._latest = dict(self._values), self._total, self._ref, self._latest
        return new

    def _rebase(self, ref_ms: int) -> None:
        f = 2.0 ** ((self._ref - ref_ms) * self._inv_half_life)  # type: ignore[operator]
        values = self._values
        for key in values:
            values[key] *= f
        self._total *= f
        self._ref = ref_ms

    def _scale(self, now_ms: int) -> float:
        """Factor from stored values to values read at ``now_ms`` (never above 1: ages are clamped at 0)."""
        if self._ref is None:
            return 0.0
        now = max(now_ms, self._latest)  # type: ignore[type-var]
        return 2.0 ** ((self._ref - now) * self._inv_half_life)

    def value(self, key: Hashable, now_ms: int) -> float:
        return self._values.get(key, 0.0) * self._scale(now_ms)

    def total(self, now_ms: int) -> float:
        return self._total * self._scale(now_ms)

    def items(self, now_ms: int) -> list[tuple[Hashable, float]]:
        """(key, value at ``now_ms``) in first-seen order."""
        f = self._scale(now_ms)
        return [(k, v * f) for k, v in self._values.items()]

    @property
    def latest_ms(self) -> int | None:
        return self._latest

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __repr__(self) -> str:
        return f"DecayedCounter(half_life_ms={self.half_life_ms}, keys={len(self)}, latest_ms={self._latest})"

    def snapshot(self) -> CounterSnapshot:
        return CounterSnapshot(self.half_life_ms, self._ref, self._latest, tuple(self._values.items()), self._total)

    @classmethod
    def from_snapshot(cls, snap: CounterSnapshot) -> DecayedCounter:
        c = cls(snap.half_life_ms)
        c._values = dict(snap.values)
        c._ref, c._latest, c._total = snap.ref_ms, snap.latest_ms, snap.total
        return c


# ------------------------------------------------------------------------------------------ one pair's successors


@dataclass(frozen=True, slots=True)
class Successor:
    """One ranked successor: ``score`` is its share (frequency mode) or trend (trend mode); ``count`` is its
    decayed count; ``trend`` is its share now minus its share at the reference (0.0 without a reference)."""

    cluster: Hashable
    score: float
    count: float
    trend: float


@dataclass(frozen=True)
class PairSnapshot:
    """Immutable, picklable state of a :class:`PairSuccessors`."""

    counter: CounterSnapshot
    reference: tuple[tuple[Hashable, float], ...] | None
    reference_ms: int | None
    next_reference: tuple[tuple[Hashable, float], ...] | None = None
    next_reference_ms: int | None = None


class TrendReference:
    """Successor shares one to two ``window_ms`` ago, rolled forward in a stream: what a successor's trend (its
    share now minus its share then) is measured against. Shared by every successor estimate.

    At each window boundary the shares marked at the previous boundary become the reference and the current
    shares are marked for the next one, so the trend never drops to zero just after a roll. Event times earlier
    than the last mark never roll. Reference dicts are replaced, never changed in place: safe to hand out.

    >>> r = TrendReference()
    >>> shares = {"a": 1.0}
    >>> [r.roll(ts, 10, lambda: shares) for ts in (0, 5, 10)], r.reference, r.reference_ms
    ([False, False, True], {'a': 1.0}, 0)
    """

    __slots__ = ("next_reference", "next_reference_ms", "reference", "reference_ms")

    def __init__(self, reference: dict[Hashable, float] | None = None, reference_ms: int | None = None,
                 next_reference: dict[Hashable, float] | None = None, next_reference_ms: int | None = None) -> None:
        self.reference, self.reference_ms = reference, reference_ms
        self.next_reference, self.next_reference_ms = next_reference, next_reference_ms

    def roll(self, now_ms: int, window_ms: int, shares: Callable[[], dict[Hashable, float]]) -> bool:
        """Roll at a window boundary (call before each update); ``shares()`` is read only when it rolls or marks.
        Returns whether it rolled."""
        mark = self.next_reference_ms
        if mark is not None and now_ms - mark < window_ms:
            return False
        if mark is not None:
            self.reference, self.reference_ms = self.next_reference, mark
        current = shares()
        if current:
            self.next_reference, self.next_reference_ms = current, now_ms
        return mark is not None

    def mark(self, shares: dict[Hashable, float], now_ms: int) -> None:
        """Make ``shares`` the reference now."""
        self.reference, self.reference_ms = shares, now_ms

    def copy(self) -> TrendReference:
        return TrendReference(self.reference, self.reference_ms, self.next_reference, self.next_reference_ms)

    def as_tuple(self) -> tuple:
        """(reference items, its ms, next reference items, its ms): picklable, immutable."""
        ref, nxt = self.reference, self.next_reference
        return (tuple(ref.items()) if ref is not None else None, self.reference_ms,
                tuple(nxt.items()) if nxt is not None else None, self.next_reference_ms)

    @classmethod
    def from_tuple(cls, t: tuple) -> TrendReference:
        ref, ref_ms, nxt, nxt_ms = t
        return cls(dict(ref) if ref is not None else None, ref_ms, dict(nxt) if nxt is not None else None, nxt_ms)


class PairSuccessors:
    """Decayed successor counts of one pair (or of all pairs: the global fallback), with a trend reference.

    >>> p = PairSuccessors(half_life_ms=1_000)
    >>> for c in "aaab":
    ...     _ = p.update(c, 0)
    >>> p.mark_reference(0)
    >>> for c in "bbcc":
    ...     _ = p.update(c, 0)
    >>> [(s.cluster, s.score, s.count, s.trend) for s in p.top(3, now_ms=0)]
    [('b', 0.375, 3.0, 0.125), ('a', 0.375, 3.0, -0.375), ('c', 0.25, 2.0, 0.25)]
    >>> [(s.cluster, s.score) for s in p.top(2, now_ms=0, mode="trend")]
    [('c', 0.25), ('b', 0.125)]
    """

    __slots__ = ("_counter", "_trend", "half_life_ms")

    def __init__(self, half_life_ms: float) -> None:
        DecayedCounter(half_life_ms)  # checks half_life_ms
        self.half_life_ms = half_life_ms
        self._reset()

    def _reset(self) -> None:
        self._counter = DecayedCounter(self.half_life_ms)
        self._trend = TrendReference()  # successor -> share at the reference

    def update(self, c_next: Hashable, ts_ms: int) -> PairSuccessors:
        self._counter.update(c_next, ts_ms)
        return self

    def copy(self) -> PairSuccessors:
        """An independent copy: the counter copied, the reference shares shared (they are never changed in place).

        >>> p = PairSuccessors(1000.0).update("a", 0)
        >>> q = p.copy().update("b", 0)
        >>> sorted(p.shares(0)), sorted(q.shares(0))
        (['a'], ['a', 'b'])
        """
        new = PairSuccessors.__new__(PairSuccessors)
        new.half_life_ms, new._counter, new._trend = self.half_life_ms, self._counter.copy(), self._trend.copy()
        return new

    def total(self, now_ms: int) -> float:
        """Decayed number of observations at ``now_ms`` (the pair's support)."""
        return self._counter.total(now_ms)

    def mark_reference(self, now_ms: int) -> None:
        """Freeze the current successor shares as the reference that ``trend`` is measured against."""
        self._trend.mark(self.shares(now_ms), now_ms)

    def shares(self, now_ms: int) -> dict[Hashable, float]:
        """Each successor's share of the pair's decayed observations at ``now_ms``."""
        total = self._counter.total(now_ms)
        return {c: v / total for c, v in self._counter.items(now_ms)} if total > 0 else {}

    def roll_reference(self, now_ms: int, window_ms: int) -> bool:
        """Keep the trend reference one to two ``window_ms`` old, for a stream: call before each update.

        At each window boundary the shares marked at the previous boundary become the reference and the current
        shares are marked for the next one, so the trend never drops to zero just after a roll. Returns whether
        it rolled. Event times earlier than the last mark never roll.

        >>> p = PairSuccessors(half_life_ms=1e12)
        >>> for ts, c in [(0, "a"), (10, "a"), (20, "b"), (30, "b")]:
        ...     _ = p.roll_reference(ts, window_ms=10); _ = p.update(c, ts)
        >>> p.reference_ms, [(s.cluster, round(s.trend, 3)) for s in p.top(2, now_ms=30)]
        (20, [('b', 0.5), ('a', -0.5)])
        """
        return self._trend.roll(now_ms, window_ms, lambda: self.shares(now_ms))

    @property
    def reference_ms(self) -> int | None:
        return self._trend.reference_ms

    @property
    def latest_ms(self) -> int | None:
        """Event time of the newest observation (late ones do not move it back)."""
        return self._counter.latest_ms

    def top(self, k: int, now_ms: int, mode: str = "frequency", exclude: Iterable[Hashable] = ()) -> list[Successor]:
        """The ``k`` best successors at ``now_ms``; shares are taken over the successors not in ``exclude``.

        Frequency ranks by share (ties: larger trend, then first seen); trend ranks by trend (ties: larger
        share, then first seen). Without a reference every trend is 0.0, so trend mode ranks as frequency.
        """
        _check_k_mode(k, mode)
        excluded = set(exclude)
        items = [(c, v) for c, v in self._counter.items(now_ms) if c not in excluded]
        ref = self._trend.reference
        if ref is not None and excluded:
            ref_total = sum(s for c, s in ref.items() if c not in excluded)
            ref = {c: s / ref_total for c, s in ref.items() if c not in excluded} if ref_total > 0 else {}
        return rank_successors(items, ref, mode)[:k]

    def counts(self, now_ms: int) -> tuple[tuple[Hashable, float], ...]:
        """Every successor's decayed count at ``now_ms`` (cheap: no shares, no ranking)."""
        return tuple(self._counter.items(now_ms))

    @property
    def reference(self) -> dict[Hashable, float] | None:
        """Shares at the trend reference. Replaced, never changed in place: safe to hand out."""
        return self._trend.reference

    def __len__(self) -> int:
        return len(self._counter)

    def __repr__(self) -> str:
        return f"PairSuccessors(half_life_ms={self.half_life_ms}, successors={len(self)})"

    def snapshot(self) -> PairSnapshot:
        ref, ref_ms, nxt, nxt_ms = self._trend.as_tuple()
        return PairSnapshot(self._counter.snapshot(), ref, ref_ms, nxt, nxt_ms)

    @classmethod
    def from_snapshot(cls, snap: PairSnapshot) -> PairSuccessors:
        p = cls(snap.counter.half_life_ms)
        p._counter = DecayedCounter.from_snapshot(snap.counter)
        p._trend = TrendReference.from_tuple((snap.reference, snap.reference_ms, snap.next_reference,
                                              snap.next_reference_ms))
        return p


def rank_successors(counts: Iterable[tuple[Hashable, float]], reference: dict[Hashable, float] | None,
                    mode: str = "frequency") -> list[Successor]:
    """Successors ranked from decayed ``counts``: share of the total, trend = share - share at ``reference``
    (0.0 without one). Frequency ranks by share (ties: larger trend, then first seen); trend ranks by trend
    (ties: larger count, then first seen), with ``score`` = trend.

    >>> [(s.cluster, s.score, s.trend) for s in rank_successors([("a", 3.0), ("b", 1.0)], {"a": 1.0})]
    [('a', 0.75, -0.25), ('b', 0.25, 0.25)]
    """
    items = [(c, v) for c, v in counts if v > 0.0]
    total = sum(v for _, v in items)
    out = []
    for c, v in items:
        share = v / total
        trend = share - reference.get(c, 0.0) if reference is not None else 0.0
        out.append(Successor(c, share, v, trend))
    if mode == "frequency":
        out.sort(key=lambda s: (-s.score, -s.trend))
    else:
        out = [Successor(s.cluster, s.trend, s.count, s.trend) for s in out]
        out.sort(key=lambda s: (-s.trend, -s.count))
    return out


# ----------------------------------------------------------------------------------------------- all pairs


@dataclass(frozen=True)
class TableSnapshot:
    """Immutable, picklable state of a :class:`SuccessorTable`."""

    half_life_ms: float
    min_support: float
    pairs: tuple[tuple[tuple[Hashable, Hashable], PairSnapshot], ...]
    global_: PairSnapshot


def split_triple(triple: tuple[Hashable, Hashable, Hashable]) -> tuple[tuple[Hashable, Hashable], Hashable]:
    """((c1, c2), c_next) of a transition triple; ValueError when the successor repeats the pair (the rule never
    makes one: a successor table fed one would count a user staying put as a transition).

    >>> split_triple((1, 2, 3))
    ((1, 2), 3)
    """
    c1, c2, c = triple
    if c in (c1, c2):
        raise ValueError(f"not a transition triple (successor repeats the pair): {triple!r}")
    return (c1, c2), c


class SuccessorTable:
    """Decayed successors of every pair (c1, c2), and of all pairs together as the last fallback.

    ``top(pair, ...)`` answers from the pair itself ("exact") when its decayed support is at least
    ``min_support``, else from the global counts ("global"). c1 and c2 are never among the successors of
    (c1, c2): the transition rule never emits them, and they are dropped from the global answer.
    """

    __slots__ = ("_global", "_pairs", "half_life_ms", "min_support")

    def __init__(self, half_life_ms: float, min_support: float = 5.0) -> None:
        DecayedCounter(half_life_ms)  # checks half_life_ms
        if isinstance(min_support, bool) or not isinstance(min_support, int | float) or not min_support >= 0 \
                or min_support == float("inf"):
            raise ValueError(f"min_support must be a finite number >= 0, got {min_support!r}")
        self.half_life_ms = half_life_ms
        self.min_support = min_support
        self._reset()

    def _reset(self) -> None:
        self._pairs: dict[tuple[Hashable, Hashable], PairSuccessors] = {}
        self._global = PairSuccessors(self.half_life_ms)

    def update(self, triple: tuple[Hashable, Hashable, Hashable], ts_ms: int) -> SuccessorTable:
        pair, c = split_triple(triple)
        p = self._pairs.get(pair)
        if p is None:
            p = self._pairs[pair] = PairSuccessors(self.half_life_ms)
        p._counter.update(c, ts_ms)  # (not p.update: one call less on the per-triple path)
        self._global._counter.update(c, ts_ms)
        return self

    def top(self, pair: tuple[Hashable, Hashable], k: int, now_ms: int,
            mode: str = "frequency") -> tuple[list[Successor], str]:
        """(top ``k`` successors of ``pair`` at ``now_ms``, source) with source "exact" or "global"."""
        _check_k_mode(k, mode)
        p = self._pairs.get(pair)
        support = p.total(now_ms) if p is not None else 0.0
        if p is not None and support > 0 and support >= self.min_support:
            return p.top(k, now_ms, mode), "exact"
        # Hook: the index layer backs off to "neighbor" here (pairs whose clusters' centroids are nearest to
        # c1, c2, each with support >= min_support) before the global counts. It calls ``support()`` and
        # ``get()`` itself; this table knows no vectors.
        return self._global.top(k, now_ms, mode, exclude=pair), "global"

    def support(self, pair: tuple[Hashable, Hashable], now_ms: int) -> float:
        """Decayed number of observations of ``pair`` at ``now_ms`` (0.0 for an unseen pair)."""
        p = self._pairs.get(pair)
        return p.total(now_ms) if p is not None else 0.0

    def get(self, pair: tuple[Hashable, Hashable]) -> PairSuccessors | None:
        return self._pairs.get(pair)

    @property
    def global_successors(self) -> PairSuccessors:
        return self._global

    def pairs(self) -> list[tuple[Hashable, Hashable]]:
        """Every pair seen, in first-seen order."""
        return list(self._pairs)

    def mark_reference(self, now_ms: int) -> None:
        """Freeze every pair's (and the global) current shares as the trend reference."""
        for p in self._pairs.values():
            p.mark_reference(now_ms)
        self._global.mark_reference(now_ms)

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"SuccessorTable(half_life_ms={self.half_life_ms}, min_support={self.min_support}, pairs={len(self)})"

    def snapshot(self) -> TableSnapshot:
        return TableSnapshot(self.half_life_ms, self.min_support,
                             tuple((pair, p.snapshot()) for pair, p in self._pairs.items()), self._global.snapshot())

    @classmethod
    def from_snapshot(cls, snap: TableSnapshot) -> SuccessorTable:
        t = cls(snap.half_life_ms, snap.min_support)
        t._pairs = {pair: PairSuccessors.from_snapshot(ps) for pair, ps in snap.pairs}
        t._global = PairSuccessors.from_snapshot(snap.global_)
        return t
