"""Adaptive successor estimates (operators/adaptive_successors.py): exact weights, back-off, snapshots, regimes."""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS, AdaptiveSuccessorTable, LiveSuccessors, half_life_label
from operators.successors import DecayedCounter

DAY = 86_400_000
INF = float("inf")
FLOOR = 1e-3


def test_one_half_life_is_the_plain_decayed_counter():
    rng = random.Random(5)
    t = AdaptiveSuccessorTable((DAY,))
    ref = DecayedCounter(DAY)
    ts = 0
    for _ in range(300):
        ts += rng.randrange(3_600_000)
        c = rng.choice([3, 4, 5, 6])
        t.update((1, 2, c), ts)
        ref.update(c, ts)
    assert t.weights((1, 2), ts) == {"1d": 1.0}
    assert t.counts((1, 2), ts) == pytest.approx(dict(ref.items(ts)), rel=1e-12)
    assert t.support((1, 2), ts) == pytest.approx(ref.total(ts), rel=1e-12)
    assert t.top1((1, 2), ts, 0.0) == min(ref.items(ts), key=lambda kv: (-kv[1], kv[0]))[0]


def test_weights_hand_worked():
    # (1d, none), prior 1, no back-off, scores never decay. Triple (1,2,3) at 0: every count empty, the global
    # prior's only cluster share is 1 -> p = 1 for both, log 0. Triple (1,2,4) at 1 day: for 1d the pair has
    # N = 0.5 (3 decayed once), global the same, g(4) = FLOOR / (0.5 + 2 FLOOR); for none N = 1, g = FLOOR / (1 +
    # 2 FLOOR). p_h = g_h / (N_h + 1). Weights: p_1d / (p_1d + p_none).
    t = AdaptiveSuccessorTable((DAY, INF), score_half_life_ms=INF, prior=1.0, backoff=0.0, learning_rate=1.0,
                               score="log")
    t.update((1, 2, 3), 0).update((1, 2, 4), DAY)
    p1 = (FLOOR / (0.5 + 2 * FLOOR)) / 1.5
    pn = (FLOOR / (1.0 + 2 * FLOOR)) / 2.0
    w = t.weights((1, 2), DAY)
    assert w["1d"] == pytest.approx(p1 / (p1 + pn), rel=1e-12)
    assert w["none"] == pytest.approx(pn / (p1 + pn), rel=1e-12)
    # counts: 1d {3: 0.5, 4: 1}, none {3: 1, 4: 1}, mixed by the weights
    assert t.counts((1, 2), DAY) == pytest.approx({3: 0.5 * w["1d"] + w["none"], 4: 1.0}, rel=1e-12)
    assert t.effective_half_life_ms((1, 2), DAY) == DAY  # p1 > pn: the short memory doubted 3 less
    assert t.top1((1, 2), DAY, 0.0) == 4


def test_quadratic_score_hand_worked():
    # The same two triples as above, quadratic score, learning rate 2, no back-off. The first scores 2 * 1 - 0 = 2
    # for both (empty rows, the global prior's only cluster). The second, c = 4 at 1 day: 1d has the row {3: 0.5},
    # N = 0.5, global {3: 0.5}, g(3) = (0.5 + FLOOR) / g1, g(4) = FLOOR / g1 with g1 = 0.5 + 2 FLOOR; no decay the
    # same with 1.0 for 0.5. Score: 2 p(4) - p(3)**2 (the sum runs over the seen successor 3 only).
    t = AdaptiveSuccessorTable((DAY, INF), score_half_life_ms=INF, prior=1.0, backoff=0.0, learning_rate=2.0)
    assert t.score == "brier"
    t.update((1, 2, 3), 0).update((1, 2, 4), DAY)

    def quad(n3: float) -> float:
        g = n3 + 2 * FLOOR
        return 2 * (FLOOR / g) / (n3 + 1) - ((n3 + (n3 + FLOOR) / g) / (n3 + 1)) ** 2

    s1, sn = 2 + quad(0.5), 2 + quad(1.0)
    w = t.weights((1, 2), DAY)
    assert w["1d"] == pytest.approx(1 / (1 + math.exp(2 * (sn - s1))), rel=1e-12)
    assert w["1d"] > 0.5  # the short memory had given 3 less of the mass


def test_log_score_prefers_the_tail_the_quadratic_score_the_head():
    # One pair: its head (3, 60%) never changes; its tail moves every 2 days between 4-5 and 6-7 (the mix of users
    # active now). The log score rewards following the tail (short memory); the quadratic score does not.
    rng = random.Random(3)
    kw = {"score_half_life_ms": INF, "backoff": 0.0}
    tables = {s: AdaptiveSuccessorTable((DAY, INF), score=s, **kw) for s in ("log", "brier")}
    for d in range(40):
        tail = (4, 5) if (d // 2) % 2 else (6, 7)
        for k in range(20):
            c = 3 if rng.random() < 0.6 else rng.choice(tail)
            for t in tables.values():
                t.update((1, 2, c), d * DAY + k * 3_600_000)
    assert tables["log"].effective_half_life_ms((1, 2), 40 * DAY) == DAY
    assert tables["brier"].effective_half_life_ms((1, 2), 40 * DAY) is None


def test_new_pair_backs_off_to_its_source_cluster_then_to_all_pairs():
    t = AdaptiveSuccessorTable((DAY, INF), score_half_life_ms=INF, prior=1.0, backoff=3.0, learning_rate=1.0,
                               score="log")
    t.update((1, 2, 3), 0).update((1, 2, 4), DAY)
    p1 = math.log((FLOOR / (0.5 + 2 * FLOOR)) / 1.5)
    pn = math.log((FLOOR / (1.0 + 2 * FLOOR)) / 2.0)
    # source cluster 2 has two scored transitions (the first scored 0 for both): mean = p / 2, times backoff 3
    e1, en = math.exp(3 * p1 / 2), math.exp(3 * pn / 2)
    assert t.weights((9, 2), DAY)["1d"] == pytest.approx(e1 / (e1 + en), rel=1e-12)
    # the seen pair: its own sums plus the same back-off term
    f1, fn = math.exp(p1 + 3 * p1 / 2), math.exp(pn + 3 * pn / 2)
    assert t.weights((1, 2), DAY)["1d"] == pytest.approx(f1 / (f1 + fn), rel=1e-12)
    # source cluster 8 never seen: all pairs' scores (here the same two transitions)
    assert t.weights((9, 8), DAY) == pytest.approx(t.weights((9, 2), DAY), rel=1e-12)
    assert t.support((9, 8), DAY) == 0.0 and t.counts((9, 8), DAY) == {}
    assert t.top1((9, 8), DAY, 1.0) in (3, 4)  # global fallback, never 9 or 8
    assert t.top1((3, 4), DAY, 1.0) is None  # the only successors are the pair's own clusters


def _regime(seed: int, switching: bool, days: int = 60) -> AdaptiveSuccessorTable:
    """One pair, 6 transitions a day. Switching: the top successor changes every 3 days (short memory right);
    else a fixed noisy mix 0.4/0.3/0.3 (long memory right)."""
    rng = random.Random(seed)
    t = AdaptiveSuccessorTable()
    for d in range(days):
        for k in range(6):
            if switching:
                top = 3 + (d // 3) % 3
                c = top if rng.random() < 0.8 else rng.choice([x for x in (3, 4, 5) if x != top])
            else:
                c = rng.choices((3, 4, 5), weights=(4, 3, 3))[0]
            t.update((1, 2, c), d * DAY + k * 4 * 3_600_000)
    return t


def test_weights_follow_the_regime():
    fast = _regime(1, switching=True).weights((1, 2), 60 * DAY)
    slow = _regime(1, switching=False).weights((1, 2), 60 * DAY)
    assert fast["1d"] + fast["2d"] > 0.9
    assert slow["30d"] + slow["none"] > 0.5 and slow["1d"] + slow["2d"] < 0.1


def test_snapshot_round_trip_continues_identically():
    a = _regime(2, switching=True, days=10)
    b = AdaptiveSuccessorTable.from_snapshot(pickle.loads(pickle.dumps(a.snapshot())))
    for t in (a, b):
        t.update((1, 2, 4), 10 * DAY).update((7, 2, 1), 10 * DAY + 1)
    for pair in ((1, 2), (7, 2), (5, 6)):
        assert b.weights(pair, 11 * DAY) == a.weights(pair, 11 * DAY)
        assert b.counts(pair, 11 * DAY) == a.counts(pair, 11 * DAY)
    assert b.pairs() == a.pairs() and repr(b) == repr(a)


@pytest.mark.parametrize("kwargs, match", [
    ({"half_lives_ms": ()}, "half_lives_ms"), ({"half_lives_ms": (DAY, DAY)}, "half_lives_ms"),
    ({"half_lives_ms": (0,)}, "half_life_ms"), ({"score_half_life_ms": -1}, "half_life_ms"),
    ({"prior": -1.0}, "prior"), ({"prior": 0.0}, "prior"), ({"backoff": INF}, "backoff"),
    ({"score": "hit"}, "score"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSuccessorTable(**kwargs)
    with pytest.raises(ValueError, match="transition triple"):
        AdaptiveSuccessorTable().update((1, 2, 2), 0)


def test_labels_and_defaults():
    assert [half_life_label(h) for h in DEFAULT_HALF_LIVES_MS] == ["1d", "2d", "7d", "30d", "none"]
    assert AdaptiveSuccessorTable().labels == ("1d", "2d", "7d", "30d", "none")


# --------------------------------------------------------------------- one source cluster needs no other


def _random_triples(seed: int, n: int, clusters: int = 6) -> list[tuple[tuple[int, int, int], int]]:
    rng = random.Random(seed)
    out, ts = [], 0
    for _ in range(n):
        ts += rng.choice([0, 0, 60_000, 3_600_000, 20 * 3_600_000])  # equal times collide too
        c1, c2, c = rng.sample(range(clusters), 3)
        out.append(((c1, c2, c), ts))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tables_sharded_by_source_cluster_answer_as_one_table(seed):
    """What lets the job key the successor state by source cluster c2, spread over workers: a pair's weights,
    counts and support depend on its own transitions and its source cluster's only (prior and back-off)."""
    one = AdaptiveSuccessorTable()
    shards: dict[int, AdaptiveSuccessorTable] = {}
    triples = _random_triples(seed, 2_000)
    for triple, ts in triples:
        one.update(triple, ts)
        shards.setdefault(triple[1], AdaptiveSuccessorTable()).update(triple, ts)
    end = triples[-1][1] + DAY
    assert sorted(one.pairs()) == sorted(p for t in shards.values() for p in t.pairs())
    for pair in one.pairs():
        shard = shards[pair[1]]
        assert shard.weights(pair, end) == one.weights(pair, end)
        assert shard.counts(pair, end) == one.counts(pair, end)
        assert shard.support(pair, end) == one.support(pair, end)


def test_plain_state_round_trips_through_json_and_continues_identically():
    a = AdaptiveSuccessorTable()
    for triple, ts in _random_triples(4, 500):
        a.update(triple, ts)
    b = AdaptiveSuccessorTable.from_plain(json.loads(json.dumps(a.to_plain())))  # Infinity: no decay
    end = 10**10
    for t in (a, b):
        t.update((0, 1, 2), end).update((3, 1, 2), end + 1)
    for pair in a.pairs():
        assert b.weights(pair, end + DAY) == a.weights(pair, end + DAY)
        assert b.counts(pair, end + DAY) == a.counts(pair, end + DAY)


def test_counts_carried_over_are_counted_not_scored():
    t = AdaptiveSuccessorTable((DAY,))
    t.add_counts((1, 2), {3: 4.0, 5: 1.0}, 0)
    assert t.counts((1, 2), DAY) == pytest.approx({3: 2.0, 5: 0.5}, rel=1e-12)
    assert t.estimate((1, 2), DAY) == pytest.approx((2.5, {3: 2.0, 5: 0.5}, 5.0), rel=1e-12)


# ------------------------------------------------------------------- the job's state: arrival order is free


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(a[k])) for k in a)


def _served(s: LiveSuccessors) -> dict:
    out = {}
    for pair in s.pairs():
        e = s.estimate(pair)
        out[pair] = (e.ts_ms, round(e.support, 9), dict(e.counts), e.weights, e.half_life_ms, e.reference)
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for pair in a:
        (ts, sup, counts, ws, h, ref), (ts2, sup2, counts2, ws2, h2, ref2) = a[pair], b[pair]
        assert (ts, ws, h, ref) == (ts2, ws2, h2, ref2), pair
        assert abs(sup - sup2) <= 1e-8 * max(1.0, sup) and _close(counts, counts2), pair


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 120), scored_share=st.floats(0.0, 1.0),
       data=st.data())
def test_answers_do_not_depend_on_arrival_order(seed, n, scored_share, data):
    """Observed in any order, scored in the canonical one (a prefix of it, the rest still pending, possibly
    scored before it is observed): every pair's answer equals that of the stream taken in order. Collisions on
    every key: few clusters, equal times, equal (triple, time, user)."""
    rng = random.Random(seed)
    events = [((c1, c2, c), rng.choice([0, 1, 2]) * 3_600_000, rng.choice("uvw"))
              for _ in range(n) for c1, c2, c in [rng.sample(range(4), 3)]]
    canonical = sorted(events)
    k = int(len(canonical) * scored_share)
    want = LiveSuccessors(trend_window_ms=3_600_000)
    for triple, ts, user in canonical[:k]:
        want.update(triple, ts, user)
    for triple, ts, user in canonical[k:]:
        want.observe(triple, ts, user)
    got = LiveSuccessors(trend_window_ms=3_600_000)
    ops = [("o", e) for e in data.draw(st.permutations(events))]
    # the scores, in their canonical order, interleaved anywhere with the observations (a score may come first)
    scores = [("s", e) for e in canonical[:k]]
    merged, i = [], 0
    for op_ in ops:
        while i < len(scores) and data.draw(st.booleans()):
            merged.append(scores[i])
            i += 1
        merged.append(op_)
    merged += scores[i:]
    for kind, (triple, ts, user) in merged:
        (got.observe if kind == "o" else got.score)(triple, ts, user)
    _same(_served(got), _served(want))
    snap = LiveSuccessors.from_snapshot(pickle.loads(pickle.dumps(got.snapshot())))
    _same(_served(snap), _served(want))


def test_live_successors_in_one_ordered_stream_is_the_table():
    s = LiveSuccessors()
    t = AdaptiveSuccessorTable()
    for triple, ts in _random_triples(5, 800):
        s.update(triple, ts)
        t.update(triple, ts)
    for pair in t.pairs():
        e = s.estimate(pair)
        # the weights are those right after the pair's latest transition (t's are read later: back-off moved)
        assert dict(e.counts) == pytest.approx(t.mix(pair, e.ts_ms, [w for _, w in e.weights])[0], rel=1e-12)
        assert e.support == pytest.approx(sum(dict(e.counts).values()), rel=1e-9)
    assert s.pending((0, 1)) == [] and len(s) == len(t)


@pytest.mark.parametrize("seed,half_lives,span_days", [
    (0, DEFAULT_HALF_LIVES_MS, 40),
    (1, (86_400_000, float("inf")), 400),  # 1-day counts renormalise every 64 days
    (2, (3_600_000, 7 * 86_400_000), 200),  # 1-hour counts renormalise often
])
def test_a_pairs_compact_record_is_a_decayed_counter_per_half_life_value_for_value(seed, half_lives, span_days):
    """The table keeps each pair in one compact record (``_PairCounts``); it must hold exactly what a
    DecayedCounter per half-life and one for the scores held: the same stored values, references and totals
    after the same updates (late ones, weighted ones, renormalisations), and the same snapshots."""
    import random

    from operators.adaptive_successors import _N, _PairCounts
    from operators.successors import DecayedCounter

    day = 86_400_000
    rng = random.Random(seed)
    rec, inv = _PairCounts(len(half_lives)), tuple(1.0 / h for h in half_lives)
    counters, scores = [DecayedCounter(h) for h in half_lives], DecayedCounter(14 * day)
    ts = 0
    for i in range(3_000):
        ts += rng.randrange(0, 2 * span_days * day // 3_000 + 1)
        t = ts - (rng.randrange(3 * day) if rng.random() < 0.1 else 0)  # some late
        c, w = rng.randrange(9), (1.0 if rng.random() < 0.9 else rng.random() * 3)
        lps = [(k, rng.uniform(-1, 1)) for k in range(len(half_lives))]
        rec.score(lps, t, 1.0 / scores.half_life_ms)
        scores.update_each([*lps, (_N, 1.0)], t)
        rec.count(c, t, inv, w)
        for n in counters:
            n.update(c, t, w)
        if i % 500 == 0:
            got_counts, got_scores = rec.snapshots(half_lives, scores.half_life_ms)
            assert got_counts == tuple(n.snapshot() for n in counters)
            assert got_scores == scores.snapshot()
            now = t + rng.randrange(day)
            for h, n in enumerate(counters):
                assert rec.total(h, now, inv[h]) == n.total(now)
                assert rec.scale(h, now, inv[h]) == n._scale(now)  # noqa: SLF001
            assert [rec.score_value(k, now, 1.0 / scores.half_life_ms) for k in range(len(half_lives))] == \
                [scores.value(k, now) for k in range(len(half_lives))]
            again = _PairCounts.from_snapshots(got_counts, got_scores)
            assert again.snapshots(half_lives, scores.half_life_ms) == (got_counts, got_scores)


def test_a_table_pickled_with_a_counter_per_half_life_per_pair_resumes_exactly():
    """A recovery store of an earlier version holds tables whose pairs are (DecayedCounter per half-life, score
    DecayedCounter), pickled as slots: unpickled, each becomes a compact record with the same values, and the
    table goes on exactly as one that never stopped."""
    from operators.successors import DecayedCounter

    rng = random.Random(5)
    stream = [((a, b, c), i * 60_000) for i in range(2_000) for a, b, c in [rng.sample(range(9), 3)]]
    t, ref = AdaptiveSuccessorTable(), AdaptiveSuccessorTable()
    for tr, ts in stream[:1_500]:
        t.update(tr, ts)
        ref.update(tr, ts)
    old_pairs = {}
    for p, (ns, sc) in zip(t.pairs(), (s[1:] for s in t.snapshot().pairs), strict=True):
        old_pairs[p] = ([DecayedCounter.from_snapshot(n) for n in ns], DecayedCounter.from_snapshot(sc))
    state = {name: getattr(t, name) for name in AdaptiveSuccessorTable.__slots__ if name not in ("_inv", "_score_inv")}
    state["_pairs"] = old_pairs
    resumed = AdaptiveSuccessorTable.__new__(AdaptiveSuccessorTable)
    resumed.__setstate__((None, state))  # how a slots object without __getstate__ was pickled
    for tr, ts in stream[1_500:]:
        resumed.update(tr, ts)
        ref.update(tr, ts)
    assert resumed.to_plain() == ref.to_plain()
    assert pickle.loads(pickle.dumps(resumed)).to_plain() == ref.to_plain()


def _stream(seed: int, n: int, clusters: int = 4) -> list[tuple[tuple[int, int, int], int]]:
    """Triples with collisions on every key (few clusters, repeated and out-of-order times)."""
    rng = random.Random(seed)
    out, ts = [], 0
    for _ in range(n):
        ts += rng.choice([0, 0, 1, 3_600_000, DAY])
        c1, c2, c3 = rng.sample(range(clusters), 3)
        out.append(((c1, c2, c3), ts - rng.choice([0, 0, 0, 5_000])))
    return out


def _same_state(a: AdaptiveSuccessorTable, b: AdaptiveSuccessorTable) -> bool:
    return a.snapshot() == b.snapshot()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 150), flush_every=st.integers(1, 40),
       half_lives=st.sampled_from([DEFAULT_HALF_LIVES_MS, (DAY, INF), (DAY,)]))
def test_a_mirror_of_exported_records_estimates_as_the_table(seed, n, flush_every, half_lives):
    """The job's cadence step reads C_p from the records the successor step exports at each check (export, then
    install in a mirror; pickled, as between processes): for every pair, the mirror's estimate equals the table's
    bit for bit, at the check and later, when each check exports the pairs learned since the one before."""
    table, mirror = AdaptiveSuccessorTable(half_lives), AdaptiveSuccessorTable(half_lives)
    touched: dict = {}
    stream = _stream(seed, n)
    for i, (triple, ts) in enumerate(stream):
        table.update(triple, ts)
        touched[triple[:2]] = None
        if (i + 1) % flush_every and i < n - 1:
            continue
        mirror.install(pickle.loads(pickle.dumps(table.export([*touched, (-1, -2)]))))  # (an unseen pair: left out)
        touched = {}
        assert sorted(mirror.pairs()) == sorted(table.pairs())
        for pair in table.pairs():
            for later in (ts, ts + DAY, ts + 40 * DAY):
                assert mirror.estimate(pair, later) == table.estimate(pair, later)
