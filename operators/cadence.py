"""Hybrid update cadence: when a pair's precomputed row needs a RAG refresh, and when a fine-tune is due.

A recommender serves, per cluster pair p = (c1, c2), a row predicted offline by an LLM from the pair's successor
distribution. Per pair the controller keeps C_p, the successor estimate the job serves (the adaptive mix of
``half_lives_ms`` per pair, :class:`~operators.adaptive_successors.AdaptiveSuccessorTable`, or one fixed
``half_life_ms``); R_p, the distribution its row was inferred from; B_p, the distribution the base model was
fine-tuned on; and the pair's triples since R_p was set (stale traffic, undecayed). change(P, Q) is
:func:`drift_change`: the total variation distance 0.5 * sum |P - Q| minus what sampling noise alone would give
(effective sample sizes: twice the decayed supports, once the undecayed ones), floored at 0; 1.0 against a missing
Q.

Decisions run at each multiple of ``check_every_ms`` in event time (one check at the latest boundary when time
jumps), all priced in one cost unit:

- first rows: a pair's R_p is set, with no event, at the first check where its support reaches ``min_support``;
  before the first fine-tune its B_p is set then too (the deployed model is taken to know the world as the
  controller first saw it, so slow-starting pairs do not count as drifted); after a fine-tune, B_p exists only
  for pairs the fine-tune saw, so pairs that appear later have change 1.0 against the base.
- drift debt: at each check, debt += sum over pairs with support >= ``min_support`` of
  (triples since the previous check) * change(C_p, B_p) * ``miss_cost``: events served from a base model whose
  knowledge has drifted.
- fine-tune (:func:`finetune_due`): due when debt >= ``finetune_cost`` and the time since the last fine-tune (or
  the first event) >= ``min_finetune_interval_ms``. It sets B_p = R_p = C_p for every pair, resets debt and
  stale traffic to 0, and no refresh is evaluated at that check (the new model re-infers the whole table).
- RAG refresh (:func:`refresh_due`), otherwise, per pair with a row: due when support >= ``min_support``,
  change(C_p, R_p) >= ``min_change`` and the expected loss of keeping the row,
  stale traffic * change * ``miss_cost``, >= ``refresh_cost``. All due pairs go in one ``rag_refresh`` event
  (largest expected loss first); each gets R_p = C_p and stale traffic 0.

>>> due, reason = refresh_due(support=120.0, change=0.4, stale_traffic=100, cfg=CadenceConfig())
>>> due, reason
(True, 'expected loss 2.00 (100 events x change 0.40 x miss cost 0.05) >= refresh cost 1')
>>> finetune_due(debt=2_150.3, since_last_ms=2 * DAY_MS, cfg=CadenceConfig())[1]
'drift debt 2,150.3 >= fine-tune cost 2,000 but only 2.0 days since the last fine-tune (minimum 3.0)'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS, AdaptiveSuccessorTable

__all__ = [
    "DAY_MS", "HOUR_MS", "KINDS", "CadenceBook", "CadenceCheck", "CadenceClock", "CadenceConfig", "CadenceController",
    "CadenceEvent", "drift_change", "finetune_due", "read_estimate", "refresh_due", "total_variation",
]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
KINDS = ("rag_refresh", "fine_tune")

_TWO_OVER_PI = 2.0 / math.pi
_INT_FIELDS = {"check_every_ms": 1, "min_finetune_interval_ms": 0, "top_k": 1}


@dataclass(frozen=True)
class CadenceConfig:
    """Costs and thresholds of the cadence controller; every field is checked (bad value -> ``ValueError``)."""

    half_life_ms: int | None = None  # one fixed half-life of C_p; None: the adaptive mix of half_lives_ms
    half_lives_ms: tuple[float, ...] = DEFAULT_HALF_LIVES_MS
    check_every_ms: int = HOUR_MS
    refresh_cost: float = 1.0
    finetune_cost: float = 2_000.0
    miss_cost: float = 0.05
    min_support: float = 20.0
    min_change: float = 0.15
    min_finetune_interval_ms: int = 3 * DAY_MS
    top_k: int = 5

    def __post_init__(self) -> None:
        h = self.half_life_ms
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ValueError(f"half_life_ms must be an int >= 1 or None (adaptive), got {h!r}")
        object.__setattr__(self, "half_lives_ms", tuple(self.half_lives_ms))
        AdaptiveSuccessorTable(self.half_lives())  # checks the half-lives
        for name, low in _INT_FIELDS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        for name, low, strict in (("refresh_cost", 0.0, False), ("finetune_cost", 0.0, True),
                                  ("miss_cost", 0.0, False), ("min_support", 0.0, True)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v < low or (strict and v == low):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {v!r}")
        v = self.min_change
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v <= 1.0:
            raise ValueError(f"min_change must be a number in (0, 1], got {v!r}")

    def half_lives(self) -> tuple[float, ...]:
        """The half-lives C_p mixes: ``(half_life_ms,)`` when one is fixed, else ``half_lives_ms``."""
        return (self.half_life_ms,) if self.half_life_ms is not None else self.half_lives_ms


# ------------------------------------------------------------------------------------------------ decisions


def total_variation(p: dict[int, float], q: dict[int, float] | None) -> float:
    """0.5 * sum |p - q| of two normalised distributions; 1.0 when ``q`` is missing or empty.

    >>> total_variation({3: 0.5, 5: 0.5}, {3: 1.0}), total_variation({3: 1.0}, None)
    (0.5, 1.0)
    """
    if not q:
        return 1.0
    s = sum(abs(v - q.get(k, 0.0)) for k, v in p.items()) + sum(v for k, v in q.items() if k not in p)
    return min(1.0, 0.5 * s)


def drift_change(p: dict[int, float], n_p: float, q: dict[int, float] | None, n_q: float) -> float:
    """How far ``p`` has moved from ``q`` beyond sampling noise: total variation minus its expected value had both
    been drawn from one distribution (each successor's share differs by a normal of variance m(1 - m)(1/n_p +
    1/n_q), whose mean absolute value is sqrt(2/pi) times its deviation; m = the two shares' mean), floored at 0.
    ``n_*``: effective sample sizes (for counts decayed with a half-life, twice the decayed support). Without
    this, every thinly supported pair would look drifted and noise alone would add up to a fine-tune.

    >>> round(drift_change({3: 0.5, 5: 0.5}, 1e9, {3: 1.0}, 1e9), 3)  # plenty of data: the whole move counts
    0.5
    >>> drift_change({3: 0.6, 4: 0.4}, 20, {3: 0.5, 4: 0.5}, 20)  # 20 samples each: within noise
    0.0
    """
    if not q:
        return 1.0
    diff = spread = 0.0  # one pass over both supports: sum |p - q| and sum sqrt(m (1 - m))
    for k in p.keys() | q.keys():
        a, b = p.get(k, 0.0), q.get(k, 0.0)
        diff += abs(a - b)
        m = 0.5 * (a + b)
        spread += math.sqrt(m * (1.0 - m))
    noise = math.sqrt(_TWO_OVER_PI * (1.0 / max(n_p, 1e-9) + 1.0 / max(n_q, 1e-9))) * spread
    return max(0.0, min(1.0, 0.5 * diff) - 0.5 * noise)


def refresh_due(support: float, change: float, stale_traffic: int, cfg: CadenceConfig) -> tuple[bool, str]:
    """Should a pair's row be re-inferred now? Cases, in order:

    - support < ``min_support`` -> no (too little evidence);
    - change < ``min_change`` -> no (the row is not stale);
    - stale_traffic * change * ``miss_cost`` < ``refresh_cost`` -> no (the stale row costs less than a refresh);
    - otherwise -> yes.
    """
    if support < cfg.min_support:
        return False, f"support {support:,.1f} < min support {cfg.min_support:,g}"
    if change < cfg.min_change:
        return False, f"change {change:.2f} < min change {cfg.min_change:g}"
    loss = stale_traffic * change * cfg.miss_cost
    what = f"expected loss {loss:,.2f} ({stale_traffic:,} events x change {change:.2f} x miss cost {cfg.miss_cost:g})"
    if loss < cfg.refresh_cost:
        return False, f"{what} < refresh cost {cfg.refresh_cost:,g}"
    return True, f"{what} >= refresh cost {cfg.refresh_cost:,g}"


def finetune_due(debt: float, since_last_ms: int, cfg: CadenceConfig) -> tuple[bool, str]:
    """Is a fine-tune due? Cases, in order:

    - debt < ``finetune_cost`` -> no (drift has cost less than a fine-tune);
    - since_last_ms < ``min_finetune_interval_ms`` -> no (too soon after the last fine-tune, or the start);
    - otherwise -> yes.
    """
    days = since_last_ms / DAY_MS
    if debt < cfg.finetune_cost:
        return False, f"drift debt {debt:,.1f} < fine-tune cost {cfg.finetune_cost:,g}"
    what = f"drift debt {debt:,.1f} >= fine-tune cost {cfg.finetune_cost:,g}"
    if since_last_ms < cfg.min_finetune_interval_ms:
        minimum = cfg.min_finetune_interval_ms / DAY_MS
        return False, f"{what} but only {days:.1f} days since the last fine-tune (minimum {minimum:.1f})"
    return True, f"{what} after {days:.1f} days"


# ---------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class CadenceEvent:
    """One cadence decision. ``pairs``: one dict per refreshed pair (``rag_refresh``), empty for ``fine_tune``;
    ``evidence``: the numbers of the cost model behind ``reason``."""

    kind: str
    ts_ms: int
    pairs: tuple[dict[str, Any], ...]
    reason: str
    evidence: dict[str, Any]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cadence event kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def event_id(self) -> str:
        return f"{self.kind}-{self.ts_ms}"

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "kind": self.kind, "ts": self.ts_ms, "pairs": list(self.pairs),
                "reason": self.reason, "evidence": self.evidence}

    def to_kafka(self) -> tuple[bytes, bytes]:
        """(key, value): keyed by kind, so each kind's decisions stay in order."""
        return self.kind.encode(), orjson.dumps(self.to_dict())


# ------------------------------------------------------------------------------------------------ controller


def _top(dist: dict[int, float], k: int) -> list[int]:
    return [c for c, _ in sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


class CadenceClock:
    """Event time as the controller sees it: which check boundaries (multiples of ``check_every_ms``) a triple or
    an advance passes, and the pairs with triples since the last check, in first-seen order. It needs no
    successor state, so the job's ordering step keeps it while the estimates C_p live in the successor step
    (streams/cadence_stage.py).

    >>> clock = CadenceClock(HOUR_MS)
    >>> clock.on_triple(1, 2, 3, 10), clock.on_triple(4, 2, 3, 20), clock.on_triple(1, 2, 3, 30)
    ([], [], [])
    >>> clock.on_triple(1, 2, 5, HOUR_MS + 5)  # the check at 1 h, then this triple counts for the next one
    [CadenceCheck(ts_ms=3600000, start_ms=10, pending=((1, 2, 2), (4, 2, 1)))]
    >>> [(c.ts_ms, c.pending) for c in clock.advance(3 * HOUR_MS)]
    [(7200000, ((1, 2, 1),)), (10800000, ())]
    """

    __slots__ = ("every", "now", "pending", "ref", "start")

    def __init__(self, every_ms: int = HOUR_MS) -> None:
        self.every = every_ms
        self.now: int | None = None
        self.start = 0  # event time of the first triple (the "last fine-tune" before any)
        self.ref = 0  # event time of the last check (or the boundary before the first event)
        self.pending: dict[tuple[int, int], int] = {}  # triples per pair since the last check

    def __getstate__(self) -> tuple:
        return self.every, self.now, self.start, self.ref, self.pending

    def __setstate__(self, state: tuple) -> None:
        self.every, self.now, self.start, self.ref, self.pending = state

    def boundaries(self, ts_ms: int) -> list[int]:
        """Move event time to ``ts_ms`` (never back); the check boundaries passed, oldest first (one call may
        pass many: how far it jumps depends on how the stream was batched, and the decisions must not)."""
        every = self.every
        if self.now is None:
            self.now = self.start = ts_ms
            self.ref = ts_ms - ts_ms % every
            return []
        if ts_ms <= self.now:
            return []
        self.now = ts_ms
        out = list(range(self.ref + every, ts_ms - ts_ms % every + 1, every))
        if out:
            self.ref = out[-1]
        return out

    def take(self) -> dict[tuple[int, int], int]:
        """The pairs with triples since the last check (and their counts), in first-seen order; starts anew."""
        pending, self.pending = self.pending, {}
        return pending

    def count(self, key: tuple[int, int]) -> None:
        self.pending[key] = self.pending.get(key, 0) + 1

    def advance(self, ts_ms: int) -> list[CadenceCheck]:
        """:meth:`boundaries` as checks, each with the pairs it must re-read (the first one takes them all)."""
        return [CadenceCheck(b, self.start, tuple((*k, n) for k, n in self.take().items()))
                for b in self.boundaries(ts_ms)]

    def on_triple(self, c1: int, c2: int, c_next: int, ts_ms: int) -> list[CadenceCheck]:
        """:meth:`advance` to ``ts_ms``, then count the triple's pair (for the next check)."""
        checks = self.advance(ts_ms)
        self.count((c1, c2))
        return checks


@dataclass(frozen=True, slots=True)
class CadenceCheck:
    """One check due at ``ts_ms``: ``pending`` = (c1, c2, triples since the last check) per pair, in first-seen
    order (the drift debt sums them in it); ``start_ms``: the first triple's event time."""

    ts_ms: int
    start_ms: int
    pending: tuple[tuple[int, int, int], ...]


class CadenceBook:
    """The controller's decisions and what they rest on, per pair: R_p (the row's distribution), B_p (the base
    model's), their effective sample sizes, the stale traffic; and the drift debt. Each check is given the pairs'
    readings of C_p (``read(pair, ts) -> (support, distribution, effective sample size)``), so the estimates can
    live elsewhere (:class:`CadenceController` keeps them beside it; the job in the successor step).

    >>> book = CadenceBook(CadenceConfig(min_support=5.0, min_change=0.3))
    >>> reading = {(1, 2): (60.0, {3: 1.0}, 120.0)}  # (1, 2) -> 3, 60 triples an hour
    >>> book.check(HOUR_MS, 0, {(1, 2): 60}, lambda key, ts: reading[key], reading.keys)  # its first row
    []
    >>> reading[(1, 2)] = (60.0, {5: 1.0}, 120.0)  # then -> 5
    >>> [(e.kind, e.pairs[0]["top_after"]) for e in book.check(2 * HOUR_MS, 0, {(1, 2): 60},
    ...                                                        lambda key, ts: reading[key], reading.keys)]
    [('rag_refresh', [5])]
    """

    def __init__(self, config: CadenceConfig) -> None:
        self.config = config
        self._rows: dict[tuple[int, int], dict[int, float]] = {}
        self._base: dict[tuple[int, int], dict[int, float]] = {}
        self._n: dict[tuple[int, int], list[float]] = {}  # effective sample sizes of [row, base]
        self._stale: dict[tuple[int, int], int] = {}
        self._debt = 0.0
        self._last_finetune: int | None = None
        self._refreshes = self._finetunes = self._stale_pairs = 0
        self._stale_keys: set[tuple[int, int]] = set()

    def check(self, ts_ms: int, start_ms: int, pending: dict[tuple[int, int], int],
              read: Callable[[tuple[int, int], int], tuple[float, dict[int, float], float]],
              pairs: Callable[[], Iterable[tuple[int, int]]]) -> list[CadenceEvent]:
        """The check at ``ts_ms``. Only pairs with triples since the last check (``pending``) can change a decision
        (a pair without new data keeps its distribution and its stale traffic, and its support only decays), so
        only they (and the stale rows) are re-read; every pair (``pairs()``) is read when a fine-tune needs it."""
        cfg = self.config
        support: dict[tuple[int, int], float] = {}
        dist: dict[tuple[int, int], dict[int, float]] = {}
        ess: dict[tuple[int, int], float] = {}
        for key in list(pending) + [k for k in self._stale_keys if k not in pending]:
            support[key], dist[key], ess[key] = read(key, ts_ms)
        for key, n in pending.items():
            self._stale[key] = self._stale.get(key, 0) + n
        sizes = self._n
        for key, s in support.items():  # first rows (and, before any fine-tune, first base)
            if s >= cfg.min_support and key not in self._rows:
                self._rows[key], self._stale[key] = dist[key], 0
                sz = sizes.setdefault(key, [ess[key], ess[key]])
                sz[0] = ess[key]
                if self._last_finetune is None and key not in self._base:
                    self._base[key], sz[1] = dist[key], ess[key]
        traffic = weighted = 0.0
        for key, n in pending.items():
            if support[key] >= cfg.min_support:
                change = drift_change(dist[key], ess[key], self._base.get(key), self._n.get(key, [1, 1])[1])
                traffic += n
                weighted += n * change
        self._debt += weighted * cfg.miss_cost
        since = self._last_finetune if self._last_finetune is not None else start_ms
        due, reason = finetune_due(self._debt, ts_ms - since, cfg)
        if due:
            for key in pairs():
                if key not in support:
                    support[key], dist[key], ess[key] = read(key, ts_ms)
            return [self._finetune(ts_ms, since, reason, weighted / traffic if traffic else 0.0, support, dist, ess)]
        return self._refresh(ts_ms, support, dist, ess)
    @property
    def debt(self) -> float:
        return self._debt

    @property
    def last_finetune_ms(self) -> int | None:
        return self._last_finetune

    @property
    def refreshes(self) -> int:
        return self._refreshes

    @property
    def finetunes(self) -> int:
        return self._finetunes

    def status(self, now_ms: int | None, pairs: int) -> dict[str, Any]:
        """Counters as of the last check; ``stale_pairs``: rows changed >= ``min_change`` but not worth a refresh."""
        return {"now_ms": now_ms, "debt": self._debt, "finetune_cost": self.config.finetune_cost,
                "last_finetune_ms": self._last_finetune, "pairs": pairs, "stale_pairs": self._stale_pairs,
                "refreshes": self._refreshes, "finetunes": self._finetunes}

    def pair_snapshot(self, key: tuple[int, int]) -> list[Any]:
        """[row, base, stale traffic, sample sizes, stale?] of a pair as plain lists (see :meth:`load_pair`)."""

        def items(d: dict[int, float] | None) -> list[list[float]] | None:
            return None if d is None else [[k, v] for k, v in d.items()]

        return [items(self._rows.get(key)), items(self._base.get(key)), self._stale.get(key, 0), self._n.get(key),
                key in self._stale_keys]

    def load_pair(self, key: tuple[int, int], row: Any, base: Any, stale: int, sizes: Any, is_stale: bool) -> None:
        if is_stale:
            self._stale_keys.add(key)
        if sizes is not None:
            self._n[key] = list(sizes)
        for target, value in ((self._rows, row), (self._base, base)):
            if value is not None:
                target[key] = {k: v for k, v in value}
        self._stale[key] = stale

    def _finetune(self, ts_ms: int, since: int, reason: str, drift: float, support: dict[tuple[int, int], float],
                  dist: dict[tuple[int, int], dict[int, float]], ess: dict[tuple[int, int], float]) -> CadenceEvent:
        cfg = self.config
        drifted = sum(1 for key, s in support.items() if s >= cfg.min_support and drift_change(
            dist[key], ess[key], self._base.get(key), self._n.get(key, [1, 1])[1]) >= cfg.min_change)
        evidence = {"debt": round(self._debt, 6), "finetune_cost": cfg.finetune_cost, "since_ms": since,
                    "days_since": round((ts_ms - since) / DAY_MS, 6), "traffic_weighted_drift": round(drift, 6),
                    "pairs_drifted": drifted}
        self._base, self._rows, self._stale = dict(dist), dict(dist), dict.fromkeys(dist, 0)
        self._n = {key: [ess[key], ess[key]] for key in support}
        self._debt, self._last_finetune, self._stale_pairs = 0.0, ts_ms, 0
        self._stale_keys = set()
        self._finetunes += 1
        return CadenceEvent("fine_tune", ts_ms, (), reason, evidence)

    def _refresh(self, ts_ms: int, support: dict[tuple[int, int], float], dist: dict[tuple[int, int], dict[int, float]],
                 ess: dict[tuple[int, int], float]) -> list[CadenceEvent]:
        cfg = self.config
        due_pairs: list[tuple[float, tuple[int, int], float, int]] = []
        stale = self._stale_keys
        for key, s in support.items():
            row = self._rows.get(key)
            stale.discard(key)
            if row is None or s < cfg.min_support:
                continue
            change = drift_change(dist[key], ess[key], row, self._n.get(key, [1, 1])[0])
            traffic = self._stale.get(key, 0)
            if refresh_due(s, change, traffic, cfg)[0]:
                due_pairs.append((traffic * change * cfg.miss_cost, key, change, traffic))
            elif change >= cfg.min_change:
                stale.add(key)  # changed, not yet worth a refresh: re-read at each check (its support decays)
        self._stale_pairs = len(stale)
        if not due_pairs:
            return []
        due_pairs.sort(key=lambda t: (-t[0], t[1]))
        pairs = []
        for loss, key, change, traffic in due_pairs:
            pairs.append({"pair": list(key), "change": round(change, 6), "support": round(support[key], 6),
                          "stale_traffic": traffic, "expected_loss": round(loss, 6),
                          "top_before": _top(self._rows[key], cfg.top_k), "top_after": _top(dist[key], cfg.top_k)})
            self._rows[key], self._stale[key] = dist[key], 0
            self._n.setdefault(key, [0.0, 0.0])[0] = ess[key]
        n, total_loss = len(pairs), sum(t[0] for t in due_pairs)
        loss0, key0, change0, traffic0 = due_pairs[0]
        reason = (f"refresh {n} stale pair{'s' if n > 1 else ''}: expected loss {total_loss:,.2f} "
                  f">= refresh cost {n * cfg.refresh_cost:,g}; largest ({key0[0]}, {key0[1]}): "
                  f"change {change0:.2f} over {traffic0:,} events")
        evidence = {"pairs": n, "cost": n * cfg.refresh_cost, "expected_loss": round(total_loss, 6)}
        self._refreshes += 1
        return [CadenceEvent("rag_refresh", ts_ms, tuple(pairs), reason, evidence)]



class CadenceController:
    """Feeds on triples in event-time order and emits :class:`CadenceEvent` at hourly (``check_every_ms``) checks:
    C_p of every pair (an :class:`AdaptiveSuccessorTable`), the :class:`CadenceClock` and the
    :class:`CadenceBook` in one object.

    >>> ctl = CadenceController(CadenceConfig(min_support=5.0, min_change=0.3))
    >>> hour0 = [(1, 2, 3, i * 60_000) for i in range(60)]           # (1, 2) -> 3, once a minute
    >>> hour1 = [(1, 2, 5, HOUR_MS + i * 60_000) for i in range(60)]  # then -> 5
    >>> events = ctl.on_triples(hour0 + hour1) + ctl.advance(2 * HOUR_MS)
    >>> [(e.event_id, e.pairs[0]["pair"], e.pairs[0]["top_before"], e.pairs[0]["top_after"]) for e in events]
    [('rag_refresh-7200000', [1, 2], [3], [5, 3])]
    >>> events[0].reason  # change: total variation ~0.50 less ~0.04 of sampling noise (row from ~60 triples)
    'refresh 1 stale pair: expected loss 1.40 >= refresh cost 1; largest (1, 2): change 0.47 over 60 events'
    >>> ctl.status()["refreshes"], round(ctl.debt, 2)
    (1, 1.4)
    """

    def __init__(self, config: CadenceConfig | None = None) -> None:
        self.config = config if config is not None else CadenceConfig()
        self._reset()

    def _reset(self) -> None:
        self._table = AdaptiveSuccessorTable(self.config.half_lives())  # C_p of every pair
        self._clock = CadenceClock(self.config.check_every_ms)
        self._book = CadenceBook(self.config)

    # ------------------------------------------------------------------------------------------------ updates

    def on_triple(self, c1: int, c2: int, c_next: int, ts_ms: int) -> list[CadenceEvent]:
        """Advance event time to ``ts_ms`` (events of the checks passed), then count the triple."""
        events = self.advance(ts_ms)
        self._table.update((c1, c2, c_next), ts_ms)
        self._clock.count((c1, c2))
        return events

    def on_triples(self, triples: Iterable[tuple[int, int, int, int]]) -> list[CadenceEvent]:
        events: list[CadenceEvent] = []
        for c1, c2, c_next, ts_ms in triples:
            events += self.on_triple(c1, c2, c_next, ts_ms)
        return events

    def advance(self, ts_ms: int) -> list[CadenceEvent]:
        """Move event time to ``ts_ms`` (never back) and run a check at every boundary passed, in turn: how far one
        call jumps depends on how the stream was batched, and the decisions must not."""
        clock, events = self._clock, []
        for boundary in clock.boundaries(ts_ms):
            events += self._book.check(boundary, clock.start, clock.take(), self._read, self._table.pairs)
        return events

    def _read(self, key: tuple[int, int], ts_ms: int) -> tuple[float, dict[int, float], float]:
        """The pair's (support, successor distribution, effective sample size) at ``ts_ms``."""
        return read_estimate(self._table, key, ts_ms)

    # ------------------------------------------------------------------------------------------------- results

    @property
    def last_finetune_ms(self) -> int | None:
        return self._book.last_finetune_ms

    @property
    def successors(self) -> AdaptiveSuccessorTable:
        """C_p of every pair (read it; the controller alone updates it)."""
        return self._table

    @property
    def book(self) -> CadenceBook:
        """R_p, B_p, the stale traffic and the debt (read it; the controller alone updates it)."""
        return self._book

    @property
    def clock(self) -> CadenceClock:
        return self._clock

    @property
    def debt(self) -> float:
        return self._book.debt

    @property
    def now_ms(self) -> int | None:
        return self._clock.now

    @property
    def refreshes(self) -> int:
        """Number of ``rag_refresh`` events emitted (each may re-infer many rows)."""
        return self._book.refreshes

    @property
    def finetunes(self) -> int:
        return self._book.finetunes

    def status(self) -> dict[str, Any]:
        """Counters as of the last check; ``stale_pairs``: rows changed >= ``min_change`` but not worth a refresh."""
        return self._book.status(self._clock.now, len(self._table))

    def __repr__(self) -> str:
        return f"CadenceController(pairs={len(self._table)}, now_ms={self._clock.now}, debt={self.debt:.1f})"

    # ----------------------------------------------------------------------------------------------- snapshots

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain lists/dicts/numbers (JSON-able, with ``Infinity`` for no decay, and picklable);
        dict orders are kept."""
        book, clock = self._book, self._clock
        pairs = [[key[0], key[1], *book.pair_snapshot(key)] for key in self._table.pairs()]
        config = {**asdict(self.config), "half_lives_ms": list(self.config.half_lives_ms)}
        return {"version": 2, "config": config, "now_ms": clock.now, "start_ms": clock.start,
                "ref_ms": clock.ref, "debt": book._debt, "last_finetune_ms": book._last_finetune,
                "refreshes": book._refreshes, "finetunes": book._finetunes, "stale_pairs": book._stale_pairs,
                "table": self._table.to_plain(), "pairs": pairs,
                "pending": [[k[0], k[1], n] for k, n in clock.pending.items()]}

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> CadenceController:
        if snap.get("version") != 2:
            raise ValueError(f"unsupported cadence snapshot version {snap.get('version')!r} (expected 2)")
        ctl = cls(CadenceConfig(**snap["config"]))
        book, clock = ctl._book, ctl._clock
        clock.now, clock.start, clock.ref = snap["now_ms"], snap["start_ms"], snap["ref_ms"]
        book._debt, book._last_finetune, book._stale_pairs = snap["debt"], snap["last_finetune_ms"], snap["stale_pairs"]
        book._refreshes, book._finetunes = snap["refreshes"], snap["finetunes"]
        ctl._table = AdaptiveSuccessorTable.from_plain(snap["table"])
        for c1, c2, *record in snap["pairs"]:
            book.load_pair((c1, c2), *record)
        clock.pending = {(c1, c2): n for c1, c2, n in snap["pending"]}
        return ctl

    # The controller's state before the clock and the book were their own objects (recovery stores of earlier
    # versions pickled it with these attributes).
    _BOOK_FIELDS = ("_rows", "_base", "_n", "_stale", "_debt", "_last_finetune", "_refreshes", "_finetunes",
                    "_stale_pairs", "_stale_keys")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a controller of an earlier version (a recovery store): one pickled with its decisions,
        its clock and C_p as its own attributes; and one pickled before C_p was the adaptive table (its counts,
        each scaled to its pair's own time, become a table of its one fixed half-life)."""
        state = dict(state)
        if "_book" not in state:
            config = state["config"]
            book = CadenceBook(config)
            for name in self._BOOK_FIELDS:
                if name in state:
                    setattr(book, name, state.pop(name))
            clock = CadenceClock(config.check_every_ms)
            clock.now, clock.start, clock.ref = state.pop("_now", None), state.pop("_start", 0), state.pop("_ref", 0)
            clock.pending = state.pop("_pending", {})
            state["_book"], state["_clock"] = book, clock
        if "_table" not in state:
            half_life = state["config"].half_life_ms
            table = AdaptiveSuccessorTable((half_life,))
            for key, row in state["_counts"].items():
                table.add_counts(key, row, state["_scaled_at"][key])
            state["_table"] = table
            for name in ("_counts", "_scaled_at", "_inv_half_life"):
                state.pop(name, None)
        self.__dict__.update(state)


def read_estimate(table: AdaptiveSuccessorTable, key: tuple[int, int], ts_ms: int
                  ) -> tuple[float, dict[int, float], float]:
    """A pair's (support, successor distribution, effective sample size) at ``ts_ms`` in ``table``: what
    :meth:`CadenceBook.check` reads of C_p."""
    support, counts, size = table.estimate(key, ts_ms)
    return support, ({c: v / support for c, v in counts.items()} if support > 0 else {}), size
