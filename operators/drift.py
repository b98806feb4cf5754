"""Interest drift per cluster, in event time: transition, engagement, content and volume signals (issue #5).

Every signal compares a *current* window (the last ``window_ms[kind]`` of event time, in hourly buckets) with a
*reference*. The reference moves by policy and is stated in each alert:

- ``"rolling"`` (default, no calls needed): the ``reference_ms`` of event time that ends where the current window
  starts (content: every item seen before the current window);
- any reason passed to :meth:`DriftMonitor.mark_reference` (e.g. ``"refresh"``, ``"fine-tune"``): the state as
  of that time, frozen until the next mark (or ``reference_max_age_ms``, after which the monitor rolls again).

Scores are *lower confidence bounds* of an effect size (the effect minus ``z`` standard errors, 0 when the
data cannot tell), so that small, noisy clusters score 0 instead of crying wolf, and every score has units:

- transition (reported on the pair's second cluster), two tests, either fires: per pair, the Jensen-Shannon
  divergence (bits) of the successor distributions minus its small-sample bias (evidence has 1 - Jaccard of the
  top-5 successors, the paper's); per cluster, :class:`PooledTransitionDrift`, a CUSUM over all pairs into the
  cluster together, scaled so that ``pooled_warning`` meets the transition warning level (the false-alarm
  budget of transition is split between the two, so the second test adds no false alarms);
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
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from operators.alerts import KINDS, Alert
from operators.drift_pooled import OtherClusters, PooledTransitionDrift
from operators.drift_signals import (  # noqa: F401 - re-exported: operators.drift is the public module
    DAY_MS,
    HOUR_MS,
    ContentDrift,
    EngagementDrift,
    TransitionDrift,
    VolumeDrift,
    _bucket_range,
    _check_positive,
    _Window,
    jaccard_distance,
    js_divergence,
    top_k,
)

__all__ = [
    "AlertGate", "ClusterDrift", "ContentDrift", "DriftCombiner", "DriftConfig", "DriftMonitor", "EngagementDrift",
    "PooledTransitionDrift",
    "TransitionDrift",
    "VolumeDrift", "calibrate", "count_episodes", "jaccard_distance", "js_divergence",
]

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


# Calibrated by :func:`calibrate` on the streams without planted drift of seeds 11, 12, 13 (the generator's
# stationary scenario and the real-log-shaped "retail" one, GeneratorConfig defaults: 32,256 cluster-hours),
# target 0.5 false alarms per 1,000 cluster-hours, an even share per kind and again per test within a kind (the
# window test and its CUSUM), with minimal effect sizes as the window tests' floors (transition 0.25 bits,
# engagement 0.05, content 0.03, volume 0.5 in log share). Reproduce with
#   .venv/bin/python bench/drift_eval.py --calibrate
DEFAULT_WARNING = {"transition": 0.25, "engagement": 0.1173, "content": 0.03, "volume": 0.5}
DEFAULT_CRITICAL = {"transition": 0.5, "engagement": 0.2347, "content": 0.06, "volume": 1.0}
DEFAULT_POOLED_WARNING = 7.1209  # nats of the pooled transition CUSUM
DEFAULT_CUSUM_WARNING = {"engagement": 10.032, "content": 2.1672, "volume": 15.7132}  # nats of the other CUSUMs
# The name of each kind's two tests: (window test, accumulating test).
TESTS = {"transition": ("pair_jsd", "pooled_cusum"), "engagement": ("rate_change", "rate_cusum"),
         "content": ("centroid_cosine_drop", "cosine_cusum"), "volume": ("log_share_ratio", "share_cusum")}


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
        "transition": 2 * HOUR_MS, "engagement": HOUR_MS, "content": 2 * HOUR_MS, "volume": HOUR_MS})
    # The pooled transition test (PooledTransitionDrift, one per cluster over all its incoming pairs): its warning
    # level in nats of the CUSUM (critical: the same critical/warning ratio as transition), and the span of
    # "recent" triples its alternative is estimated from. A transition score is the larger of the pair JSD and
    # the CUSUM scaled by warning["transition"] / pooled_warning (evidence.test says which).
    pooled_warning: float = DEFAULT_POOLED_WARNING
    pooled_recent_ms: int = 12 * HOUR_MS
    # The accumulating tests of the other kinds (RateCusum for engagement's positive rate and a cluster's share
    # of volume, MeanDropCusum for content's cosines; operators.drift_cusum): their warning levels in nats, and
    # the span of "recent" observations their alternatives are estimated from. As for transition, a kind's score
    # is the larger of its window test and its CUSUM scaled by warning[kind] / cusum_warning[kind].
    cusum_warning: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CUSUM_WARNING))
    cusum_recent_ms: int = 12 * HOUR_MS
    # The smallest change each CUSUM accumulates (its allowance; smaller ones drain it): half the window tests'
    # minimal effect sizes (engagement: a rate difference, content: a cosine drop, volume: a log share ratio).
    # Without it the share CUSUMs of every other cluster fill when one cluster starts trending (their shares
    # all fall a little), and content's on a catalogue that widens slowly.
    cusum_min_effect: dict[str, float] = field(default_factory=lambda: {
        "engagement": 0.025, "content": 0.015, "volume": 0.25})

    def __post_init__(self) -> None:
        _check_positive("bucket_ms", self.bucket_ms)
        _check_positive("reference_ms", self.reference_ms)
        _check_positive("pooled_warning", self.pooled_warning)
        _check_positive("pooled_recent_ms", self.pooled_recent_ms)
        _check_positive("cusum_recent_ms", self.cusum_recent_ms)
        if set(self.cusum_warning) != {"engagement", "content", "volume"}:
            raise ValueError(f"cusum_warning needs exactly engagement, content, volume, got "
                             f"{sorted(self.cusum_warning)}")
        for k, v in self.cusum_warning.items():
            _check_positive(f"cusum_warning[{k}]", v)
        if set(self.cusum_min_effect) != set(self.cusum_warning):
            raise ValueError(f"cusum_min_effect needs exactly engagement, content, volume, got "
                             f"{sorted(self.cusum_min_effect)}")
        for k, v in self.cusum_min_effect.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ValueError(f"cusum_min_effect[{k}] must be a finite number >= 0, got {v!r}")
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


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def _test_of(kind: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """Which test fired, its effect size (in the kind's units, before the confidence correction) and support.

    >>> _test_of("engagement", {"rate_before": 0.6, "rate_after": 0.25, "n_after": 80})
    {'test': 'rate_change', 'effect_size': 0.35, 'support': 80}
    """
    if "tests" in r and r.get("test") in r["tests"]:
        d = r["tests"][r["test"]]
        return {"test": r["test"], "effect_size": _rounded(d["effect_size"]), "support": d["support"]}
    if kind == "transition":
        return {"test": "pair_jsd", "effect_size": _rounded(r.get("js")), "support": r.get("n_after")}
    if kind == "engagement":
        return {"test": "rate_change", "effect_size": round(abs(r["rate_after"] - r["rate_before"]), 6),
                "support": r["n_after"]}
    if kind == "content":
        return {"test": "centroid_cosine_drop", "effect_size": round(r["cos_before"] - r["cos_after"], 6),
                "support": r["n_after"]}
    s0 = (r["count_before"] + 0.5) / (r["total_before"] + 1)
    s1 = (r["count_after"] + 0.5) / (r["total_after"] + 1)
    return {"test": "log_share_ratio", "effect_size": round(abs(math.log(s1 / s0)), 6), "support": r["count_after"]}


class _PairSchedule:
    """Which pairs' transition windows can have changed since the last evaluation (derived state: not pickled).

    Most pairs are sparse: at most evaluations none of their buckets is at an edge of the reference or current
    window, so moving their running sums only takes the new bounds and their result is the one they had. The
    schedule keeps, per bucket, the pairs with triples in it; an evaluation then moves only the pairs with a bucket
    entering or leaving a window or old enough to prune, and those that got triples since the last one (a late
    triple inside a window changes its sums). The others take the new bounds when next touched
    (:meth:`TransitionDrift.follow`) and keep their last result, so every result is what moving all pairs gives.
    Where a window would not slide by a few buckets (a first evaluation, a marked reference, a recovered monitor,
    an uneven cadence) every pair is moved, as before.
    """

    __slots__ = ("buckets", "evals", "next_seq", "ranges", "results", "touched")

    def __init__(self) -> None:
        self.buckets: dict[int, set[tuple[int, int]]] = {}  # bucket -> pairs with triples in it
        self.touched: set[tuple[int, int]] = set()  # pairs that got triples since the last evaluation
        # (reference, current) bucket ranges of the last evaluation; None: the next one moves every pair
        self.ranges: tuple[tuple[int, int], tuple[int, int]] | None = None
        self.evals = 0  # transition evaluations so far; a pair whose ``seen`` is this has the last bounds
        self.results: dict[tuple[int, int], dict[str, Any]] = {}  # pair -> its last result that was not None
        self.next_seq = 0  # the next pair's ``seq`` (its place in the monitor's pair table)

    def note(self, pair: tuple[int, int], bucket: int) -> None:
        """A triple of ``pair`` in ``bucket``."""
        row = self.buckets.get(bucket)
        if row is None:
            row = self.buckets[bucket] = set()
        row.add(pair)
        self.touched.add(pair)

    def due(self, ranges: tuple[tuple[int, int], tuple[int, int]], prune_lo: int) -> set[tuple[int, int]] | None:
        """The pairs to move to ``ranges`` (and prune below ``prune_lo``), or None: every pair. A window that
        slides forward by at most 8 bucket ends in all, still overlapping, is what a pair's running sum
        follows without summing afresh (:func:`operators.drift_signals._slide`)."""
        prev = self.ranges
        if prev is None:
            return None
        for (plo, phi), (lo, hi) in zip(prev, ranges, strict=True):
            if not (plo <= lo < phi <= hi and (lo - plo) + (hi - phi) <= 8):
                return None
        due = set(self.touched)
        buckets = self.buckets
        for (plo, phi), (lo, hi) in zip(prev, ranges, strict=True):
            for b in (*range(plo, lo), *range(phi, hi)):
                row = buckets.get(b)
                if row:
                    due |= row
        for b in [b for b in buckets if b < prune_lo]:
            due |= buckets.pop(b)
        return due

    def rebuild(self, pairs: dict[tuple[int, int], TransitionDrift]) -> None:
        """After moving every pair: the buckets and places from the pairs themselves."""
        self.buckets = {}
        for pair, t in pairs.items():
            for b in t.buckets():
                row = self.buckets.get(b)
                if row is None:
                    row = self.buckets[b] = set()
                row.add(pair)
        for i, t in enumerate(pairs.values()):
            t.seq = i
        self.next_seq = len(pairs)


def _key_order(key: tuple[int, str]) -> tuple[int, int]:
    """Gates are updated, and alerts emitted, in (cluster, kind) order."""
    return key[0], KINDS.index(key[1])


# The kinds a shard decides alone (one cluster's own data), and the ones the combiner decides (a share of all
# traffic; the pooled transition test reads how successors moved in every other cluster).
SHARD_KINDS = ("engagement", "content")
COMBINED_KINDS = ("transition", "volume")


class _EventClock:
    """What both parts of the monitor keep alike: the config, event time, the boundaries evaluated, the reference
    policy (marks) and which kinds are due at a boundary. Every part gets every boundary and every mark, so they
    agree on all of it."""

    config: DriftConfig

    def _init_clock(self, config: DriftConfig) -> None:
        self.config = config
        self._keep = config.reference_ms + max(config.window_ms.values()) + 2 * config.bucket_ms
        self._eval_slots: dict[str, int] = {}  # kind -> evaluate_every_ms slot last scored (see _due)
        self._now: int | None = None
        self._evaluated: int | None = None  # the last bucket boundary evaluated
        self._mark: tuple[int, str] | None = None  # (since_ms, reason)

    @property
    def now_ms(self) -> int | None:
        """Event time advanced to (None before the first ``advance``)."""
        return self._now

    def _set_mark(self, ts_ms: int, reason: str) -> None:
        if not reason or reason == "rolling":
            raise ValueError("reason must be a non-empty name other than 'rolling'")
        self._mark = (ts_ms, reason)

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

    def _due(self, kind: str, now: int) -> bool:
        """Whether ``kind`` is re-scored at ``now`` (else its last results stand)."""
        slot = now // self.config.evaluate_every_ms.get(kind, self.config.bucket_ms)
        if self._eval_slots.get(kind) == slot:
            return False
        self._eval_slots[kind] = slot
        return True

    def _combine(self, kind: str, rw: dict[str, Any] | None, cusum: Any) -> dict[str, Any] | None:
        """One result of ``kind`` from its window test's result ``rw`` and its CUSUM (None where neither has
        anything to say): ``score`` is the larger of the two, each as a share of its own warning level, in the
        kind's units; ``test`` names the one that decided; ``tests`` has both (statistic, threshold, effect
        size, support)."""
        window_name, cusum_name = TESTS[kind]
        rc = cusum.result() if cusum is not None and (cusum.last_llr is not None or cusum.statistic > 0) else None
        if rw is None and rc is None:
            return None
        tests: dict[str, Any] = {}
        if rw is not None:
            t = _test_of(kind, rw)
            tests[window_name] = {"statistic": rw["score"], "threshold": self.config.warning[kind],
                                  "effect_size": t["effect_size"], "support": t["support"]}
        if rc is not None:
            tests[cusum_name] = {**rc, "threshold": self.config.cusum_warning[kind]}
        return self._decide(kind, rw, tests)

    def _decide(self, kind: str, rw: dict[str, Any] | None, tests: dict[str, Any]) -> dict[str, Any]:
        """``rw`` (the window test's result, or {}) with ``score``, ``test`` and ``tests`` set from both tests."""
        w = self.config.warning[kind]
        window_name, cusum_name = TESTS[kind]
        nw = tests[window_name]["statistic"] / tests[window_name]["threshold"] if window_name in tests else 0.0
        nc = tests[cusum_name]["statistic"] / tests[cusum_name]["threshold"] if cusum_name in tests else 0.0
        # A CUSUM counts evidence, not effect size: past its critical level more evidence says the change is
        # surer, not bigger, so it ranks no higher than that (a long ramp's statistic grows without bound).
        # (min on the score itself: critical / w * w need not round back to critical, and escalation compares it)
        score_c = min(w * nc, self.config.critical[kind])
        r = dict(rw) if rw is not None else {}
        r["score"] = max(w * nw, score_c)
        r["test"] = cusum_name if score_c > w * nw else window_name
        r["tests"] = tests
        return r

    def _gate_updates(self, results: dict[tuple[int, str], dict[str, Any]], gates: dict[tuple[int, str], AlertGate],
                      is_open: dict[tuple[int, str], Alert], kinds: tuple[str, ...], now: int
                      ) -> list[tuple[tuple[int, str], Alert | None]]:
        """Step the gates of ``kinds`` with ``results`` at ``now``: [(key, the alert opened or escalated, or None
        where an open alert closed)], in (cluster, kind) order. ``is_open``: the open alerts (read only)."""
        events: list[tuple[tuple[int, str], Alert | None]] = []
        keys = [k for k in results if k[1] in kinds]
        for key in sorted(set(keys) | set(gates), key=_key_order):
            c, kind = key
            r = results.get(key)
            score = r["score"] if r is not None else 0.0
            gate = gates.get(key)
            if gate is None:
                if r is None or score < self.config.warning[kind]:
                    continue
                w = self.config.warning[kind]
                gate = gates[key] = AlertGate(w, self.config.critical[kind], self.config.rearm_fraction * w,
                                              self.config.cooldown(kind))
            decision = gate.update(score, now)
            if decision is None:
                if not gate.is_open and key in is_open:
                    events.append((key, None))
                continue
            assert r is not None
            if decision != "escalate":
                self._hold_cusum(c, kind, now + self.config.cooldown(kind))
            severity = "critical" if decision == "escalate" else decision
            first = is_open.get(key)
            start = first.window_end_ms if decision == "escalate" and first is not None else now
            events.append((key, self._alert(c, kind, r, severity, start, now)))
        return events

    def _hold_cusum(self, c: int, kind: str, until_ms: int) -> None:  # pragma: no cover - each part has its own
        raise NotImplementedError

    def _alert(self, c: int, kind: str, r: dict[str, Any], severity: str, start: int, now: int) -> Alert:
        w = self._window(kind, now)
        lo = w.current[0] if kind != "content" else max(now - self.config.window_ms[kind], w.frozen_ms or 0)
        evidence = {k: _rounded(v) for k, v in r.items() if k != "score"}
        evidence.update(_test_of(kind, r))
        thr = self.config.critical[kind] if severity == "critical" else self.config.warning[kind]
        return Alert(f"drift-{c}-{kind}-{start}", c, kind, float(r["score"]), thr, severity, lo, now, evidence,
                     now, reference=self.reference(kind, now))


class ClusterDrift(_EventClock):
    """The drift state of some clusters (all of them, or one shard's): each cluster's engagement and content
    signals, the pair windows of the pairs into it and the windows of its pooled transition test, and the
    alert gates of its engagement and content.

    It sees the events of its clusters (a triple goes to the shard of its second cluster) and every boundary and
    mark; at each boundary it evaluates what needs only its own clusters and returns a *report* (a dict) that a
    :class:`DriftCombiner` turns, with every other shard's report of the same boundary, into alerts and status:
    ``now``, ``results`` (engagement and content per cluster), ``gates`` (alerts opened, escalated or closed),
    and at transition boundaries ``best`` (the busiest-scoring pair per second cluster) and ``staged`` (each
    cluster's pooled test, staged for the combiner). Splitting the clusters over shards changes none of it: the
    reports of all shards hold what one shard with every cluster reports.

    >>> shard = ClusterDrift()
    >>> reports = [r for i in range(3 * 24 * 20) for r in shard.on_engagements(7, i * 180_000, 1, i % 2)]
    >>> len(reports), sorted({k for r in reports for k in r["results"]})  # one per hour boundary passed
    (71, [(7, 'engagement')])
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self._init_clock(config or DriftConfig())
        self._engagement: dict[int, EngagementDrift] = {}
        self._content: dict[int, ContentDrift] = {}
        self._pairs: dict[tuple[int, int], TransitionDrift] = {}
        self._pooled: dict[int, PooledTransitionDrift] = {}  # per second cluster c2: its test's windows
        self._schedule = _PairSchedule()  # which pairs an evaluation moves (derived)
        self._gates: dict[tuple[int, str], AlertGate] = {}  # engagement and content
        self._open: dict[tuple[int, str], Alert] = {}
        self._last: dict[tuple[int, str], dict[str, Any]] = {}
        self.updates = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a Bytewax recovery snapshot) as if every pair had been moved at each evaluation: the pairs the
        last evaluations skipped take their bounds first; the schedule is derived and left out."""
        self._sync_pairs()
        return {**self.__dict__, "_schedule": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._schedule = _PairSchedule()

    def _sync_pairs(self) -> None:
        sched = self._schedule
        if sched is None or sched.ranges is None:
            return
        for t in self._pairs.values():
            if t.seen != sched.evals:
                t.follow(*sched.ranges)
                t.seen = sched.evals

    # -- inputs ------------------------------------------------------------------------------------------

    def on_engagement(self, cluster: int, ts_ms: int, positive: bool) -> list[dict[str, Any]]:
        out = self.advance(ts_ms)
        e = self._engagement.get(cluster)
        if e is None:
            e = self._engagement[cluster] = self._new_engagement()
        e.update(ts_ms, positive)
        self.updates += 1
        return out

    def on_engagements(self, cluster: int, ts_ms: int, n: int, positive: int) -> list[dict[str, Any]]:
        """``n`` engagements of one cluster in the bucket of ``ts_ms`` (the latest of them), ``positive`` of them
        positive: the same as ``n`` calls of :meth:`on_engagement` within one bucket, at a fraction of the cost."""
        out = self.advance(ts_ms)
        e = self._engagement.get(cluster)
        if e is None:
            e = self._engagement[cluster] = self._new_engagement()
        e.update(ts_ms, positive, n)
        self.updates += n
        return out

    def on_item(self, cluster: int, ts_ms: int, vector: np.ndarray, novel: bool) -> list[dict[str, Any]]:
        """A content item of ``cluster`` (a publish time: counted in its bucket, never moves event time)."""
        c = self._content.get(cluster)
        if c is None:
            c = self._content[cluster] = self._new_content()
        c.update(ts_ms, vector, novel)
        self.updates += 1
        return []

    def on_triple(self, c1: int, c2: int, c_next: int, ts_ms: int) -> list[dict[str, Any]]:
        out = self.advance(ts_ms)
        sched = self._schedule
        t = self._pairs.get((c1, c2))
        if t is None:
            t = self._pairs[(c1, c2)] = TransitionDrift(self.config.bucket_ms, self._keep,
                                                        self.config.min_support["transition"], self.config.z)
            t.seq, t.seen = sched.next_seq, sched.evals
            sched.next_seq += 1
        elif t.seen != sched.evals and sched.ranges is not None:  # skipped by the last evaluations
            t.follow(*sched.ranges)
            t.seen = sched.evals
        t.update(c_next, ts_ms)
        sched.note((c1, c2), ts_ms // self.config.bucket_ms)
        p = self._pooled.get(c2)
        if p is None:
            p = self._pooled[c2] = self._new_pooled()
        p.update(c1, c_next, ts_ms)
        self.updates += 1
        return out

    def _new_engagement(self) -> EngagementDrift:
        cfg = self.config
        return EngagementDrift(cfg.bucket_ms, self._keep, cfg.min_support["engagement"], cfg.z, cfg.cusum_recent_ms,
                               cfg.cusum_min_effect["engagement"])

    def _new_content(self) -> ContentDrift:
        cfg = self.config
        return ContentDrift(cfg.bucket_ms, self._keep, cfg.min_support["content"], cfg.min_reference_items, cfg.z,
                            cfg.window_ms["content"], cfg.cusum_min_effect["content"])

    def _new_pooled(self) -> PooledTransitionDrift:
        cfg = self.config
        return PooledTransitionDrift(cfg.bucket_ms, self._keep, cfg.pooled_recent_ms, cfg.min_support["transition"])

    def advance(self, ts_ms: int, skip: Container[int] = ()) -> list[dict[str, Any]]:
        """Move event time to ``ts_ms``; a report for each bucket boundary passed. A boundary in ``skip`` (its
        evaluation failed before) is passed without evaluating: its report has the last results and moves no
        gate."""
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
        # Every boundary passed, in turn: how far one call jumps depends on how the stream was batched, and the
        # alerts must not (a jump evaluated once, at its latest boundary, missed drifts a step-by-step run saw).
        reports = []
        for bnd in range(self._evaluated + b, boundary + 1, b):
            self._evaluated = bnd
            if bnd in skip:
                reports.append({"now": bnd, "results": dict(self._last), "best": None, "staged": None, "gates": []})
            else:
                reports.append(self._evaluate(bnd))
        return reports

    def mark_reference(self, ts_ms: int, reason: str) -> None:
        """Compare everything against the state as of ``ts_ms`` from now on (e.g. reason ``"refresh"``)."""
        self._set_mark(ts_ms, reason)
        for kind, sig in (("engagement", self._engagement), ("content", self._content)):
            for s in sig.values():
                s.mark_reference(self._window(kind, ts_ms))
        for t in self._pairs.values():
            t.mark_reference(self._window("transition", ts_ms))
        for p in self._pooled.values():
            p.mark_reference(self._window("transition", ts_ms))

    # -- evaluation ----------------------------------------------------------------------------------------

    def _evaluate(self, now: int) -> dict[str, Any]:
        due = {kind: self._due(kind, now) for kind in KINDS}
        results = {key: r for key, r in self._last.items() if not due[key[1]]}
        if due["engagement"]:
            win = self._window("engagement", now)  # one for all clusters (a frozen dataclass)
            for c, e in self._engagement.items():
                r = self._combine("engagement", e.evaluate(now, win), e.cusum)
                if r is not None:
                    results[(c, "engagement")] = r
        if due["content"]:
            win = self._window("content", now)
            for c, ct in self._content.items():
                r = self._combine("content", ct.evaluate(win), ct.cusum)
                if r is not None:
                    results[(c, "content")] = r
        report: dict[str, Any] = {"now": now, "results": results, "best": None, "staged": None}
        if due["transition"]:
            tw = self._window("transition", now)
            frozen = self._frozen(now) is not None
            report["best"] = self._score_pairs(tw, frozen)
            staged = {}
            for c in list(self._pooled):
                p = self._pooled[c]
                o, e = p.stage(tw)
                staged[c] = (o, e, p.take_staged(), p.last_ms, p.empty)
                if p.empty and not frozen:  # (the combiner keeps the test's statistic while it is above 0)
                    del self._pooled[c]
            report["staged"] = staged
        self._last = results
        report["gates"] = events = self._gate_updates(results, self._gates, self._open, SHARD_KINDS, now)
        for key, alert in events:
            if alert is None:
                del self._open[key]
            else:
                self._open[key] = alert
        return report

    def _hold_cusum(self, c: int, kind: str, until_ms: int) -> None:
        """An alert of ``kind`` opened on ``c``: its accumulating test keeps at least its level until ``until_ms``
        (the cooldown: the time the rolling reference takes to absorb the change) and while the change goes on,
        then restarts from 0 (:meth:`operators.drift_cusum.Cusum.hold`)."""
        sig = (self._engagement if kind == "engagement" else self._content).get(c)
        if sig is not None:
            sig.cusum.hold(until_ms)

    def _score_pairs(self, tw: _Window, frozen: bool) -> dict[int, dict[str, Any]]:
        """Move every pair's windows to ``tw`` (only those :class:`_PairSchedule` says can have changed), drop the
        pairs left empty; per second cluster, the result of its highest-scoring pair (the first in the pair
        table on a tie)."""
        sched, pairs, bms = self._schedule, self._pairs, self.config.bucket_ms
        ranges = (_bucket_range(tw.reference, bms), _bucket_range(tw.current, bms))
        due = None if frozen else sched.due(ranges, (tw.now_ms - self._keep) // bms)
        last, sched.evals = sched.ranges, sched.evals + 1
        results = sched.results
        if due is None:
            results.clear()
        for pair in (list(pairs) if due is None else due):
            t = pairs.get(pair)
            if t is None:
                continue
            if last is not None and t.seen != sched.evals - 1:  # skipped since: take the last bounds first
                t.follow(*last)
            r = t.evaluate(tw)
            t.seen = sched.evals
            if t.empty and not frozen:
                del pairs[pair]
                r = None
            if r is not None:
                results[pair] = r
            else:
                results.pop(pair, None)
        sched.touched.clear()
        sched.ranges = None if frozen else ranges
        if due is None:
            sched.rebuild(pairs)
        best: dict[int, dict[str, Any]] = {}
        for pair in sorted(results, key=lambda p: pairs[p].seq):
            r = results[pair]
            if pair[1] not in best or r["score"] > best[pair[1]]["score"]:
                best[pair[1]] = {**r, "pair": list(pair), "top_before": [list(x) for x in r["top_before"]],
                                 "top_after": [list(x) for x in r["top_after"]]}
        return best

    def split(self, shards: int, shard_of: Callable[[int], int]) -> list[ClusterDrift]:
        """This state as ``shards`` parts, cluster ``c`` (and every pair into it) in part ``shard_of(c)`` (a
        recovered one-shard monitor spread over the shards of a sharded job). Each part moves every pair at its
        next evaluation (a fresh pair schedule), which gives what the schedule would."""
        self._sync_pairs()
        parts = []
        for i in range(shards):
            p = ClusterDrift(self.config)
            p._eval_slots, p._mark = dict(self._eval_slots), self._mark
            p._now, p._evaluated = self._now, self._evaluated
            p.updates = self.updates if i == 0 else 0
            parts.append(p)
        for name in ("_engagement", "_content", "_pooled"):
            for c, v in getattr(self, name).items():
                getattr(parts[shard_of(c)], name)[c] = v
        for pair, t in self._pairs.items():
            parts[shard_of(pair[1])]._pairs[pair] = t
        for name in ("_gates", "_open", "_last"):
            for key, v in getattr(self, name).items():
                getattr(parts[shard_of(key[0])], name)[key] = v
        for p in parts:
            for i, t in enumerate(p._pairs.values()):
                t.seq, t.seen = i, 0
            p._schedule.next_seq = len(p._pairs)
        return parts


class DriftCombiner(_EventClock):
    """The part of drift that reads every cluster: volume (each cluster's share of all engagements), the pooled
    transition tests' CUSUMs (each cluster against how successors moved in the others, less the clusters'
    median), the transition and volume gates, and every cluster's status.

    :meth:`evaluate` takes the reports of one boundary from every shard (:class:`ClusterDrift`) and returns the
    alerts of that boundary, in (cluster, kind) order; engagements reach it as :meth:`on_volume` counts and
    marks as :meth:`mark_reference`, in the order the shards saw them.
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self._init_clock(config or DriftConfig())
        cfg = self.config
        self._volume = VolumeDrift(cfg.bucket_ms, self._keep, cfg.min_total, cfg.min_support["volume"], cfg.z,
                                   cfg.cusum_recent_ms, cfg.cusum_min_effect["volume"])
        self._pooled: dict[int, PooledTransitionDrift] = {}  # per second cluster: its pooled test's CUSUM
        self._gates: dict[tuple[int, str], AlertGate] = {}  # transition and volume
        self._open: dict[tuple[int, str], Alert] = {}  # every kind's open alerts (the shards' as they report them)
        self._scores: dict[int, dict[str, float]] = {}
        self._last: dict[tuple[int, str], dict[str, Any]] = {}
        # Per cluster: the boundary at which its published status (rounded scores, open alerts) last changed, and
        # that status's references. A status is sent as of that boundary, so what the index ends with does not
        # depend on how many boundaries one call of the dataflow step covered.
        self._changed: dict[int, tuple[int, dict[str, Any], dict[str, float]]] = {}
        self._signature: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_evidence": None}

    def on_volume(self, cluster: int, ts_ms: int, n: int = 1) -> None:
        """``n`` engagements of ``cluster`` at ``ts_ms``."""
        self._volume.update(cluster, ts_ms, n)

    def mark_reference(self, ts_ms: int, reason: str) -> None:
        self._set_mark(ts_ms, reason)
        self._volume.mark_reference(self._window("volume", ts_ms))

    def _new_pooled(self) -> PooledTransitionDrift:
        cfg = self.config
        return PooledTransitionDrift(cfg.bucket_ms, self._keep, cfg.pooled_recent_ms, cfg.min_support["transition"])

    def evaluate(self, reports: list[dict[str, Any]]) -> list[Alert]:
        """The alerts of one boundary from every shard's report of it (in shard order)."""
        now = reports[0]["now"]
        if any(r["now"] != now for r in reports):
            raise ValueError(f"reports of different boundaries: {sorted({r['now'] for r in reports})}")
        self._evaluated = now
        if self._now is None or now > self._now:
            self._now = now
        due = {kind: self._due(kind, now) for kind in KINDS}
        results = {key: r for key, r in self._last.items() if not due[key[1]]}
        for kind in SHARD_KINDS:
            if due[kind]:
                for rep in reports:
                    results.update((key, r) for key, r in rep["results"].items() if key[1] == kind)
        if due["volume"]:
            win = self._window("volume", now)
            counts = self._volume.counts(win)
            self._volume.step_cusums(win, counts)
            self._volume.prune(now)
            for c in set(counts[0]) | set(counts[1]) | set(self._volume.cusums):
                if c is not None:
                    r = self._combine("volume", self._volume.evaluate(c, win, counts), self._volume.cusums.get(c))
                    if r is not None:
                        results[(c, "volume")] = r
        if due["transition"]:
            results.update(self._evaluate_transitions(now, reports))
        scores: dict[int, dict[str, float]] = {}
        for (c, kind), r in results.items():
            scores.setdefault(c, {})[kind] = r["score"] / self.config.warning[kind]
        self._scores = scores
        self._last = results
        self._evidence = None  # _last per cluster, built when status first asks
        events = [ev for rep in reports for ev in rep["gates"]]
        events += self._gate_updates(results, self._gates, self._open, COMBINED_KINDS, now)
        events.sort(key=lambda ev: _key_order(ev[0]))
        out = []
        for key, alert in events:
            if alert is None:
                self._open.pop(key, None)
            else:
                self._open[key] = alert
                out.append(alert)
        self._note_changes(now)
        return out

    def pass_boundary(self, now: int) -> None:
        """Pass boundary ``now`` without evaluating it (its evaluation failed): the last results stand."""
        self._evaluated = now
        if self._now is None or now > self._now:
            self._now = now

    def _hold_cusum(self, c: int, kind: str, until_ms: int) -> None:
        cu: Any = self._volume.cusums.get(c) if kind == "volume" else self._pooled.get(c)
        if cu is not None:
            cu.hold(until_ms)

    def _evaluate_transitions(self, now: int, reports: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
        """Both transition tests per cluster: the pair JSD (its busiest-scoring pair, from its shard) and the
        pooled CUSUM (staged by its shard, scored here against every other cluster)."""
        frozen = self._frozen(now) is not None
        best: dict[int, dict[str, Any]] = {}
        staged_by: dict[int, tuple] = {}
        for rep in reports:
            best.update(rep["best"] or {})
            staged_by.update(rep["staged"] or {})
        staged = {}
        for c in sorted(staged_by):  # cluster order: the same sums however the clusters are sharded
            o, e, st, last_ms, empty = staged_by[c]
            p = self._pooled.get(c)
            if p is None:
                p = self._pooled[c] = self._new_pooled()
            if empty and not frozen and p.statistic == 0.0:
                del self._pooled[c]
                continue
            p.receive(st, last_ms)
            staged[c] = (o, e)
        total_o: Counter = Counter()
        total_e: Counter = Counter()
        for o, e in staged.values():
            total_o.update(o)
            total_e.update(e)
        per_triple = {}
        for c, (o, e) in staged.items():  # each cluster against how successors moved in the others
            x = self._pooled[c].prepare(OtherClusters(total_o, total_e, o, e))
            if x is not None:
                per_triple[c] = x
        # A change most clusters share is no one cluster's transition drift: each cluster's ratio is taken
        # relative to the clusters' median when that is positive.
        offset = max(0.0, float(np.median(list(per_triple.values())))) if len(per_triple) >= 3 else 0.0
        pooled: dict[int, dict[str, Any]] = {}
        for c in staged:
            r = self._pooled[c].commit(offset)
            if r is not None:
                pooled[c] = {**r, "offset": offset}
        w, pw = self.config.warning["transition"], self.config.pooled_warning
        out = {}
        for c in set(best) | set(pooled):
            rj, rp = best.get(c), pooled.get(c)
            tests: dict[str, Any] = {}
            if rj is not None:
                tests["pair_jsd"] = {"statistic": rj["score"], "threshold": w, "effect_size": rj["js"],
                                     "effect_unit": "JSD bits", "support": rj["n_after"], "pair": list(rj["pair"])}
            if rp is not None:
                tests["pooled_cusum"] = {
                    "statistic": rp["score"], "threshold": pw, "effect_size": rp["effect_nats"],
                    "effect_unit": "nats per triple (mean log-likelihood ratio of the run)",
                    "support": rp["support"], "llr_per_triple": rp["llr_per_triple"],
                    "pairs_moved_most": [[[c1, c], v] for c1, v in rp["top_pairs"]]}
            r = self._decide("transition", rj, tests)
            if rp is not None and rp["top_pairs"] and (r["test"] == "pooled_cusum" or rj is None):
                r["pair"] = [rp["top_pairs"][0][0], c]  # the pair that moved most
            elif rj is None:
                r["pair"] = None
            out[(c, "transition")] = r
        return out

    def _note_changes(self, now: int) -> None:
        signatures: dict[int, Any] = {}
        for c, sc in self._scores.items():
            signatures[c] = [sorted((k, round(v, 3)) for k, v in sc.items())]
        for (c, kind), a in self._open.items():
            signatures.setdefault(c, [[]]).append((kind, a.alert_id, a.severity))
        references = None  # the same for every cluster at ``now``: worked out once, a copy each
        for c in set(signatures) | set(self._signature):
            sig = signatures.get(c)
            if sig is not None:
                sig = tuple(sorted(sig[1:])), tuple(sig[0])
            if sig != self._signature.get(c):
                if references is None:
                    references = {k: self.reference(k, now) for k in KINDS}
                self._changed[c] = (now, {k: dict(v) for k, v in references.items()}, dict(sig[1]) if sig else {})
                if sig is None:
                    self._signature.pop(c, None)
                else:
                    self._signature[c] = sig

    # -- reading -------------------------------------------------------------------------------------------

    def changed_at(self, cluster: int) -> int | None:
        """The boundary at which ``cluster``'s status (scores rounded to 3 places, open alerts) last changed."""
        ch = self._changed.get(cluster)
        return ch[0] if ch is not None else None

    def changed_clusters(self) -> list[int]:
        return sorted(self._changed)

    def scores(self) -> dict[int, dict[str, float]]:
        """Score per cluster per kind at the last evaluation, normalised: 1.0 = at the warning threshold."""
        return {c: dict(d) for c, d in self._scores.items()}

    def status(self, cluster: int, now_ms: int | None = None) -> dict[str, Any]:
        """One cluster: ``scores`` (normalised, as :meth:`scores`), ``evidence`` per kind at the last evaluation,
        ``alerts`` (the open ones, as dicts) and ``reference`` per kind ({"policy", "since_ms", ...}) at
        ``now_ms`` (default: the last boundary)."""
        open_alerts = [a.to_dict() for (c, _), a in self._open.items() if c == cluster]
        changed = self._changed.get(cluster)
        return {
            "cluster": cluster, "ts_ms": self._evaluated, "scores": dict(self._scores.get(cluster, {})),
            "evidence": dict(self._evidence_of().get(cluster, {})),
            "alerts": open_alerts,  # the open alerts (latest severity of each), as Alert.to_dict()
            "reference": {k: self.reference(k, now_ms) for k in KINDS},
            # as of the boundary where scores or alerts last changed (what the dataflow publishes)
            "changed_ms": changed[0] if changed is not None else None,
            "reference_at_change": changed[1] if changed is not None else None,
            "scores_at_change": changed[2] if changed is not None else None,  # rounded to 3 places
        }

    def _evidence_of(self) -> dict[int, dict[str, Any]]:
        """The last results per cluster (kind -> result, in the order of ``_last``): the dataflow asks the status
        of every changed cluster after an evaluation, and a scan of every result per cluster was quadratic."""
        ev = self.__dict__.get("_evidence")
        if ev is None:
            ev = self._evidence = {}
            for (c, k), v in self._last.items():
                row = ev.get(c)
                if row is None:
                    row = ev[c] = {}
                row[k] = v
        return ev


class DriftMonitor:
    """All four signals for every cluster, evaluated at each ``bucket_ms`` boundary of event time: one
    :class:`ClusterDrift` with every cluster and the :class:`DriftCombiner` of its reports (what a sharded job
    runs as several shards and one combiner, with the same results).

    Event time is the largest ``ts_ms`` seen (late events are counted in their own bucket). ``on_*`` and
    :meth:`advance` return the alerts raised by the evaluations their event time triggered.
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self.shard = ClusterDrift(self.config)
        self.combiner = DriftCombiner(self.config)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a monitor from before the split into a shard and a combiner (one object)."""
        if "shard" in state:
            self.__dict__.update(state)
            return
        self.__init__(state["config"])
        shard, comb = self.shard, self.combiner
        for part in (shard, comb):
            part._eval_slots = dict(state.get("_eval_slots", {}))
            part._now, part._evaluated, part._mark = state["_now"], state["_evaluated"], state["_mark"]
        shard._engagement, shard._content, shard._pairs = state["_engagement"], state["_content"], state["_pairs"]
        shard._pooled = dict(state.get("_pooled", {}))
        comb._pooled = dict(shard._pooled)  # the same objects: the shard uses their windows, the combiner their CUSUMs
        shard.updates = state["updates"]
        comb._volume = state["_volume"]
        gates = state.get("_gates", {})
        for key, g in gates.items():
            (shard if key[1] in SHARD_KINDS else comb)._gates[key] = g
        last = state.get("_last", {})
        shard._last, comb._last = {k: v for k, v in last.items() if k[1] in SHARD_KINDS}, dict(last)
        for key, a in state.get("_open", {}).items():
            if key in gates and gates[key].is_open:
                comb._open[key] = a
                if key[1] in SHARD_KINDS:
                    shard._open[key] = a
        comb._scores, comb._changed = state.get("_scores", {}), state.get("_changed", {})
        comb._signature = state.get("_signature", {})

    # -- inputs ------------------------------------------------------------------------------------------

    def _alerts(self, reports: list[dict[str, Any]]) -> list[Alert]:
        out: list[Alert] = []
        for rep in reports:
            out += self.combiner.evaluate([rep])
        return out

    def on_engagement(self, cluster: int, ts_ms: int, positive: bool) -> list[Alert]:
        out = self._alerts(self.shard.on_engagement(cluster, ts_ms, positive))
        self.combiner.on_volume(cluster, ts_ms)
        return out

    def on_engagements(self, cluster: int, ts_ms: int, n: int, positive: int) -> list[Alert]:
        """``n`` engagements of one cluster in the bucket of ``ts_ms`` (the latest of them), ``positive`` of them
        positive: the same as ``n`` calls of :meth:`on_engagement` within one bucket, at a fraction of the cost."""
        out = self._alerts(self.shard.on_engagements(cluster, ts_ms, n, positive))
        self.combiner.on_volume(cluster, ts_ms, n)
        return out

    def on_item(self, cluster: int, ts_ms: int, vector: np.ndarray, novel: bool) -> list[Alert]:
        """A content item of ``cluster``. Its timestamp is a publish time, which may run ahead of the engagements
        (a catalogue loaded in advance, scheduled content): it is counted in its own bucket but never moves event
        time; engagements and triples do. Returns no alerts (kept a list for a uniform interface)."""
        return self._alerts(self.shard.on_item(cluster, ts_ms, vector, novel))

    def on_triple(self, c1: int, c2: int, c_next: int, ts_ms: int) -> list[Alert]:
        return self._alerts(self.shard.on_triple(c1, c2, c_next, ts_ms))

    def advance(self, ts_ms: int) -> list[Alert]:
        """Move event time to ``ts_ms``; evaluate every cluster at each bucket boundary passed."""
        return self._alerts(self.shard.advance(ts_ms))

    def mark_reference(self, ts_ms: int, reason: str) -> None:
        """Compare everything against the state as of ``ts_ms`` from now on (e.g. reason ``"refresh"``)."""
        self.shard.mark_reference(ts_ms, reason)
        self.combiner.mark_reference(ts_ms, reason)

    # -- reading -------------------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int | None:
        """Event time the monitor has advanced to (None before the first ``advance``)."""
        return self.shard.now_ms

    @property
    def updates(self) -> int:
        return self.shard.updates

    def reference(self, kind: str, now_ms: int | None = None) -> dict[str, Any]:
        """{"policy", "since_ms"}: what ``kind`` is compared against at ``now_ms`` (default: now)."""
        return self.combiner.reference(kind, self.shard.now_ms if now_ms is None else now_ms)

    def scores(self) -> dict[int, dict[str, float]]:
        """Score per cluster per kind at the last evaluation, normalised: 1.0 = at the warning threshold."""
        return self.combiner.scores()

    def status(self, cluster: int) -> dict[str, Any]:
        """One cluster: ``scores`` (normalised, as :meth:`scores`), ``evidence`` per kind at the last evaluation,
        ``alerts`` (the open ones, as dicts) and ``reference`` per kind ({"policy", "since_ms", ...})."""
        return self.combiner.status(cluster, self.shard.now_ms)

    def changed_at(self, cluster: int) -> int | None:
        """The boundary at which ``cluster``'s status (scores rounded to 3 places, open alerts) last changed."""
        return self.combiner.changed_at(cluster)

    def changed_clusters(self) -> list[int]:
        return self.combiner.changed_clusters()

    def split(self, shards: int, shard_of: Callable[[int], int]) -> tuple[list[ClusterDrift], DriftCombiner]:
        """This monitor as ``shards`` shards (cluster ``c`` in shard ``shard_of(c)``) and their combiner."""
        comb = self.combiner
        for c, p in list(comb._pooled.items()):  # the combiner keeps only the CUSUMs of the pooled tests
            if p is self.shard._pooled.get(c):
                q = comb._pooled[c] = comb._new_pooled()
                q.load({**p.state(), "buckets": {}, "frozen": None})
        return self.shard.split(shards, shard_of), comb


    # -- recovery ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain picklable state (dicts, lists, numbers) for Bytewax recovery."""
        shard, comb = self.shard, self.combiner
        pooled = {}
        for c in list(shard._pooled) + [c for c in comb._pooled if c not in shard._pooled]:
            p, q = shard._pooled.get(c), comb._pooled.get(c)
            st = (p or q).state()
            if q is not None and q is not p:  # the CUSUM is the combiner's
                qs = q.state()
                st.update(s=qs["s"], run=qs["run"], held=qs["held"])
                if p is None:
                    st.update(buckets={}, frozen=None)
            pooled[c] = st
        gates = {**shard._gates, **comb._gates}
        return {
            "config": asdict(self.config),
            "engagement": {c: e.state() for c, e in shard._engagement.items()},
            "content": {c: x.state() for c, x in shard._content.items()},
            "pairs": {p: t.state() for p, t in shard._pairs.items()},
            "pooled": pooled,
            "volume": comb._volume.state(),
            "gates": {k: (gates[k].severity, gates[k].opened_ms) for k in sorted(gates, key=_key_order)},
            "open": {k: a.to_dict() for k, a in comb._open.items()},
            "now": shard._now, "evaluated": shard._evaluated, "mark": shard._mark, "updates": shard.updates,
            "changed": dict(comb._changed), "signature": dict(comb._signature),
        }

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> DriftMonitor:
        m = cls(DriftConfig(**snap["config"]))
        cfg, shard, comb = m.config, m.shard, m.combiner
        for c, st in snap["engagement"].items():
            shard._engagement[c] = shard._new_engagement().load(st)
        for c, st in snap["content"].items():
            shard._content[c] = shard._new_content().load(st)
        for p, st in snap["pairs"].items():
            shard._pairs[p] = TransitionDrift(cfg.bucket_ms, shard._keep, cfg.min_support["transition"],
                                              cfg.z).load(st)
        for c, st in snap.get("pooled", {}).items():  # absent in a snapshot from before the pooled test
            shard._pooled[c] = shard._new_pooled().load(st)
            comb._pooled[c] = comb._new_pooled().load({**st, "buckets": {}, "frozen": None})
        comb._volume.load(snap["volume"])
        for (c, kind), (sev, opened) in snap["gates"].items():
            w = cfg.warning[kind]
            g = AlertGate(w, cfg.critical[kind], cfg.rearm_fraction * w, cfg.cooldown(kind))
            g.severity, g.opened_ms = sev, opened
            (shard if kind in SHARD_KINDS else comb)._gates[(c, kind)] = g
        for k, d in snap["open"].items():
            if snap["gates"].get(k, (None,))[0] is None:  # closed (not kept by this version)
                continue
            a = Alert(d["alert_id"], d["cluster"], d["kind"], d["score"], d["threshold"], d["severity"],
                      d["window"]["start"], d["window"]["end"], d["evidence"], d["ts"], d["reference"])
            comb._open[k] = a
            if k[1] in SHARD_KINDS:
                shard._open[k] = a
        mark = tuple(snap["mark"]) if snap["mark"] is not None else None
        for part in (shard, comb):
            part._now, part._evaluated, part._mark = snap["now"], snap["evaluated"], mark
        shard.updates = snap["updates"]
        comb._changed, comb._signature = dict(snap.get("changed", {})), dict(snap.get("signature", {}))
        return m
