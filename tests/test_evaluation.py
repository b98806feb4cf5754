"""The offline hit-rate experiment (operators/evaluation.py): exact rule, strategies, Jaccard, report, plot."""

from __future__ import annotations

import json
import random

import pytest

from operators.evaluation import DAY_MS, PERIODS, STRATEGIES, EvalConfig, evaluate, plot_report
from operators.transitions import mine_triples

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
H = 3_600_000
HL2 = (2 * DAY_MS,)  # one fixed half-life of 2 days: the hand-worked examples' counts


def _walks(seed: int, users: int = 120, days: int = 12, switch_day: float | None = None) -> list[tuple[str, int, int]]:
    """Each user repeats the walk x, 1, 2, s every ~6 h (x drawn from 6..15); s = 3, or 5 from ``switch_day``."""
    rng = random.Random(seed)
    evs = []
    for u in range(users):
        t = rng.randrange(6 * H)
        while t < days * DAY_MS:
            s = 5 if switch_day is not None and t >= switch_day * DAY_MS else 3
            for k, c in enumerate((rng.randrange(6, 16), 1, 2, s)):
                evs.append((f"u{u}", c, T0 + t + k * 60_000))
            t += rng.randrange(5 * H, 7 * H)
    evs.sort(key=lambda e: e[2])
    return evs


def _markov(seed: int, users: int = 300, clusters: int = 8, days: int = 8, per_user: int = 60):
    """Stationary second-order chain: each pair has 3 fixed successors with probabilities 0.5, 0.3, 0.2."""
    rng = random.Random(seed)
    succ = {}
    for a in range(clusters):
        for b in range(clusters):
            if a != b:
                succ[(a, b)] = rng.sample([c for c in range(clusters) if c not in (a, b)], 3)
    evs = []
    for u in range(users):
        a, b = rng.sample(range(clusters), 2)
        for t in sorted(rng.randrange(days * DAY_MS) for _ in range(per_user)):
            c = rng.choices(succ[(a, b)], weights=(5, 3, 2))[0]
            evs.append((f"u{u}", c, T0 + t))
            a, b = b, c
    evs.sort(key=lambda e: e[2])
    return evs


def test_rule_exactness_hand_worked():
    # One user: 1, 2, 2, 3, 1, 2, 3 at ts 0..6 (no warm-up, min_support 0.5, next_n 3).
    # Dedup sequence [1, 2, 3, 1, 2, 3]; triples (1,2,3) @3, (2,3,1) @4, (3,1,2) @5, (1,2,3) @6 -> 4 triples.
    # Points (pair -> truth = later novel clusters): (1,2)@1 -> [3]; (2,3)@3 -> [1]; (3,1)@4 -> [2];
    # (1,2)@5 -> [3]; (2,3)@6 -> [] (not evaluated). The duplicate 2 @2 is no point. So 4 predictions.
    # streaming: @1 nothing known -> miss; @3 empty (its own triple (1,2,3) lands after) -> miss;
    # @4 no row (3,1), global {3} minus {3,1} -> nothing -> miss; @5 row (1,2) = {3} -> 3 -> hit. 1 hit.
    # frozen / refresh_*: the snapshot at start_ms = ts 0 holds no triple, never refreshed within a day -> 0.
    # hybrid: empty base, RAG since ts 0 = streaming -> 1 hit.
    seq = [1, 2, 2, 3, 1, 2, 3]
    evs = [("a", c, T0 + i) for i, c in enumerate(seq)]
    r = evaluate(evs, config=EvalConfig(warmup_ms=0, min_support=0.5, half_lives_ms=HL2))
    assert r["triples"] == len(mine_triples(seq)) == 4
    assert r["predictions"] == 4
    assert r["hits"] == {"frozen": 0, "refresh_2d": 0, "refresh_1d": 0, "streaming": 1, "hybrid": 1}
    assert r["hit_rate"]["streaming"] == 0.25 and r["hit_rate"]["frozen"] == 0.0
    assert (r["start_ms"], r["end_ms"], r["users"]) == (T0, T0 + 6, 1)
    assert [d["predictions"] for d in r["per_day"]] == [4] and r["per_day"][0]["day"] == "2026-01-01"


def test_refresh_snapshot_holds_only_earlier_triples():
    # Warm-up of 1 day teaches (1,2)->3 (5 users); after day 1 (1,2)->4 (5 users); probe users walk 1, 2, 4.
    evs = [(f"w{u}", c, T0 + u * H + k) for u in range(5) for k, c in enumerate((1, 2, 3))]
    evs += [(f"x{u}", c, T0 + DAY_MS + u * H + k) for u in range(5) for k, c in enumerate((1, 2, 4))]
    evs += [(f"p{u}", c, T0 + 2 * DAY_MS + H + u * H + k) for u in range(3) for k, c in enumerate((1, 2, 4))]
    r = evaluate(evs, config=EvalConfig(warmup_ms=DAY_MS, min_support=0.5, half_lives_ms=HL2))
    # Evaluated: the 5 x-users' (1,2) points (truth [4]; tables at start say 3) and the 3 probes (truth [4]).
    assert r["predictions"] == 8
    # streaming at x-user u (half-life 2 days): 4s weigh ~u (ages of hours), 3s ~5 * 2**-0.5 = 3.5 -> it says 4
    # from x4 on: 1 + 3 probes = 4 hits. refresh_1d: the x-users read the start snapshot (3s), the probes the
    # day-2 snapshot (5 fours at ~2**-0.5 vs 5 threes at 2**-1) -> 3 hits. frozen and refresh_2d keep 3 -> 0.
    # hybrid without a fine-tune: the live counts wherever their support reaches min_support -> as streaming.
    assert r["hits"] == {"frozen": 0, "refresh_2d": 0, "refresh_1d": 3, "streaming": 4, "hybrid": 4}
    # with a fine-tune at the start: its RAG holds only 4s, support ~1 >= 0.5 from x1 on -> x1..x4 + 3 probes = 7
    # (x0: empty RAG -> the live counts' row, 3 -> miss).
    ft = evaluate(evs, finetune_ms=[T0 + DAY_MS], config=EvalConfig(warmup_ms=DAY_MS, min_support=0.5,
                                                                      half_lives_ms=HL2))
    assert ft["hits"] == {"frozen": 0, "refresh_2d": 0, "refresh_1d": 3, "streaming": 4, "hybrid": 7}
    # one fixed half-life: the adaptive default is that half-life exactly
    assert r["by_half_life"] == {"2d": r["hit_rate"]} and set(r["winner"].values()) == {"adaptive"}


def test_no_peeking():
    # Warm-up teaches (1,2)->3. After start, user u walks 7, 8, 9: at its (7,8) point the answer 9 arrives with
    # the very next engagement, yet no table may know it -> miss (global fallback says 3). User v then walks
    # 7, 8, 9: the streaming table has learnt (7,8)->9 from u -> hit; frozen still cannot.
    evs = [(f"w{u}", c, T0 + u * 1000 + k) for u in range(4) for k, c in enumerate((1, 2, 3))]
    evs += [("u", c, T0 + DAY_MS + k) for k, c in enumerate((7, 8, 9))]
    evs += [("v", c, T0 + DAY_MS + H + k) for k, c in enumerate((7, 8, 9))]
    r = evaluate(evs, config=EvalConfig(warmup_ms=DAY_MS, min_support=0.5, half_lives_ms=HL2))
    assert r["predictions"] == 2
    assert r["hits"] == {"frozen": 0, "refresh_2d": 0, "refresh_1d": 0, "streaming": 1, "hybrid": 1}
    single = evaluate(evs[:-3], config=EvalConfig(warmup_ms=DAY_MS, min_support=0.5, half_lives_ms=HL2))
    assert single["predictions"] == 1 and all(h == 0 for h in single["hits"].values())


def test_planted_switch_orders_strategies():
    evs = _walks(7, switch_day=6)
    r = evaluate(evs)
    hr = r["hit_rate"]
    assert hr["streaming"] > hr["refresh_2d"] > hr["frozen"]
    assert hr["refresh_1d"] >= hr["refresh_2d"]
    assert r["predictions"] > 10_000 and r["users"] == 120
    hybrid = evaluate(evs, finetune_ms=[T0 + 8 * DAY_MS])
    assert hybrid["hit_rate"]["hybrid"] >= hybrid["hit_rate"]["frozen"]
    assert hybrid["finetune_ms"] == [T0 + 8 * DAY_MS]
    # the per-strategy columns besides hybrid do not depend on fine-tune times
    assert {s: hybrid["hits"][s] for s in STRATEGIES if s != "hybrid"} == \
           {s: r["hits"][s] for s in STRATEGIES if s != "hybrid"}


def test_stationary_stream_strategies_agree_and_jaccard_near_one():
    r = evaluate(_markov(3))
    rates = list(r["hit_rate"].values())
    assert r["predictions"] > 5_000
    assert max(rates) - min(rates) <= 0.03
    assert r["jaccard_top5"]["pairs_compared"] > 50
    assert r["jaccard_top5"]["mean"] > 0.95
    for s in STRATEGIES:
        lo, hi = r["ci95"][s]
        assert lo < r["hit_rate"][s] < hi


def test_jaccard_hand_example():
    # Pair (1,2). Period 0 counts {3:5, 4:4, 5:3, 6:2, 7:1, 8:1} (16) -> top-5 {3,4,5,6,7} (7 beats 8 on the tie).
    # Period 1 counts {3:5, 4:5, 9:4, 10:3, 7:2, 11:1} (20) -> top-5 {3,4,9,10,7}.
    # Jaccard = |{3,4,7}| / |{3,4,5,6,7,9,10}| = 3/7.
    p0 = [3] * 5 + [4] * 4 + [5] * 3 + [6] * 2 + [7, 8]
    p1 = [3] * 5 + [4] * 5 + [9] * 4 + [10] * 3 + [7] * 2 + [11]
    evs = []
    for day, succs in ((0, p0), (1, p1)):
        for u, s in enumerate(succs):
            evs += [(f"d{day}u{u}", c, T0 + day * DAY_MS + u * 1000 + k) for k, c in enumerate((1, 2, s))]
    r = evaluate(evs, config=EvalConfig(jaccard_min_support=16))
    j = r["jaccard_top5"]
    assert j["pairs_compared"] == 1 and j["mean"] == round(3 / 7, 5)
    assert j["per_period"] == [{"start_ms": T0 + DAY_MS, "day": "2026-01-02", "pairs": 1, "mean": round(3 / 7, 5)}]
    assert evaluate(evs, config=EvalConfig(jaccard_min_support=17))["jaccard_top5"]["mean"] is None


def test_jaccard_per_week_with_a_floor_that_scales():
    # The hand example's two periods as two weeks: floor = jaccard_min_support * sqrt(7); 16 transitions in the
    # first week pass 6 * sqrt(7) = 15.9, not 7 * sqrt(7) = 18.5.
    p0 = [3] * 5 + [4] * 4 + [5] * 3 + [6] * 2 + [7, 8]
    p1 = [3] * 5 + [4] * 5 + [9] * 4 + [10] * 3 + [7] * 2 + [11]
    evs = []
    for week, succs in ((0, p0), (1, p1)):
        for u, s in enumerate(succs):
            evs += [(f"w{week}u{u}", c, T0 + week * 7 * DAY_MS + u * H + k) for k, c in enumerate((1, 2, s))]
    week = PERIODS["week"]
    j = evaluate(evs, config=EvalConfig(period_ms=week, jaccard_min_support=6))["jaccard_top5"]
    assert j["mean"] == round(3 / 7, 5) and j["period_ms"] == week and j["min_support"] == round(6 * 7 ** 0.5, 3)
    assert [p["start_ms"] for p in j["per_period"]] == [T0 + week]
    assert evaluate(evs, config=EvalConfig(period_ms=week, jaccard_min_support=7))["jaccard_top5"]["mean"] is None
    # per day, no pair has two consecutive days with data: nothing to compare
    assert evaluate(evs, config=EvalConfig(jaccard_min_support=1))["jaccard_top5"]["pairs_compared"] == 0


def test_warmup_excludes_early_points():
    early = [("a", c, T0 + k * H) for k, c in enumerate((1, 2, 3, 4, 5))]  # 3 evaluable points, all early
    r = evaluate(early, config=EvalConfig(warmup_ms=DAY_MS))
    assert r["predictions"] == 0 and all(v is None for v in r["hit_rate"].values())
    assert r["start_ms"] == T0 + DAY_MS and r["per_day"] == []
    late = early + [("a", c, T0 + DAY_MS + k * H) for k, c in enumerate((6, 7, 8))]
    r = evaluate(late, config=EvalConfig(warmup_ms=DAY_MS))
    # points after start: 5->6 (pair (5,6), truth [7, 8]) and 6->7 (pair (6,7), truth [8]); 7->8 has no truth
    assert r["predictions"] == 2
    assert sum(d["predictions"] for d in r["per_day"]) == 2
    assert evaluate(late, config=EvalConfig(warmup_ms=0))["predictions"] == 6


def test_empty_input():
    r = evaluate([])
    assert r["predictions"] == 0 and r["triples"] == 0 and r["users"] == 0
    assert all(v is None for v in r["hit_rate"].values())
    assert all(v is None for v in r["ci95"].values())
    assert r["per_day"] == [] and r["jaccard_top5"] == {"mean": None, "pairs_compared": 0, "per_period": []}
    json.dumps(r)


def test_report_is_json_ready_and_complete():
    r = evaluate(_walks(1, users=20, days=5), finetune_ms=[T0 + 3 * DAY_MS])
    again = json.loads(json.dumps(r))
    assert again == r
    assert set(r["hit_rate"]) == set(r["hits"]) == set(r["ci95"]) == set(STRATEGIES)
    assert set(r["definitions"]["strategies"]) == set(STRATEGIES) and r["definitions"]["hit"]
    assert r["config"] == {"warmup_ms": 2 * DAY_MS, "next_n": 3, "min_support": 3.0, "period_ms": DAY_MS,
                           "jaccard_min_support": 20,
                           "half_lives_ms": [DAY_MS, 2 * DAY_MS, 7 * DAY_MS, 30 * DAY_MS, None]}
    assert set(r["by_half_life"]) == {"1d", "2d", "7d", "30d", "none"}
    for h, rates in r["by_half_life"].items():
        assert set(rates) == set(STRATEGIES)
        assert set(r["adaptive_minus_fixed"][h]) == set(STRATEGIES)
        d = r["adaptive_minus_fixed"][h]["streaming"]
        assert d["diff"] == pytest.approx(r["hit_rate"]["streaming"] - rates["streaming"], abs=2e-5)
    assert set(r["winner"]) == set(STRATEGIES) and set(r["winner"].values()) <= {"adaptive", *r["by_half_life"]}
    assert sum(d["predictions"] for d in r["per_day"]) == r["predictions"]
    assert [d["start_ms"] for d in r["per_day"]] == [r["start_ms"] + k * DAY_MS for k in range(len(r["per_day"]))]


def test_bad_input():
    with pytest.raises(ValueError, match="out of event-time order"):
        evaluate([("a", 1, 10), ("a", 2, 5)])
    with pytest.raises(ValueError, match="cluster and ts_ms"):
        evaluate([("a", "x", 10)])
    with pytest.raises(ValueError, match="finetune_ms"):
        evaluate([("a", 1, 10)], finetune_ms=[1.5])


@pytest.mark.parametrize("field, value", [
    ("warmup_ms", -1), ("warmup_ms", 1.0), ("half_lives_ms", (0,)), ("half_lives_ms", ()),
    ("half_lives_ms", (DAY_MS, DAY_MS)), ("half_lives_ms", (1.5,)), ("next_n", 0), ("next_n", True),
    ("min_support", -0.1), ("min_support", float("nan")), ("min_support", "3"), ("period_ms", 0),
    ("jaccard_min_support", 0),
])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})


def test_plot_report_writes_png(tmp_path):
    r = evaluate(_walks(2, users=30, days=6, switch_day=3), finetune_ms=[T0 + 4 * DAY_MS])
    out = plot_report(r, tmp_path / "hit_rate.png")
    data = out.read_bytes()
    assert out == tmp_path / "hit_rate.png" and len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plot_report(evaluate([]), tmp_path / "empty.png")
    assert empty.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
