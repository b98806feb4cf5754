"""Decayed successor counts per pair, their rankings, the global fallback and snapshots."""

from __future__ import annotations

import math
import pickle
from collections import Counter, defaultdict

import pytest

from operators.successors import (
    MODES,
    DecayedCounter,
    PairSuccessors,
    Successor,
    SuccessorTable,
)
from operators.transitions import TransitionTracker
from streams.contract import Engagement, RawMessage, Validator
from streams.generator import GeneratorConfig, WorkloadGenerator

MIN = 60_000
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01


# ------------------------------------------------------------------------------------------- DecayedCounter


def test_one_half_life_halves_a_count():
    c = DecayedCounter(half_life_ms=MIN).update("a", T0)
    assert c.value("a", T0) == 1.0
    assert c.value("a", T0 + MIN) == pytest.approx(0.5)
    assert c.value("a", T0 + 3 * MIN) == pytest.approx(0.125)
    assert c.value("a", T0 + MIN // 2) == pytest.approx(2 ** -0.5)
    assert c.value("missing", T0) == 0.0
    assert c.total(T0 + MIN) == pytest.approx(0.5)


def test_weights_and_sums():
    c = DecayedCounter(half_life_ms=1_000)
    c.update("a", 0, weight=4.0).update("a", 1_000).update("b", 2_000, weight=2.0)
    assert c.value("a", 2_000) == pytest.approx(4 * 0.25 + 0.5)
    assert c.items(2_000) == [("a", pytest.approx(1.5)), ("b", pytest.approx(2.0))]
    assert c.total(2_000) == pytest.approx(3.5)
    assert len(c) == 2 and "a" in c and "z" not in c
    assert c.latest_ms == 2_000


def test_empty_counter_reads_zero():
    c = DecayedCounter(half_life_ms=1_000)
    assert c.value("a", 5) == 0.0 and c.total(5) == 0.0 and c.items(5) == [] and c.latest_ms is None


def test_out_of_order_events_decay_by_their_own_timestamp():
    late = DecayedCounter(half_life_ms=MIN)
    late.update("a", T0 + 10 * MIN).update("a", T0)  # the second one is 10 half-lives older
    in_order = DecayedCounter(half_life_ms=MIN)
    in_order.update("a", T0).update("a", T0 + 10 * MIN)
    assert late.value("a", T0 + 10 * MIN) == pytest.approx(1 + 2 ** -10)
    assert late.value("a", T0 + 11 * MIN) == pytest.approx(in_order.value("a", T0 + 11 * MIN))
    # Very late (a year): contributes nothing, and nothing blows up.
    late.update("a", T0 - 365 * DAY)
    assert late.value("a", T0 + 10 * MIN) == pytest.approx(1 + 2 ** -10)
    assert late.latest_ms == T0 + 10 * MIN


def test_reads_before_the_latest_event_are_not_inflated():
    c = DecayedCounter(half_life_ms=MIN).update("a", T0).update("a", T0 + 5 * MIN)
    # Ages are clamped at 0: reading in the past reads at the latest event, never above the plain count.
    assert c.value("a", T0) == pytest.approx(1 + 2 ** -5)
    assert c.value("a", T0 - 365 * DAY) == pytest.approx(1 + 2 ** -5)


def test_a_year_of_event_time_with_a_one_minute_half_life_stays_finite_and_right():
    c = DecayedCounter(half_life_ms=MIN)
    n = 365 * 24 * 60  # one event per minute = per half-life, for a year
    for i in range(n):
        c.update("a" if i % 2 else "b", T0 + i * MIN)
    end = T0 + (n - 1) * MIN
    # Geometric series: the last event counts 1, the one before 1/2, ...; "a" holds the odd steps.
    a, b = c.value("a", end), c.value("b", end)
    assert math.isfinite(a) and math.isfinite(b)
    assert a == pytest.approx(4 / 3) and b == pytest.approx(2 / 3)
    assert c.total(end) == pytest.approx(2.0)
    assert c.value("a", end + 60 * MIN) == pytest.approx(4 / 3 * 2 ** -60)
    assert c.value("a", end + 365 * DAY) == 0.0  # underflows to 0, not nan
    snap = c.snapshot()
    assert all(math.isfinite(v) for _, v in snap.values) and math.isfinite(snap.total)
    # A lone event a year after the last: the old ones are gone, the new one counts 1.
    c.update("b", end + 365 * DAY)
    assert c.value("b", end + 365 * DAY) == pytest.approx(1.0)
    assert c.value("a", end + 365 * DAY) == 0.0


def test_infinite_half_life_counts_without_decay():
    c = DecayedCounter(half_life_ms=float("inf"))
    for i, k in enumerate("abcab"):
        c.update(k, T0 + i * 365 * DAY)
    assert c.value("a", T0 + 10_000 * DAY) == 2.0 and c.total(T0) == 5.0
    assert DecayedCounter.from_snapshot(pickle.loads(pickle.dumps(c.snapshot()))).items(T0) == c.items(T0)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("-inf"), "1", True, None])
def test_half_life_must_be_positive(bad):
    with pytest.raises(ValueError, match="half_life_ms"):
        DecayedCounter(half_life_ms=bad)
    with pytest.raises(ValueError, match="half_life_ms"):
        PairSuccessors(half_life_ms=bad)
    with pytest.raises(ValueError, match="half_life_ms"):
        SuccessorTable(half_life_ms=bad)


def test_counter_snapshot_round_trip():
    c = DecayedCounter(half_life_ms=MIN)
    for i, k in enumerate("abcab"):
        c.update(k, T0 + i * 7_000)
    c2 = DecayedCounter.from_snapshot(pickle.loads(pickle.dumps(c.snapshot())))
    assert c2.items(T0 + MIN) == c.items(T0 + MIN)
    c.update("c", T0 + 200 * MIN)
    c2.update("c", T0 + 200 * MIN)
    assert c2.items(T0 + 201 * MIN) == c.items(T0 + 201 * MIN)


# ------------------------------------------------------------------------------------------- PairSuccessors


def feed(p: PairSuccessors, seq: str, ts: int) -> None:
    for c in seq:
        p.update(c, ts)


def test_frequency_ranking_on_hand_worked_data():
    p = PairSuccessors(half_life_ms=MIN)
    feed(p, "aaaa", T0)  # 4 at T0: worth 2 one half-life later
    feed(p, "bbb", T0 + MIN)  # 3 fresh
    feed(p, "c", T0 + MIN)
    top = p.top(3, T0 + MIN)
    assert [s.cluster for s in top] == ["b", "a", "c"]
    assert [s.count for s in top] == pytest.approx([3.0, 2.0, 1.0])
    assert [s.score for s in top] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert [s.trend for s in top] == [0.0, 0.0, 0.0]  # no reference yet
    assert p.total(T0 + MIN) == pytest.approx(6.0)
    assert [s.cluster for s in p.top(1, T0 + MIN)] == ["b"]
    assert p.top(10, T0 + MIN) == top  # k larger than the successors: all of them
    # Shares do not depend on when they are read (all counts decay alike); counts do.
    later = p.top(3, T0 + 5 * MIN)
    assert [s.score for s in later] == pytest.approx([s.score for s in top])
    assert [s.count for s in later] == pytest.approx([0.1875, 0.125, 0.0625])


def test_trend_ranking_after_a_planted_change():
    p = PairSuccessors(half_life_ms=DAY)
    for i in range(100):  # a stable week: a 70%, b 20%, c 10%
        feed(p, "a" * 7 + "bb" + "c", T0 + i * DAY // 14)
    p.mark_reference(T0 + 7 * DAY)
    assert p.reference_ms == T0 + 7 * DAY
    assert [s.trend for s in p.top(3, T0 + 7 * DAY)] == pytest.approx([0, 0, 0])
    for i in range(30):  # then c takes over
        feed(p, "a" + "c" * 6, T0 + 7 * DAY + i * DAY // 10)
    now = T0 + 10 * DAY
    trend = p.top(3, now, mode="trend")
    assert trend[0].cluster == "c" and trend[0].trend > 0.3
    assert trend[0].score == trend[0].trend
    assert trend[-1].cluster == "a" and trend[-1].trend < 0
    assert sum(s.trend for s in trend) == pytest.approx(0.0, abs=1e-12)
    freq = {s.cluster: s for s in p.top(3, now)}
    assert freq["c"].trend == pytest.approx(trend[0].trend)
    assert freq["c"].score - freq["c"].trend == pytest.approx(0.1)  # the reference share of c
    # A fresh reference: no change against it.
    p.mark_reference(now)
    assert [s.trend for s in p.top(3, now)] == pytest.approx([0, 0, 0])


def test_pair_snapshot_round_trip_gives_identical_answers():
    p = PairSuccessors(half_life_ms=MIN)
    feed(p, "aab", T0)
    p.mark_reference(T0)
    feed(p, "bbc", T0 + MIN)
    q = PairSuccessors.from_snapshot(pickle.loads(pickle.dumps(p.snapshot())))
    for mode in MODES:
        assert q.top(3, T0 + 2 * MIN, mode) == p.top(3, T0 + 2 * MIN, mode)
    assert q.reference_ms == p.reference_ms
    assert hash(p.snapshot()) == hash(q.snapshot())  # immutable value


def test_successor_is_frozen():
    s = Successor(3, 0.5, 2.0, 0.1)
    with pytest.raises(AttributeError):
        s.score = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- SuccessorTable


def test_global_fallback_below_min_support():
    t = SuccessorTable(half_life_ms=DAY, min_support=3.0)
    for c in (3, 3, 4):
        t.update((1, 2, c), T0)
    for c in (1, 2, 5):
        t.update((7, 8, c), T0)
    succ, source = t.top((1, 2), k=2, now_ms=T0)
    assert source == "exact"
    assert [(s.cluster, s.count) for s in succ] == [(3, pytest.approx(2.0)), (4, pytest.approx(1.0))]
    # One half-life later the pair's support is 1.5 < 3: the global counts answer.
    succ, source = t.top((1, 2), k=5, now_ms=T0 + DAY)
    assert source == "global"
    assert [s.cluster for s in succ] == [3, 4, 5]  # 1 and 2 (the pair itself) excluded
    assert [s.score for s in succ] == pytest.approx([0.5, 0.25, 0.25])  # shares among the allowed successors
    assert t.support((1, 2), T0 + DAY) == pytest.approx(1.5)
    # An unseen pair: global; a pair with support exactly min_support: exact.
    assert t.top((9, 10), 1, T0)[1] == "global"
    assert t.top((7, 8), 3, T0)[1] == "exact"
    assert t.support((9, 10), T0) == 0.0 and t.get((9, 10)) is None


def test_pair_clusters_are_never_their_own_successors():
    t = SuccessorTable(half_life_ms=DAY, min_support=1.0)
    for c in (1, 2, 2, 2, 3):
        t.update((5, 6, c), T0)
    for pair in [(1, 2), (2, 1), (2, 9), (9, 10)]:
        succ, source = t.top(pair, k=5, now_ms=T0)
        assert source == "global"
        assert not {s.cluster for s in succ} & set(pair)
    with pytest.raises(ValueError, match="not a transition triple"):
        t.update((1, 2, 2), T0)
    with pytest.raises(ValueError, match="not a transition triple"):
        t.update((1, 2, 1), T0)


def test_empty_table_answers_nothing_from_global():
    t = SuccessorTable(half_life_ms=DAY)
    assert t.top((1, 2), 3, T0) == ([], "global")
    assert t.pairs() == [] and len(t) == 0


def test_table_trend_mode_and_mark_reference():
    t = SuccessorTable(half_life_ms=DAY, min_support=1.0)
    for _ in range(9):
        t.update((1, 2, 3), T0)
    t.update((1, 2, 4), T0)
    t.mark_reference(T0)
    for _ in range(5):
        t.update((1, 2, 4), T0 + 1)
    succ, source = t.top((1, 2), 2, T0 + 1, mode="trend")
    assert source == "exact" and [s.cluster for s in succ] == [4, 3]
    assert succ[0].trend == pytest.approx(6 / 15 - 0.1)
    gsucc, gsource = t.top((8, 9), 2, T0 + 1, mode="trend")
    assert gsource == "global" and [s.cluster for s in gsucc] == [4, 3]


def test_table_snapshot_round_trip_gives_identical_answers():
    t = SuccessorTable(half_life_ms=MIN, min_support=2.0)
    triples = [(1, 2, 3), (1, 2, 4), (2, 3, 1), (1, 2, 3), (3, 1, 2), (2, 3, 4)]
    for i, tr in enumerate(triples):
        t.update(tr, T0 + i * 10_000)
    t.mark_reference(T0 + MIN)
    t.update((1, 2, 4), T0 + 2 * MIN)
    u = SuccessorTable.from_snapshot(pickle.loads(pickle.dumps(t.snapshot())))
    assert u.pairs() == t.pairs() == [(1, 2), (2, 3), (3, 1)]
    assert (u.half_life_ms, u.min_support) == (t.half_life_ms, t.min_support)
    for pair in [*t.pairs(), (5, 6)]:
        for mode in MODES:
            for now in (T0 + 2 * MIN, T0 + 9 * MIN):
                assert u.top(pair, 3, now, mode) == t.top(pair, 3, now, mode)
    assert u.snapshot() == t.snapshot()


@pytest.mark.parametrize("mode", ["freq", "", "Frequency", None])
def test_unknown_mode_lists_the_valid_modes(mode):
    t = SuccessorTable(half_life_ms=DAY).update((1, 2, 3), T0)
    with pytest.raises(ValueError, match=r"\['frequency', 'trend'\]"):
        t.top((1, 2), 3, T0, mode=mode)
    with pytest.raises(ValueError, match=r"\['frequency', 'trend'\]"):
        PairSuccessors(half_life_ms=DAY).top(3, T0, mode=mode)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_must_be_at_least_one(k):
    t = SuccessorTable(half_life_ms=DAY).update((1, 2, 3), T0)
    with pytest.raises(ValueError, match="k must be"):
        t.top((1, 2), k, T0)
    with pytest.raises(ValueError, match="k must be"):
        PairSuccessors(half_life_ms=DAY).top(k, T0)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3"])
def test_min_support_is_checked(bad):
    with pytest.raises(ValueError, match="min_support"):
        SuccessorTable(half_life_ms=DAY, min_support=bad)


# ------------------------------------------------------------------------------------------- real workload


@pytest.fixture(scope="module")
def workload() -> tuple[dict, list[tuple[int, tuple[int, int, int]]]]:
    """(ground truth, (ts, triple) mined per user from the validated positive engagements, in event-time order)."""
    gen = WorkloadGenerator(GeneratorConfig(seed=7, events=60_000))
    messages = list(gen.messages())
    gt = gen.ground_truth()
    item_cluster = gt["items"]
    validator = Validator()
    trackers: dict[str, TransitionTracker] = defaultdict(TransitionTracker)
    timed = []
    for i, m in enumerate(messages):
        e = validator.validate(RawMessage(m.topic, 0, i, m.key, m.value))
        if isinstance(e, Engagement) and e.positive:
            triple = trackers[e.user_id].update(item_cluster[e.item_id])
            if triple is not None:
                timed.append((e.ts_ms, triple))
    return gt, timed


def test_top_successor_matches_the_generators_ground_truth(workload):
    gt, timed = workload
    cut = min(d["start_ms"] for d in gt["drifts"] if d["kind"] == "transition")  # before any transition drift
    table = SuccessorTable(half_life_ms=2 * DAY, min_support=5.0)
    seen: Counter[tuple[int, int]] = Counter()
    for ts, triple in timed:
        if ts < cut:
            table.update(triple, ts)
            seen[triple[:2]] += 1
    busiest = [pair for pair, _ in seen.most_common(20)]
    hits = 0
    for c1, c2 in busiest:
        succ, source = table.top((c1, c2), 1, cut)
        assert source == "exact"
        truth = gt["successors"]["initial"][f"{c1},{c2}"]
        hits += succ[0].cluster == int(max(truth, key=truth.get))
    assert hits >= 16, f"top-1 matches the true argmax for {hits}/20 busiest pairs"  # seed 7: 20/20


def test_trend_finds_the_planted_transition_drift(workload):
    gt, timed = workload
    (drift,) = [d for d in gt["drifts"] if (d["kind"], d["mode"]) == ("transition", "abrupt")]
    pair, start, new_top = tuple(drift["pair"]), drift["start_ms"], drift["after"]["top_successor"]
    now = start + 2 * DAY
    table = SuccessorTable(half_life_ms=2 * DAY, min_support=5.0)
    marked = False
    for ts, triple in timed:
        if ts >= now:
            break
        if not marked and ts >= start:
            table.mark_reference(start)  # the RAG refresh just before the drift
            marked = True
        table.update(triple, ts)
    succ, source = table.top(pair, 3, now, mode="trend")
    assert source == "exact"
    assert succ[0].cluster == new_top and succ[0].trend > 0.2  # seed 7: 8, +0.374
    old_top = {s.cluster: s for s in table.top(pair, 16, now)[0]}[drift["before"]["top_successor"]]
    assert old_top.trend < -0.2  # seed 7: -0.316


def test_update_each_is_the_updates_in_turn():
    """Exactly (==): the adaptive table's scoring relies on it giving what one update per key gives."""
    from operators.successors import DecayedCounter

    a, b = DecayedCounter(3_600_000), DecayedCounter(3_600_000)
    steps = ((5, [("x", 0.3), ("y", -1.25), ("x", 2.0)]), (10**12, [("z", 1.0)]), (7, [("y", 0.1), ("n", 1.0)]))
    for ts, keys in steps:  # in order, a jump far ahead (the counter rebases), a late one
        a.update_each(keys, ts)
        for k, w in keys:
            b.update(k, ts, w)
        assert a.snapshot() == b.snapshot()
