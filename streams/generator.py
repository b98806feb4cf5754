"""The workload generator (`driftrag generate`): a drifting synthetic engagement stream with its ground truth.

Model, in the brief's terms. Interest clusters are topics (:mod:`streams.vocabulary`); items are short texts
from their cluster's vocabulary with Zipf popularity (new items enter near the top). Users have Zipf activity,
latent interests (Dirichlet over clusters) and a position (h1, h2) = their last two distinct positive clusters.
Each engagement picks its cluster: trending traffic (volume drifts) first; else stay in h2 (consecutive
duplicates), go back to h1, draw from the user's interests, or draw c_next from the pair's sparse successor
distribution P[(h1, h2)] (2-4 strong successors plus a small floor, never h1 or h2). The cluster's
positive-engagement rate decides the action; a positive one moves the user to (h2, c), exactly the brief's
transition rule, so triples mined from positive engagements follow P.

Scenario "drifting" plants, after a stationary warm-up (first 30% of the time), one abrupt and one gradual drift
of each kind: transition (a busy pair gets a new top successor), engagement (a busy cluster's positive rate moves
strongly), content (a cluster's new items come from its shifted vocabulary), volume (abrupt: a reserved cluster
with no items or traffic appears trending; gradual: a quiet cluster's traffic grows several-fold). Gradual drifts
ramp linearly over a window. Scenario "stationary" plants none and reserves no cluster. Scenario "shifting" is
the paper's broad drift: no single planted change, but at 35% and 65% of the time span a fresh successor
distribution for 60% of all pairs (ramped over a day), so most of what users do next changes twice. Scenario
"slow" is drift where long memory is right: from 30% of the span, 30% of the pairs move to a fresh successor
distribution, ramped linearly over 60% of the span (run it long and sparse, e.g. ``--days 60``). Scenario
"source" is "drifting" with *source* transition drifts: every pair into one cluster (c1, X) gets new successors at
once (a common new top successor), each pair carrying little traffic. ``ramp_days`` sets the gradual drifts' ramp.

Scenario "retail" is shaped like a commerce or media purchase log instead: no planted drift, every engagement is
a purchase (RETAIL_ACTION: the contract has no purchase action), times have minute resolution and come in
baskets (a customer's several items at one minute, geometric size), customers' activity is much more
heavy-tailed (Zipf RETAIL_USER_ZIPF: a few buy thousands of items, most a handful), volume follows the day, the
week (weekend busier) and the season (a year-end peak) in absolute calendar time, the catalogue keeps growing
(RETAIL_WEEKLY_GROWTH) and an item is first seen when first bought: its content event is published at that
minute, just before that purchase; items nobody buys are never published. Clusters, successors, interests and
item texts are the same model as the other scenarios', so the ground truth reads the same.

Everything is a function of the seed (numpy PCG64 streams spawned from it): same seed, same bytes.

>>> cfg = GeneratorConfig(seed=3, events=400, n_users=30, items_per_cluster=4, days=1.0, bad_fraction=0.1)
>>> msgs = list(WorkloadGenerator(cfg).messages())
>>> sum(m.topic == "engagements" for m in msgs), msgs == list(WorkloadGenerator(cfg).messages())
(400, True)
>>> sorted({d["mode"] for d in WorkloadGenerator(cfg).ground_truth()["drifts"] if d["kind"] == "volume"})
['abrupt', 'gradual']
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams.contract import ACTIONS, parse_ts
from streams.malformed import BAD_KINDS, bad_content, bad_engagement, content_kind, engagement_kind
from streams.vocabulary import TOPICS, Topic, item_tags, item_text

__all__ = [
    "BAD_KINDS", "GeneratedMessage", "GeneratorConfig", "WorkloadGenerator", "add_arguments", "produce_to_kafka",
    "run", "write_files",
]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
SCENARIOS = ("drifting", "stationary", "shifting", "retail", "slow", "source")
SHIFTS = (0.35, 0.65)  # "shifting": when (share of the span) a broad successor shift starts
SHIFT_SHARE = 0.6  # and the share of pairs it redraws
SLOW_START, SLOW_RAMP, SLOW_SHARE = 0.3, 0.6, 0.3  # "slow": one redraw of 30% of the pairs, ramped over 60% of the span

# Behaviour constants: documented in the ground truth's "model" section.
P_STAY = 0.25  # next engagement in the same cluster (consecutive duplicates)
P_BACK = 0.08  # back to h1 (no triple: the brief's rule skips c == h1)
INTEREST_WEIGHT = 0.15  # otherwise: the user's own interests instead of the pair's successors
SUCCESSOR_FLOOR = 0.08  # probability mass spread over every allowed successor
USER_ZIPF, ITEM_ZIPF, CLUSTER_ZIPF = 0.7, 1.0, 0.9
RFC3339_SHARE = 0.10  # engagements whose ts is an RFC 3339 string instead of epoch ms
DIURNAL_AMPLITUDE = 0.35
_DIURNAL_PHASE = 2 * np.pi * 20 / 24 - np.pi / 2  # the daily cycle peaks at 20:00
WARMUP = 0.30
TREND_SHARE_NEW, TREND_SHARE_GROWTH = 0.06, 0.12  # share of all engagements redirected by the volume drifts
POSITIVE_ACTIONS = (("like", 0.30), ("share", 0.08), ("comment", 0.10), ("save", 0.07), ("view", 0.45))
NEGATIVE_ACTIONS = (("skip", 0.50), ("dislike", 0.10), ("view", 0.40))
# (kind, mode, start as a share of the time span). Transitions first: they need the most data after them.
SCHEDULE = (
    ("transition", "abrupt", WARMUP), ("engagement", "abrupt", 0.37), ("content", "abrupt", 0.43),
    ("transition", "gradual", 0.50), ("engagement", "gradual", 0.57), ("content", "gradual", 0.63),
    ("volume", "gradual", 0.70), ("volume", "abrupt", 0.80),
)
_CHUNK = 8192
_TOP_WEIGHTS = (0.7, 0.2, 0.1)  # strong successors of a drifted pair, before and after
_APPEND = 1 << 30  # catalogue items keep their planned order; new ones enter near the top
_MIN_CLUSTERS = 6
# "retail": a purchase log (see the module docstring); reported in the ground truth's "retail" section.
RETAIL_ACTION = "save"  # every purchase: positive without a dwell time (the contract has no "purchase")
RETAIL_USER_ZIPF = 1.1  # customers' activity: far heavier-tailed than USER_ZIPF
RETAIL_BASKET_MEAN, RETAIL_BASKET_MAX = 2.5, 40  # items per basket (one customer, one minute): geometric, capped
RETAIL_WEEKDAY = (0.95, 0.9, 0.9, 0.95, 1.05, 1.45, 1.35)  # volume factor Monday..Sunday (UTC)
RETAIL_SEASON_PEAK, RETAIL_SEASON_DAY, RETAIL_SEASON_WIDTH = 1.5, 351, 15.0  # +150% at Dec 18 (sigma 15 days)
RETAIL_WEEKLY_GROWTH = 0.5  # new items per cluster and week, as a share of items_per_cluster
MINUTE_MS = 60_000
_YEAR_DAYS = 365.2425


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    scenario: str = "drifting"
    n_clusters: int = 16
    n_users: int = 2000
    items_per_cluster: int = 60
    events: int = 100_000  # engagement messages, good and bad
    days: float = 14.0
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    bad_fraction: float = 0.0
    text_fraction: float = 0.02  # share of engagements carrying the item text inline
    positive_dwell_ms: int = 10_000
    ramp_days: float = 0.0  # gradual drifts' ramp ("drifting", "source"); 0: min(1 day, 7% of the span)

    def __post_init__(self) -> None:
        for name in ("seed", "n_clusters", "n_users", "items_per_cluster", "events", "start_ms",
                     "positive_dwell_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
        for name in ("days", "bad_fraction", "text_fraction", "ramp_days"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {self.scenario!r}")
        checks = {
            "seed": self.seed >= 0,
            "n_clusters": _MIN_CLUSTERS <= self.n_clusters <= len(TOPICS),
            "n_users": self.n_users >= 1,
            "items_per_cluster": self.items_per_cluster >= 1,
            "events": self.events >= 0,
            "days": 0 < self.days <= 3650,
            "start_ms": self.start_ms >= 0 and self.start_ms + self.days * DAY_MS < 7_000_000_000_000,
            "bad_fraction": 0.0 <= self.bad_fraction <= 1.0,
            "text_fraction": 0.0 <= self.text_fraction <= 1.0,
            "positive_dwell_ms": self.positive_dwell_ms >= 0,
            "ramp_days": 0.0 <= self.ramp_days <= self.days,
        }
        for name, ok in checks.items():
            if not ok:
                hint = f" (between {_MIN_CLUSTERS} and {len(TOPICS)})" if name == "n_clusters" else ""
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}{hint}")

    @property
    def span_ms(self) -> int:
        return int(self.days * DAY_MS)


@dataclass(frozen=True)
class GeneratedMessage:
    topic: str  # logical topic: "engagements" | "items"
    key: bytes | None
    value: bytes | None
    ts_ms: int
    bad_kind: str | None = None


@dataclass(frozen=True)
class Drift:
    """One planted drift; ``progress(t)`` is 0 before it, 1 after it, linear in between (gradual)."""

    id: str
    kind: str
    mode: str
    start_ms: int
    end_ms: int
    cluster: int
    pair: tuple[int, int] | None
    magnitude: float
    before: dict[str, Any]
    after: dict[str, Any]

    def progress(self, ts: np.ndarray) -> np.ndarray:
        if self.end_ms <= self.start_ms:
            return (ts >= self.start_ms).astype(float)
        return np.clip((ts - self.start_ms) / (self.end_ms - self.start_ms), 0.0, 1.0)


@dataclass(frozen=True)
class PlannedItem:
    ts_ms: int
    item_id: str
    cluster: int
    text: str
    tags: tuple[str, ...]
    shifted: bool  # written from the cluster's shifted vocabulary (content drift)
    rank: int  # popularity rank it enters at (new items are fresh, hence popular)
    bad_kind: str | None  # a malformed copy of its content event follows it


# ------------------------------------------------------------------------------------------------ the world


def _sparse_dist(k: int, allowed: list[int], strong: dict[int, float]) -> np.ndarray:
    """SUCCESSOR_FLOOR spread over ``allowed``, the rest over ``strong`` in proportion to its weights."""
    p = np.zeros(k)
    p[allowed] = SUCCESSOR_FLOOR / len(allowed)
    total = sum(strong.values())
    for c, w in strong.items():
        p[c] += (1 - SUCCESSOR_FLOOR) * w / total
    return p


def _allowed(k: int, pair: tuple[int, int], banned: int | None) -> list[int]:
    return [c for c in range(k) if c not in pair and c != banned]


def successor_matrix(rng: np.random.Generator, popularity: np.ndarray, banned: int | None) -> np.ndarray:
    """P[h1, h2] for every ordered pair: 2-4 strong successors + floor; never h1, h2 or ``banned``.

    Strong successors are drawn in proportion to cluster popularity, so popular clusters chain into each
    other and some pairs are much busier than others (as on a real platform).
    """
    k = len(popularity)
    succ = np.zeros((k, k, k))
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            allowed = _allowed(k, (i, j), banned)
            n = min(int(rng.integers(2, 5)), len(allowed))
            pop = popularity[allowed] / popularity[allowed].sum()
            strong = rng.choice(allowed, size=n, replace=False, p=pop)
            weights = rng.dirichlet(np.full(n, 1.5))
            succ[i, j] = _sparse_dist(k, allowed, dict(zip(strong.tolist(), weights.tolist(), strict=True)))
    return succ


def expected_traffic(succ: np.ndarray, interest: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(triples per pair, engagement share per cluster) of the stationary population, approximately.

    Power iteration over the chain of positive moves (h1, h2) -> (h2, c) with the mean user's interests; used
    only to choose busy pairs and clusters for the drifts, so that their effect is measurable.
    """
    k = len(rates)
    eye = np.eye(k)
    mix = (1 - P_STAY - P_BACK) * ((1 - INTEREST_WEIGHT) * succ + INTEREST_WEIGHT * interest)
    draw = mix + P_BACK * eye[:, None, :]  # [i, j, c]: chance an engagement from (i, j) is in c (besides stay)
    move = draw * rates * (1 - eye[None, :, :])  # positive and c != h2
    out = move.sum(axis=2, keepdims=True)
    trans = np.divide(move, out, out=np.zeros_like(move), where=out > 0)
    live = interest > 0
    pi = np.outer(live, live) * (1 - eye)
    pi /= pi.sum()
    for _ in range(200):
        pi = np.einsum("ij,ijc->jc", pi, trans)
    novel = 1 - trans[np.arange(k)[:, None], np.arange(k)[None, :], np.arange(k)[:, None]]  # not back to h1
    triples = pi * novel
    events = pi / np.maximum(out[..., 0], 1e-12)  # expected engagements spent in each state
    share = np.einsum("ij,ijc->c", events, draw) + P_STAY * events.sum(axis=0)
    return triples, share / share.sum()


def _pick(ranked: list[int], *avoid: set[int]) -> int:
    """First of ``ranked`` outside all ``avoid`` sets, relaxing the later sets when none is left."""
    for n in range(len(avoid), -1, -1):
        banned = set().union(*avoid[:n])
        for c in ranked:
            if c not in banned:
                return c
    raise ValueError("no cluster to pick")


@dataclass
class World:
    """Everything fixed before the first event: clusters, users, successors, rates, drifts, items."""

    config: GeneratorConfig
    topics: list[Topic]
    trending: int | None
    succ: np.ndarray
    rates: np.ndarray
    interests: np.ndarray
    user_ids: list[str]
    user_cum: list[float]
    init_state: list[tuple[int, int]]
    drifts: list[Drift]
    transition_after: dict[tuple[int, int], list[tuple[int, np.ndarray]]]  # pair -> [(drift index, after)]
    engagement_drift: dict[int, tuple[int, float, float]]  # cluster -> (drift index, before, after)
    trends: list[tuple[int, int, float]]  # (drift index, cluster, share of all engagements)
    items: list[PlannedItem]


def build_world(cfg: GeneratorConfig, rngs: dict[str, np.random.Generator]) -> World:
    rng, k = rngs["world"], cfg.n_clusters
    topics = [TOPICS[i] for i in rng.permutation(len(TOPICS))[:k]]
    trending = int(rng.integers(k)) if cfg.scenario in ("drifting", "source") else None
    popularity = 1.0 / (1.0 + rng.permutation(k)) ** CLUSTER_ZIPF
    succ = successor_matrix(rng, popularity, trending)
    rates = rng.uniform(0.40, 0.65, size=k)
    if cfg.scenario == "retail":  # purchases only: every engagement is positive
        rates[:] = 1.0
    live = np.ones(k)
    if trending is not None:
        live[trending] = 0.0
        rates[trending] = 0.65
    # Interests: concentrated on a few clusters per user, popular clusters more often.
    # (+1e-9: small Dirichlet parameters can underflow to all-zero rows.)
    interests = (rng.dirichlet(0.5 * k * popularity / popularity.sum(), size=cfg.n_users) + 1e-9) * live
    interests /= interests.sum(axis=1, keepdims=True)
    # Users: Zipf activity over a shuffled id space (ids do not reveal activity rank).
    perm = rng.permutation(cfg.n_users)
    user_ids = [f"u{p:06d}" for p in perm.tolist()]
    user_cum = list(accumulate((1.0 / np.arange(1, cfg.n_users + 1) ** _user_zipf(cfg)).tolist()))
    init_state = _initial_state(rng, interests)
    world = World(cfg, topics, trending, succ, rates, interests, user_ids, user_cum, init_state, [], {}, {}, [],
                  [])
    if cfg.scenario in ("drifting", "source"):
        _plant_drifts(world, rng)
    elif cfg.scenario == "shifting":
        _plant_shifts(world, rng, popularity)
    elif cfg.scenario == "slow":
        _plant_slow(world, rng, popularity)
    world.items = plan_items(cfg, world, rngs["items"], rngs["bad_items"])
    return world


def _user_zipf(cfg: GeneratorConfig) -> float:
    return RETAIL_USER_ZIPF if cfg.scenario == "retail" else USER_ZIPF


def _new_items_per_cluster(cfg: GeneratorConfig) -> int:
    """Items each cluster gains over the span: a fifth of the initial catalogue; in "retail", a growing one."""
    if cfg.scenario == "retail":
        return max(1, round(cfg.items_per_cluster * RETAIL_WEEKLY_GROWTH * cfg.days / 7))
    return max(1, cfg.items_per_cluster // 5)


def _initial_state(rng: np.random.Generator, interests: np.ndarray) -> list[tuple[int, int]]:
    """(h1, h2) per user: two distinct clusters drawn from their interests."""
    u = rng.random((len(interests), 2))
    cum = np.cumsum(interests, axis=1)
    h2 = np.minimum((cum < u[:, :1] * cum[:, -1:]).sum(axis=1), interests.shape[1] - 1)
    rest = interests.copy()
    rest[np.arange(len(rest)), h2] = 0.0
    cum = np.cumsum(rest, axis=1)
    h1 = np.minimum((cum < u[:, 1:] * cum[:, -1:]).sum(axis=1), interests.shape[1] - 1)
    h1 = np.where(h1 == h2, (h2 + 1) % interests.shape[1], h1)  # only for single-interest users
    return list(zip(h1.tolist(), h2.tolist(), strict=True))


def _choose_transition(w: World, rng: np.random.Generator, used: set[int], new_tops: set[int],
                       ibar: np.ndarray) -> tuple[tuple[int, int], np.ndarray, np.ndarray, int, list[int], list[int]]:
    """The pair to drift and its change: among the busiest pairs, the one busiest both before and after.

    Returns (pair, before, after, new top successor, other new strong successors, old strong successors).
    The before distribution is sharpened to the pair's strong successors with _TOP_WEIGHTS, so that both the
    old and the new top successor stand out in the data.
    """
    k, T = w.config.n_clusters, w.trending
    current = w.succ.copy()
    for p, changes in w.transition_after.items():  # earlier drifts have happened by now
        current[p] = changes[-1][1]
    traffic, _ = expected_traffic(current, ibar, w.rates)
    order = np.argsort(-traffic, axis=None, kind="stable")
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, traffic.shape), strict=True)
             if i != j and T not in (i, j) and (i, j) not in w.transition_after and not {i, j} & new_tops]
    best: tuple[float, Any] | None = None
    for pair in pairs[:6]:
        allowed = _allowed(k, pair, T)
        floor = SUCCESSOR_FLOOR / len(allowed) + 1e-12
        strong = [int(c) for c in np.argsort(-w.succ[pair], kind="stable") if w.succ[pair][c] > floor]
        strong = strong[: min(3, len(allowed) - 1)]  # leave room for a new top successor
        before = _sparse_dist(k, allowed, dict(zip(strong, _TOP_WEIGHTS, strict=False)))
        fresh = [int(c) for c in rng.permutation([c for c in allowed if c not in strong])]
        top = _pick(sorted(fresh, key=lambda c: -w.rates[c]), used)  # an engaging cluster: visible in triples
        others = [c for c in fresh if c != top][:2]
        after = _sparse_dist(k, allowed, dict(zip([top, *others], _TOP_WEIGHTS, strict=False)))
        trial = current.copy()
        trial[pair] = after
        score = min(traffic[pair], expected_traffic(trial, ibar, w.rates)[0][pair])
        if best is None or score > best[0]:
            best = (score, (pair, before, after, top, others, strong))
    assert best is not None
    return best[1]


def _choose_source(w: World, rng: np.random.Generator, used: set[int], new_tops: set[int], ibar: np.ndarray
                   ) -> tuple[int, int, dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]]:
    """Scenario "source": a cluster X of middling inflow (a quarter down the ranking, so that each pair into it
    carries little traffic) and, for every pair (c1, X), its change to a new distribution led by one common new
    top successor. Returns (X, the new top, {pair: (before, after)})."""
    k, T = w.config.n_clusters, w.trending
    current = w.succ.copy()
    for p, changes in w.transition_after.items():
        current[p] = changes[-1][1]
    traffic, _ = expected_traffic(current, ibar, w.rates)
    ranked = [int(c) for c in np.argsort(-traffic.sum(axis=0), kind="stable") if c != T and c not in new_tops]
    x = _pick(ranked[len(ranked) // 4:] + ranked[: len(ranked) // 4], used)
    fresh = [int(c) for c in rng.permutation(k) if c not in (x, T)]
    top = _pick(sorted(fresh, key=lambda c: -w.rates[c]), used)
    out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for i in range(k):
        if i in (x, T):
            continue
        pair = (i, x)
        allowed = _allowed(k, pair, T)
        floor = SUCCESSOR_FLOOR / len(allowed) + 1e-12
        old = {int(c) for c in np.flatnonzero(current[pair] > floor)}
        new = [c for c in [top, *(f for f in fresh if f != top)] if c in allowed and (c == top or c not in old)][:3]
        out[pair] = (current[pair], _sparse_dist(k, allowed, dict(zip(new, _TOP_WEIGHTS, strict=False))))
    return x, top, out


def _plant_drifts(w: World, rng: np.random.Generator) -> None:
    cfg, span = w.config, w.config.span_ms
    window = int(cfg.ramp_days * DAY_MS) if cfg.ramp_days else int(min(DAY_MS, 0.07 * span))
    ibar = w.interests.mean(axis=0)
    _, share = expected_traffic(w.succ, ibar, w.rates)
    T = w.trending
    assert T is not None
    busy = [int(c) for c in np.argsort(-share, kind="stable") if c != T]
    used: set[int] = {T}
    tops: set[int] = set()  # strong successors of the drifted pairs: keep other drifts off them
    new_tops: set[int] = set()
    drifts: list[Drift] = []

    def when(frac: float, mode: str) -> tuple[int, int]:
        start = cfg.start_ms + int((frac + rng.uniform(-0.01, 0.01)) * span)
        return start, start + (window if mode == "gradual" else 0)

    for n, (kind, mode, frac) in enumerate(SCHEDULE):
        start, end = when(frac, mode)
        did = f"d{n + 1}-{kind}-{mode}"
        if kind == "transition" and cfg.scenario == "source":
            x, top, changes = _choose_source(w, rng, used, new_tops, ibar)
            used |= {x, top}
            new_tops.add(top)
            tops.add(top)
            for pair, (_, after) in changes.items():
                w.transition_after[pair] = [(n, after)]
            mag = float(np.mean([0.5 * np.abs(a - b).sum() for b, a in changes.values()]))
            drifts.append(Drift(did, kind, mode, start, end, x, None, mag, {"pairs": len(changes), "source": x},
                                {"pairs": len(changes), "top_successor": top}))
        elif kind == "transition":
            pair, before, after, top, others, strong = _choose_transition(w, rng, used, new_tops, ibar)
            w.succ[pair] = before
            used |= {*pair, top}
            new_tops.add(top)
            tops |= {top, *others, *strong[:2]}
            w.transition_after[pair] = [(n, after)]
            mag = 0.5 * float(np.abs(after - before).sum())
            drifts.append(Drift(did, kind, mode, start, end, pair[1], pair, mag,
                                {"top_successor": int(np.argmax(before)), "dist": _dist_json(before)},
                                {"top_successor": top, "dist": _dist_json(after)}))
        elif kind == "engagement":
            c = _pick(busy, used, tops)
            r0, r1 = (0.60, 0.25) if mode == "abrupt" else (0.30, 0.65)
            w.rates[c] = r0
            w.engagement_drift[c] = (n, r0, r1)
            used.add(c)
            drifts.append(Drift(did, kind, mode, start, end, c, None, abs(r1 - r0),
                                {"positive_rate": r0}, {"positive_rate": r1}))
        elif kind == "content":
            c = _pick(busy, used)
            used.add(c)
            t = w.topics[c]
            drifts.append(Drift(did, kind, mode, start, end, c, None, 1.0,
                                {"vocabulary": t.name, "words": list(t.words[:8])},
                                {"vocabulary": t.shifted_name, "words": list(t.shifted_words[:8])}))
        elif mode == "gradual":  # volume: a quiet existing cluster grows
            c = _pick(busy[::-1], used, tops)
            used.add(c)
            w.trends.append((n, c, TREND_SHARE_GROWTH))
            drifts.append(Drift(did, kind, mode, start, end, c, None, TREND_SHARE_GROWTH,
                                {"extra_share": 0.0, "expected_share": round(float(share[c]), 6)},
                                {"extra_share": TREND_SHARE_GROWTH}))
        else:  # volume, abrupt: the reserved cluster appears, trending
            w.trends.append((n, T, TREND_SHARE_NEW))
            drifts.append(Drift(did, kind, mode, start, end, T, None, TREND_SHARE_NEW,
                                {"extra_share": 0.0, "items": 0}, {"extra_share": TREND_SHARE_NEW}))
    w.drifts = drifts
    for d in drifts:
        log.debug("planted %s: cluster %s pair %s at %d..%d", d.id, d.cluster, d.pair, d.start_ms, d.end_ms)


def _plant_shifts(w: World, rng: np.random.Generator, popularity: np.ndarray) -> None:
    """The "shifting" scenario: at each of SHIFTS, SHIFT_SHARE of the pairs get a freshly drawn successor
    distribution, ramped linearly over a day (one Drift per shift; the pairs are in ground_truth's changes)."""
    cfg, k = w.config, w.config.n_clusters
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    for n, frac in enumerate(SHIFTS):
        fresh = successor_matrix(rng, popularity, None)
        chosen = sorted(pairs[int(x)] for x in rng.choice(len(pairs), size=int(SHIFT_SHARE * len(pairs)),
                                                             replace=False))
        tv = []
        for pair in chosen:
            before = w.transition_after[pair][-1][1] if pair in w.transition_after else w.succ[pair]
            w.transition_after.setdefault(pair, []).append((n, fresh[pair]))
            tv.append(0.5 * float(np.abs(fresh[pair] - before).sum()))
        start = cfg.start_ms + int(frac * cfg.span_ms)
        w.drifts.append(Drift(f"s{n + 1}-transition-broad", "transition", "gradual", start,
                              start + int(min(DAY_MS, 0.07 * cfg.span_ms)), -1, None, float(np.mean(tv)),
                              {"pairs": len(chosen)}, {"pairs": len(chosen), "share": SHIFT_SHARE}))


def _plant_slow(w: World, rng: np.random.Generator, popularity: np.ndarray) -> None:
    """The "slow" scenario: from SLOW_START of the span, SLOW_SHARE of the pairs move to a freshly drawn successor
    distribution, ramped linearly over SLOW_RAMP of the span (one Drift; the pairs are in ground_truth's changes)."""
    cfg, k = w.config, w.config.n_clusters
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    fresh = successor_matrix(rng, popularity, None)
    chosen = sorted(pairs[int(x)] for x in rng.choice(len(pairs), size=int(SLOW_SHARE * len(pairs)), replace=False))
    tv = []
    for pair in chosen:
        w.transition_after[pair] = [(0, fresh[pair])]
        tv.append(0.5 * float(np.abs(fresh[pair] - w.succ[pair]).sum()))
    start = cfg.start_ms + int(SLOW_START * cfg.span_ms)
    w.drifts.append(Drift("s1-transition-slow", "transition", "gradual", start, start + int(SLOW_RAMP * cfg.span_ms),
                          -1, None, float(np.mean(tv)), {"pairs": len(chosen)},
                          {"pairs": len(chosen), "share": SLOW_SHARE}))


def _dist_json(p: np.ndarray) -> dict[str, float]:
    return {str(c): round(float(x), 6) for c, x in enumerate(p.tolist()) if x > 0}


def plan_items(cfg: GeneratorConfig, w: World, rng: np.random.Generator,
               bad_rng: np.random.Generator) -> list[PlannedItem]:
    """Catalogue at start, regular new items over time, content-drift and trending items; sorted by time.

    An item's ts_ms is when it becomes available; in "retail" its content event waits for its first purchase.
    """
    k, span, start = cfg.n_clusters, cfg.span_ms, cfg.start_ms
    content = {d.cluster: d for d in w.drifts if d.kind == "content"}
    new_cluster = next((d for d in w.drifts if d.kind == "volume" and d.mode == "abrupt"), None)
    plan: list[tuple[int, int]] = []  # (ts, cluster)
    for c in range(k):
        if c == w.trending:
            continue
        plan += [(start, c)] * cfg.items_per_cluster
        n_new = _new_items_per_cluster(cfg)
        plan += [(start + 1 + int(x), c) for x in rng.uniform(0, span - 1, n_new).tolist()]
    half = max(2, cfg.items_per_cluster // 2)
    for c, d in sorted(content.items()):  # a burst of new content carries the shift
        window = max(d.end_ms - d.start_ms, int(min(DAY_MS, 0.07 * span)))
        plan += [(d.start_ms + int(x), c) for x in rng.uniform(0, 2 * window, half).tolist()]
    if new_cluster is not None:
        window = int(min(DAY_MS, 0.07 * span))
        plan += [(new_cluster.start_ms, new_cluster.cluster)] * half
        plan += [(new_cluster.start_ms + int(x), new_cluster.cluster) for x in rng.uniform(0, window, half).tolist()]
    ids = rng.permutation(len(plan)).tolist()  # opaque ids: no cluster or age in them
    items = []
    for (ts, c), n in zip(plan, ids, strict=True):
        d = content.get(c)
        p_shift = 0.0 if d is None else float(d.progress(np.array(ts)))
        shifted = bool(rng.random() < p_shift) if 0 < p_shift < 1 else p_shift >= 1
        topic = w.topics[c]
        text = item_text(rng, topic.shifted_words if shifted else topic.words)
        tags = tuple(item_tags(rng, topic, shifted))
        rank = _APPEND if ts == start else int(rng.integers(0, 5))
        u_bad, u_kind = bad_rng.random(2).tolist()
        bad = content_kind(u_kind) if u_bad < cfg.bad_fraction / 2 else None
        items.append(PlannedItem(ts, f"it{n:06d}", c, text, tags, shifted, rank, bad))
    items.sort(key=lambda it: (it.ts_ms, it.item_id))
    return items


def _grid(cfg: GeneratorConfig) -> np.ndarray:
    """Offsets from start_ms, one a minute (minute resolution is plenty for an intensity)."""
    return np.linspace(0.0, cfg.span_ms, max(2, cfg.span_ms // MINUTE_MS + 1))


def _warp_times(rng: np.random.Generator, n: int, grid: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """n sorted times (offsets on ``grid``) of a Poisson process whose integrated intensity on ``grid`` is ``warped``.

    Uniform order statistics in the time-warped axis Lambda(t) = integral of the intensity, mapped back.
    """
    gaps = rng.exponential(size=n + 1)
    pos = np.cumsum(gaps)[:n] / gaps.sum() * warped[-1]
    return np.interp(pos, warped, grid)


def event_times(rng: np.random.Generator, cfg: GeneratorConfig) -> np.ndarray:
    """Epoch-ms times of the engagement slots: a Poisson process with a mild diurnal cycle (peak ~20:00 UTC)."""
    grid = _grid(cfg)
    phi = _DIURNAL_PHASE
    warped = grid + DIURNAL_AMPLITUDE * DAY_MS / (2 * np.pi) * (np.cos(phi) - np.cos(2 * np.pi * grid / DAY_MS - phi))
    return cfg.start_ms + np.floor(_warp_times(rng, cfg.events, grid, warped)).astype(np.int64)


def retail_intensity(ms: np.ndarray) -> np.ndarray:
    """Relative purchase volume at epoch-ms times: daily cycle x day of the week x year-end season (all UTC).

    >>> dec, octo, sat = retail_intensity(np.array([1765828800000, 1760385600000, 1760817600000]))
    >>> round(float(dec / octo), 2), round(float(sat / octo), 2)  # Mon Dec 15 and Sat Oct 18 over Mon Oct 13, 20:00
    (2.49, 1.53)
    """
    ms = np.asarray(ms, dtype=float)
    days = ms / DAY_MS
    daily = 1 + DIURNAL_AMPLITUDE * np.sin(2 * np.pi * (days % 1.0) - _DIURNAL_PHASE)
    weekly = np.asarray(RETAIL_WEEKDAY)[(np.floor(days).astype(np.int64) + 3) % 7]  # 1970-01-01 was a Thursday
    phase = (days - RETAIL_SEASON_DAY) % _YEAR_DAYS
    to_peak = np.minimum(phase, _YEAR_DAYS - phase)
    season = 1 + RETAIL_SEASON_PEAK * np.exp(-0.5 * (to_peak / RETAIL_SEASON_WIDTH) ** 2)
    return daily * weekly * season


def retail_times(rng: np.random.Generator, cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(epoch-ms time, basket uniform) per engagement slot of the "retail" scenario.

    Baskets of geometric size (RETAIL_BASKET_MEAN, at most RETAIL_BASKET_MAX) arrive as a Poisson process of
    intensity retail_intensity; each basket's slots share its minute and one uniform, which picks its customer.
    """
    n = cfg.events
    sizes = np.minimum(rng.geometric(1 / RETAIL_BASKET_MEAN, size=max(n, 1)), RETAIL_BASKET_MAX)
    n_baskets = int(np.searchsorted(np.cumsum(sizes), n)) + 1 if n else 0
    basket = np.repeat(np.arange(n_baskets), sizes[:n_baskets])[:n]
    grid = _grid(cfg)
    rate = retail_intensity(cfg.start_ms + grid)
    warped = np.concatenate(([0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))))
    t = cfg.start_ms + np.floor(_warp_times(rng, n_baskets, grid, warped)).astype(np.int64)
    first = -(-cfg.start_ms // MINUTE_MS) * MINUTE_MS
    t = np.maximum(t - t % MINUTE_MS, first)
    return t[basket], rng.random(n_baskets)[basket]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(ms: int) -> str:
    """RFC 3339 UTC with milliseconds.

    >>> rfc3339(1767225601234)
    '2026-01-01T00:00:01.234Z'
    """
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _ts_value(ms: int, as_string: bool) -> int | str:
    if as_string:
        s = rfc3339(ms)
        if parse_ts(s) == ms:  # the float inside datetime.timestamp() can lose a ms: keep it exact instead
            return s
    return ms


def _cum(p: list[float]) -> list[float]:
    return list(accumulate(p))


_POS_NAMES, _POS_CUM = [a for a, _ in POSITIVE_ACTIONS], _cum([p for _, p in POSITIVE_ACTIONS])
_NEG_NAMES, _NEG_CUM = [a for a, _ in NEGATIVE_ACTIONS], _cum([p for _, p in NEGATIVE_ACTIONS])
_ACTION_LIST = sorted(ACTIONS)


class WorkloadGenerator:
    """Messages of one seeded workload, lazily, in event-time order (items first on ties)."""

    _STREAMS = ("world", "items", "bad_items", "clock", "sim", "bad")

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        children = np.random.SeedSequence(config.seed).spawn(len(self._STREAMS))
        self._seeds = dict(zip(self._STREAMS, children, strict=True))
        self.world = build_world(config, {n: self._rng(n) for n in ("world", "items", "bad_items")})
        self._counts: dict[str, Any] | None = None
        self._first_seen: dict[str, int] = {}

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self._seeds[name]))

    def messages(self) -> Iterator[GeneratedMessage]:
        cfg, w = self.config, self.world
        sim = _Simulation(w)
        counts: Counter[str] = Counter()
        bad_rng = self._rng("bad")
        baskets = None
        if cfg.scenario == "retail":
            times, baskets = retail_times(self._rng("clock"), cfg)
        else:
            times = event_times(self._rng("clock"), cfg)
        sim_rng = self._rng("sim")
        items, n_items, next_item = w.items, len(w.items), 0
        for a in range(0, cfg.events, _CHUNK):
            ts_arr = times[a : a + _CHUNK]
            ts = ts_arr.tolist()
            draws = sim_rng.random((_Simulation.N_DRAWS, len(ts))).tolist()
            if baskets is not None:  # u[0] picks the customer: one per basket
                draws[0] = baskets[a : a + _CHUNK].tolist()
            normal = sim_rng.standard_normal(len(ts)).tolist()
            bad_draws = bad_rng.random((5, len(ts))).tolist()
            sim.set_progress(ts_arr)
            for i, t in enumerate(ts):
                while next_item < n_items and items[next_item].ts_ms <= t:
                    yield from sim.release(items[next_item], counts)
                    next_item += 1
                if bad_draws[0][i] < cfg.bad_fraction:
                    yield sim.bad(a + i, t, [b[i] for b in bad_draws], counts)
                else:
                    yield from sim.engagement(a + i, t, [d[i] for d in draws], normal[i], counts)
        while next_item < n_items:  # items released after the last engagement still belong to the catalogue
            yield from sim.release(items[next_item], counts)
            next_item += 1
        self._counts = {
            "engagements": counts["engagements"],
            "items": counts["items"],
            "bad": {k[4:]: v for k, v in sorted(counts.items()) if k.startswith("bad:")},
            "bad_total": sum(v for k, v in counts.items() if k.startswith("bad:")),
            "positive": counts["positive"],
        }
        self._first_seen = sim.first_seen

    def ground_truth(self) -> dict[str, Any]:
        """The planted truth; generates the workload once (discarding it) if messages() was not consumed."""
        if self._counts is None:
            for _ in self.messages():
                pass
        assert self._counts is not None
        return ground_truth(self.world, self._counts, self._first_seen)


class _Simulation:
    """The mutable state of one pass: users' (h1, h2), items released so far, per-event drift progress."""

    N_DRAWS = 12  # uniforms per engagement slot, always all drawn: determinism never depends on a branch

    def __init__(self, w: World) -> None:
        cfg, k = w.config, w.config.n_clusters
        self.w, self.k = w, k
        self.h1 = [s[0] for s in w.init_state]
        self.h2 = [s[1] for s in w.init_state]
        self.ranked: list[list[str]] = [[] for _ in range(k)]  # per cluster, item ids by popularity rank
        self.released: list[str] = []
        self.text_of: dict[str, str] = {}
        max_len = max(Counter(it.cluster for it in w.items).values(), default=1)
        self.zipf = _cum((1.0 / np.arange(1, max_len + 1) ** ITEM_ZIPF).tolist())
        self.succ_cum = [_cum(w.succ[i, j].tolist()) if i != j else [] for i in range(k) for j in range(k)]
        self.after_cum = {i * k + j: [(d, _cum(p.tolist())) for d, p in changes]
                          for (i, j), changes in w.transition_after.items()}
        self.interest_cum: list[list[float] | None] = [None] * cfg.n_users
        self.rates = w.rates.tolist()
        self.user_total = w.user_cum[-1]
        self.progress: list[list[float]] = []
        self.thr = cfg.positive_dwell_ms
        self.text_fraction = cfg.text_fraction
        retail = cfg.scenario == "retail"
        self.pos_names, self.pos_cum = ([RETAIL_ACTION], [1.0]) if retail else (_POS_NAMES, _POS_CUM)
        self.lazy = retail  # publish an item at its first engagement, not when it becomes available
        self.unpublished: dict[str, PlannedItem] = {}
        self.first_seen: dict[str, int] = {}  # item -> ts of its content event

    def set_progress(self, ts: np.ndarray) -> None:
        self.progress = [d.progress(ts).tolist() for d in self.w.drifts]

    def release(self, it: PlannedItem, counts: Counter[str]) -> Iterator[GeneratedMessage]:
        """The item becomes available to engagements; published now, or (lazy) at its first engagement."""
        lst = self.ranked[it.cluster]
        lst.insert(min(it.rank, len(lst)), it.item_id)
        if self.lazy:
            self.unpublished[it.item_id] = it
        else:
            yield from self._publish(it, it.ts_ms, counts)

    def _publish(self, it: PlannedItem, ts: int, counts: Counter[str]) -> Iterator[GeneratedMessage]:
        content = {"item_id": it.item_id, "text": it.text, "ts": ts, "tags": list(it.tags)}
        key = it.item_id.encode()
        self.released.append(it.item_id)
        self.text_of[it.item_id] = it.text
        self.first_seen[it.item_id] = ts
        counts["items"] += 1
        yield GeneratedMessage("items", key, orjson.dumps(content), ts, None)
        if it.bad_kind is not None:  # a broken re-publish of the same item
            counts["bad:" + it.bad_kind] += 1
            yield GeneratedMessage("items", key, bad_content(it.bad_kind, content), ts, it.bad_kind)

    def bad(self, slot: int, t: int, u: list[float], counts: Counter[str]) -> GeneratedMessage:
        kind = engagement_kind(u[1])
        uid = self.w.user_ids[int(u[2] * len(self.w.user_ids))]
        iid = self.released[int(u[3] * len(self.released))] if self.released else "it000000"
        action = _ACTION_LIST[int(u[4] * len(_ACTION_LIST))]
        template: dict[str, Any] = {"user_id": uid, "item_id": iid, "action": action, "ts": t}
        if action == "view":
            template["dwell_ms"] = int(u[4] * 30_000)
        template["event_id"] = f"e{slot:08d}"
        counts["bad:" + kind] += 1
        return GeneratedMessage("engagements", uid.encode(), bad_engagement(kind, template), t, kind)

    def _interest_cum(self, user: int) -> list[float]:
        cum = self.interest_cum[user]
        if cum is None:  # built on first use: most of a large user base is rarely active
            cum = self.interest_cum[user] = _cum(self.w.interests[user].tolist())
        return cum

    def _cluster(self, user: int, i: int, u: list[float]) -> int:
        """The engagement's cluster: trending traffic, stay, back, own interests, or the pair's successors."""
        r = u[1]
        for d, c, share in self.w.trends:
            p = share * self.progress[d][i]
            if r < p:
                return c
            r -= p
        h1, h2 = self.h1[user], self.h2[user]
        if u[2] < P_STAY:
            return h2
        if u[2] < P_STAY + P_BACK:
            return h1
        if u[3] < INTEREST_WEIGHT:
            cum = self._interest_cum(user)
        else:
            cum = self.succ_cum[h1 * self.k + h2]
            drifted = self.after_cum.get(h1 * self.k + h2)
            if drifted is not None:
                for d, after in reversed(drifted):  # the latest change this draw has reached
                    if u[5] < self.progress[d][i]:
                        cum = after
                        break
        return min(bisect_right(cum, u[4] * cum[-1]), self.k - 1)

    def engagement(self, slot: int, t: int, u: list[float], z: float,
                   counts: Counter[str]) -> Iterator[GeneratedMessage]:
        """The engagement message of one slot, after its item's content event if the item is first seen here."""
        w = self.w
        user = min(bisect_right(w.user_cum, u[0] * self.user_total), len(w.user_ids) - 1)
        i = slot % _CHUNK
        c = self._cluster(user, i, u)
        lst = self.ranked[c]
        if not lst:  # cannot happen by construction (no traffic before a cluster's items); stay safe
            c = self.h2[user]
            lst = self.ranked[c]
        n = len(lst)
        item = lst[bisect_right(self.zipf, u[6] * self.zipf[n - 1], 0, n - 1)]
        if item in self.unpublished:
            yield from self._publish(self.unpublished.pop(item), t, counts)
        drift = w.engagement_drift.get(c)
        rate = self.rates[c] if drift is None else drift[1] + self.progress[drift[0]][i] * (drift[2] - drift[1])
        positive = u[7] < rate
        dwell = None
        if positive:
            action = self.pos_names[bisect_right(self.pos_cum, u[8] * self.pos_cum[-1])]
            if action == "view":
                dwell = self.thr + min(int(math.exp(8.8 + 0.9 * z)), 600_000)
            if c != self.h2[user]:
                self.h1[user], self.h2[user] = self.h2[user], c
            counts["positive"] += 1
        else:
            action = _NEG_NAMES[bisect_right(_NEG_CUM, u[8] * _NEG_CUM[-1])]
            if action == "view":
                if self.thr > 200:  # a short view: below the positive threshold
                    dwell = 200 + int(u[9] * (self.thr - 200))
                else:
                    action = "skip"
        uid = w.user_ids[user]
        obj: dict[str, Any] = {"user_id": uid, "item_id": item, "action": action,
                               "ts": _ts_value(t, u[10] < RFC3339_SHARE)}
        if dwell is not None:
            obj["dwell_ms"] = dwell
        obj["event_id"] = f"e{slot:08d}"
        if u[11] < self.text_fraction:
            obj["text"] = self.text_of[item]
        counts["engagements"] += 1
        yield GeneratedMessage("engagements", uid.encode(), orjson.dumps(obj), t, None)


# ------------------------------------------------------------------------------------------- ground truth

_NOTES = {
    "successors": "P[(c1,c2)] is what a user follows when drawing from their pair: a share "
    "(1-p_stay-p_back)*(1-interest_weight) of engagements. Mined triples also carry interest draws and trending "
    "traffic, filtered by each cluster's positive rate. From a change's ts_ms to end_ms the distribution is the "
    "linear mix of the previous one and 'dist'.",
    "engagement_rates": "probability that an engagement in the cluster is positive; linear from ts_ms to end_ms",
    "volume": "extra_share: share of all engagements redirected to the cluster (linear ramp when gradual)",
    "content": "from start_ms every new item of the cluster comes from its shifted vocabulary (gradual: with a "
    "probability rising linearly to 1 at end_ms); see item_releases",
    "trending_cluster": "reserved for the abrupt volume drift: no items and no traffic before it; null in the "
    "stationary scenario, where every cluster is used normally",
    "counts": "engagements/items: good messages; bad: malformed messages by kind (both topics)",
    "drifts": "start_ms..end_ms: the ramp (equal when abrupt); cluster: the drifted cluster, for a transition "
    "drift the pair's c2 (-1 for a broad shift of many pairs: see successors.changes); magnitude: transition = "
    "total variation distance of the successor distributions (mean over pairs for a broad shift), "
    "engagement = |rate change|, content = share of new items from the shifted vocabulary, volume = extra_share",
}


def ground_truth(w: World, counts: dict[str, Any], first_seen: dict[str, int]) -> dict[str, Any]:
    """The planted truth; ``first_seen``: each published item's content ts (unpublished items are left out)."""
    cfg, k = w.config, w.config.n_clusters
    items = [it for it in w.items if it.item_id in first_seen]
    gt: dict[str, Any] = {
        "seed": cfg.seed,
        "scenario": cfg.scenario,
        "config": dataclasses.asdict(cfg),
        "clusters": [{"id": c, "name": t.name, "keywords": list(t.keywords), "shifted_name": t.shifted_name}
                     for c, t in enumerate(w.topics)],
        "trending_cluster": w.trending,
        "items": {it.item_id: it.cluster for it in items},
        "item_releases": sorted(({"item_id": it.item_id, "ts_ms": first_seen[it.item_id], "cluster": it.cluster,
                                  "vocabulary": "shifted" if it.shifted else "base"}
                                 for it in items if first_seen[it.item_id] > cfg.start_ms),
                                key=lambda r: (r["ts_ms"], r["item_id"])),
        "drifts": [{"id": d.id, "kind": d.kind, "mode": d.mode, "start_ms": d.start_ms, "end_ms": d.end_ms,
                    "cluster": d.cluster, "pair": list(d.pair) if d.pair else None,
                    "magnitude": round(d.magnitude, 6), "before": d.before, "after": d.after} for d in w.drifts],
        "successors": {
            "initial": {f"{i},{j}": _dist_json(w.succ[i, j]) for i in range(k) for j in range(k) if i != j},
            "changes": sorted(({"ts_ms": w.drifts[n].start_ms, "end_ms": w.drifts[n].end_ms, "pair": [i, j],
                                "drift": w.drifts[n].id, "dist": _dist_json(p)}
                               for (i, j), changes in w.transition_after.items() for n, p in changes),
                              key=lambda c: (c["ts_ms"], c["pair"])),
        },
        "engagement_rates": {
            "initial": {str(c): round(r, 6) for c, r in enumerate(w.rates.tolist())},
            "changes": [{"ts_ms": w.drifts[n].start_ms, "end_ms": w.drifts[n].end_ms, "cluster": c, "rate": r1,
                         "drift": w.drifts[n].id}
                        for c, (n, _, r1) in sorted(w.engagement_drift.items(), key=lambda kv: kv[1][0])],
        },
        "model": {"p_stay": P_STAY, "p_back": P_BACK, "interest_weight": INTEREST_WEIGHT,
                  "successor_floor": SUCCESSOR_FLOOR, "user_zipf": _user_zipf(cfg), "item_zipf": ITEM_ZIPF,
                  "cluster_zipf": CLUSTER_ZIPF,
                  "rfc3339_share": RFC3339_SHARE, "warmup": WARMUP},
        "notes": _NOTES,
        "counts": counts,
    }
    if cfg.scenario == "retail":
        gt["retail"] = {
            "action": RETAIL_ACTION, "basket_mean": RETAIL_BASKET_MEAN, "basket_max": RETAIL_BASKET_MAX,
            "weekday_factors": list(RETAIL_WEEKDAY), "season_peak": RETAIL_SEASON_PEAK,
            "season_day_of_year": RETAIL_SEASON_DAY, "season_width_days": RETAIL_SEASON_WIDTH,
            "weekly_growth": RETAIL_WEEKLY_GROWTH, "new_items_per_cluster": _new_items_per_cluster(cfg),
            "note": "purchases only; ts on whole minutes, a basket's items share one; volume = daily x weekday x "
            "season (UTC, see retail_intensity); items: only those bought, each published at its first purchase "
            "(item_releases: first purchases after start_ms); engagement_rates are all 1",
        }
    return gt


def dump_ground_truth(gt: dict[str, Any]) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, trailing newline."""
    return orjson.dumps(gt, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


# ------------------------------------------------------------------------------------------------ writers


def write_files(config: GeneratorConfig, out_dir: Path,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """DIR/engagements.jsonl and DIR/items.jsonl (one message value per line) and DIR/ground_truth.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = WorkloadGenerator(config)
    t0 = last = time.monotonic()
    n = 0
    with (out_dir / "engagements.jsonl").open("wb") as fe, (out_dir / "items.jsonl").open("wb") as fi:
        for m in gen.messages():
            (fe if m.topic == "engagements" else fi).write(m.value + b"\n")  # type: ignore[operator]
            n += 1
            if progress is not None and n % 10_000 == 0 and time.monotonic() - last > 2:
                last = time.monotonic()
                progress(f"generate: {n} messages written")
    gt = gen.ground_truth()
    (out_dir / "ground_truth.json").write_bytes(dump_ground_truth(gt))
    c = gt["counts"]
    return {"out": str(out_dir), "messages": n, "engagements": c["engagements"], "items": c["items"],
            "bad": c["bad_total"], "bad_by_kind": c["bad"], "drifts": len(gt["drifts"]),
            "seconds": round(time.monotonic() - t0, 3)}


def produce_to_kafka(config: GeneratorConfig, producer_config: dict, topics: dict[str, str],
                     rate: float | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Produce the workload (key, value) to the physical ``topics``; raise on failure.

    Counts: produced (all messages), engagements and items (good ones), bad (malformed, both topics).
    Event time travels in each value's ``ts``; the record timestamp is the produce time, as a live producer's
    would be. (Stamping records with the simulated event time would let time-based retention delete a
    workload that starts months ago as soon as it is written.)
    """
    from confluent_kafka import Producer

    missing = {"engagements", "items"} - set(topics)
    if missing:
        raise ValueError(f"topics must map {sorted(missing)} to physical topic names")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    # Idempotence: a retried batch is never written twice (the good events must arrive exactly once).
    conf = {"linger.ms": 20, "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4", "enable.idempotence": True, **producer_config}
    producer = Producer(conf)
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err}")

    counts: Counter[str] = Counter()
    t0 = last = time.monotonic()
    burst = max(1.0, (rate or 0) * 0.05)  # token bucket: at most 50 ms worth of messages at once
    for n, m in enumerate(WorkloadGenerator(config).messages()):
        if rate is not None:
            allowed = (time.monotonic() - t0) * rate + burst
            if n >= allowed:  # out of tokens: wait until half the bucket is back (few, longer sleeps)
                producer.poll(0)
                time.sleep((n - allowed + burst / 2) / rate)
        while True:
            try:
                producer.produce(topics[m.topic], value=m.value, key=m.key,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                producer.poll(0.05)
        counts["bad" if m.bad_kind else m.topic] += 1
        if m.bad_kind:
            counts["bad:" + m.bad_kind] += 1
        if n % 1000 == 0:
            producer.poll(0)
            if errors:
                break
            if progress is not None and time.monotonic() - last > 2:
                last = time.monotonic()
                progress(f"generate: {n} messages produced ({n / (last - t0):.0f}/s)")
    remaining = producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} deliveries failed; first: {errors[0]}")
    if remaining:
        raise RuntimeError(f"{remaining} messages still undelivered after 60 s flush")
    return {"produced": counts["engagements"] + counts["items"] + counts["bad"],
            "engagements": counts["engagements"], "items": counts["items"], "bad": counts["bad"],
            "bad_by_kind": {k[4:]: v for k, v in sorted(counts.items()) if k.startswith("bad:")},
            "seconds": round(time.monotonic() - t0, 3)}


# ---------------------------------------------------------------------------------------------------- CLI


def _start_ms(s: str, days: float) -> int:
    if s == "now":  # the span ends now: Kafka retention and timestamp checks see recent, not future, records
        return int(time.time() * 1000) - int(days * DAY_MS)
    if s.isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"--start must be epoch ms or RFC 3339, got {s!r}") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = GeneratorConfig()
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same bytes)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write DIR/engagements.jsonl, DIR/items.jsonl, DIR/ground_truth.json")
    parser.add_argument("--events", type=int, default=d.events, help="engagement messages (good + bad)")
    parser.add_argument("--users", type=int, default=d.n_users)
    parser.add_argument("--clusters", type=int, default=d.n_clusters, help=f"interest clusters (<= {len(TOPICS)})")
    parser.add_argument("--items-per-cluster", type=int, default=d.items_per_cluster, help="initial catalogue")
    parser.add_argument("--days", type=float, default=d.days, help="event-time span")
    parser.add_argument("--start", default=str(d.start_ms),
                        help="first event time: epoch ms, RFC 3339, or 'now' (the span ends now; not reproducible)")
    parser.add_argument("--scenario", choices=SCENARIOS, default=d.scenario,
                        help="drifting: planted drifts; stationary: none; shifting: broad successor shifts; "
                        "retail: a purchase log (baskets, minute times, weekly/seasonal volume, heavy customers)")
    parser.add_argument("--bad-fraction", type=float, default=d.bad_fraction, help="share of malformed messages")
    parser.add_argument("--text-fraction", type=float, default=d.text_fraction,
                        help="share of engagements carrying the item text inline")
    parser.add_argument("--kafka", action="store_true", help="produce to Kafka (with --out: as well as files)")
    parser.add_argument("--rate", type=float, default=None, metavar="EVENTS_PER_S",
                        help="Kafka: target rate in messages/s (default: as fast as possible)")
    parser.add_argument("--bootstrap-servers", help="Kafka brokers (default: settings.kafka.bootstrap_servers)")
    parser.add_argument("--topic-prefix", help="prefix of every topic name (default: settings.kafka.topic_prefix)")


def run(args: argparse.Namespace, settings: Any) -> int:
    if args.out is None and not args.kafka:
        print("driftrag generate: error: give --out DIR (JSONL files) and/or --kafka (produce to Kafka)",
              file=sys.stderr)
        return 2
    config = GeneratorConfig(
        seed=args.seed, scenario=args.scenario, n_clusters=args.clusters, n_users=args.users,
        items_per_cluster=args.items_per_cluster, events=args.events, days=args.days,
        start_ms=_start_ms(args.start, args.days), bad_fraction=args.bad_fraction, text_fraction=args.text_fraction,
        positive_dwell_ms=settings.contract.positive_dwell_ms)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    summary: dict[str, Any] = {"seed": config.seed, "scenario": config.scenario}
    if args.out is not None:
        summary["files"] = write_files(config, args.out, progress=say)
        say(f"generate: wrote {summary['files']['messages']} messages to {args.out}")
    if args.kafka:
        kafka = settings.kafka.with_args(args)
        topics = {"engagements": kafka.topic("engagements"), "items": kafka.topic("items")}
        say(f"generate: producing to {kafka.bootstrap_servers} topics {topics}")
        try:
            summary["kafka"] = produce_to_kafka(config, kafka.client(), topics, rate=args.rate, progress=say)
        except Exception as e:  # KafkaException / RuntimeError: one clear line, not a stack trace
            print(f"driftrag generate: error: producing to Kafka failed: {e}", file=sys.stderr)
            return 1
    print(orjson.dumps(summary).decode())
    return 0
