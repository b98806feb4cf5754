"""Cadence controller: its pure decisions, and exact decisions pinned on hand-made drift histories."""

from __future__ import annotations

import json
import math
import pickle

import orjson
import pytest

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS, AdaptiveSuccessorTable
from operators.cadence import (
    DAY_MS,
    HOUR_MS,
    KINDS,
    CadenceConfig,
    CadenceController,
    CadenceEvent,
    drift_change,
    finetune_due,
    refresh_due,
    total_variation,
)

H = HOUR_MS
INF = float("inf")
NO_DECAY = 10**15  # a half-life so long that hand arithmetic is exact to ~1e-9


def hourly(pair, per_hour, successor, h0, h1):
    """``per_hour`` triples of ``pair`` evenly spread over each hour in [h0, h1); ``successor(i)`` of the i-th."""
    return [(pair[0], pair[1], successor(h * per_hour + i), h * H + i * H // per_hour)
            for h in range(h0, h1) for i in range(per_hour)]


def merged(*streams):
    return sorted((t for s in streams for t in s), key=lambda t: t[3])


def mix_70_30(i):  # (1, 2) -> 3 70% / 4 30%, deterministically interleaved
    return (3, 4, 3, 3, 4, 3, 3, 4, 3, 3)[i % 10]


FIXED_2D = {"half_life_ms": 2 * DAY_MS}  # the hand-worked cases below count with one fixed half-life


def run(triples, cfg=None, until=None):
    ctl = CadenceController(cfg if cfg is not None else CadenceConfig(**FIXED_2D))
    events = ctl.on_triples(triples)
    if until is not None:
        events += ctl.advance(until)
    return ctl, events


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("field", "value"), [
    ("half_life_ms", 0), ("half_life_ms", 1.5), ("half_life_ms", True), ("check_every_ms", -1),
    ("check_every_ms", "1h"), ("refresh_cost", -0.1), ("refresh_cost", float("inf")), ("finetune_cost", 0.0),
    ("miss_cost", float("nan")), ("miss_cost", -1), ("min_support", 0), ("min_change", 0.0), ("min_change", 1.5),
    ("min_finetune_interval_ms", -1), ("top_k", 0), ("top_k", 2.0),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CadenceConfig(**{field: value})


def test_config_accepts_edges():
    CadenceConfig(refresh_cost=0, miss_cost=0, min_change=1, min_finetune_interval_ms=0, top_k=1, min_support=0.5)


# ------------------------------------------------------------------------------------------------- decisions


def test_total_variation():
    assert total_variation({3: 0.7, 4: 0.3}, {3: 0.7, 4: 0.3}) == 0.0
    assert total_variation({3: 1.0}, {5: 1.0}) == 1.0
    assert total_variation({3: 0.5, 5: 0.5}, {3: 0.8, 4: 0.2}) == pytest.approx(0.5)
    assert total_variation({3: 1.0}, None) == 1.0


@pytest.mark.parametrize(("p", "q"), [
    ({3: 0.5, 5: 0.5}, {3: 1.0}), ({3: 0.7, 4: 0.3}, {3: 0.4, 4: 0.3, 6: 0.3}), ({3: 1.0}, {5: 1.0}),
])
def test_drift_change_with_plenty_of_data_is_the_total_variation(p, q):
    assert drift_change(p, 1e12, q, 1e12) == pytest.approx(total_variation(p, q), abs=1e-5)


def test_drift_change_within_sampling_noise_is_zero():
    assert drift_change({3: 0.7, 4: 0.3}, 50, {3: 0.7, 4: 0.3}, 50) == 0.0
    assert drift_change({3: 0.6, 4: 0.4}, 20, {3: 0.5, 4: 0.5}, 20) == 0.0  # total variation 0.1
    assert drift_change({3: 0.55, 4: 0.45}, 50, {3: 0.5, 4: 0.5}, 100) == 0.0  # total variation 0.05
    assert drift_change({3: 0.6, 4: 0.4}, 10, {3: 0.5, 4: 0.5}, 1e12) == 0.0  # one thin side is noise enough


@pytest.mark.parametrize("n", [0, 1, 2.5, 1e9])
def test_drift_change_against_a_missing_distribution_is_one(n):
    assert drift_change({3: 1.0}, n, None, n) == 1.0
    assert drift_change({3: 0.5, 4: 0.5}, n, {}, 1e9) == 1.0


@pytest.mark.parametrize(("p", "q"), [
    ({3: 0.5, 5: 0.5}, {3: 1.0}), ({3: 0.6, 4: 0.4}, {3: 0.5, 4: 0.5}), ({3: 0.2, 4: 0.3, 5: 0.5}, {6: 1.0}),
])
def test_drift_change_grows_with_the_samples_up_to_the_total_variation(p, q):
    ns = [1, 2, 5, 10, 20, 50, 100, 1_000, 10_000, 1e6, 1e9]
    tv = total_variation(p, q)
    for fixed in (20, 1e6):  # more samples on either side: never less change, never more than the total variation
        for changes in ([drift_change(p, n, q, fixed) for n in ns], [drift_change(p, fixed, q, n) for n in ns]):
            assert all(a <= b for a, b in zip(changes, changes[1:], strict=False)), changes
            assert all(0.0 <= c <= tv for c in changes)
    both = [drift_change(p, n, q, n) for n in ns]
    assert all(a <= b for a, b in zip(both, both[1:], strict=False)) and both[0] < both[-1]


def test_drift_change_by_hand():
    # {3: .5, 5: .5} (16 samples) vs {3: 1} (8): tv 0.5; each successor's mean share m is .75 / .25, m(1 - m) = 3/16,
    # 1/16 + 1/8 = 3/16, so each |difference| has mean sqrt(2/pi * 3/16 * 3/16) = 3/16 sqrt(2/pi); half their sum
    # is 3/16 sqrt(2/pi) too
    assert drift_change({3: 0.5, 5: 0.5}, 16, {3: 1.0}, 8) == pytest.approx(0.5 - 3 / 16 * math.sqrt(2 / math.pi))


def test_refresh_due_cases():
    cfg = CadenceConfig()
    assert refresh_due(19.9, 1.0, 10_000, cfg) == (False, "support 19.9 < min support 20")
    assert refresh_due(100.0, 0.149, 10_000, cfg) == (False, "change 0.15 < min change 0.15")
    assert refresh_due(100.0, 0.5, 38, cfg) == (
        False, "expected loss 0.95 (38 events x change 0.50 x miss cost 0.05) < refresh cost 1")
    assert refresh_due(100.0, 0.5, 40, cfg) == (
        True, "expected loss 1.00 (40 events x change 0.50 x miss cost 0.05) >= refresh cost 1")
    assert not refresh_due(100.0, 0.5, 40, CadenceConfig(refresh_cost=1.5))[0]


def test_finetune_due_cases():
    cfg = CadenceConfig()
    assert finetune_due(1_999.9, 30 * DAY_MS, cfg) == (False, "drift debt 1,999.9 < fine-tune cost 2,000")
    assert finetune_due(2_150.3, 3 * DAY_MS - 1, cfg) == (
        False, "drift debt 2,150.3 >= fine-tune cost 2,000 but only 3.0 days since the last fine-tune (minimum 3.0)")
    assert finetune_due(2_150.3, int(4.2 * DAY_MS), cfg) == (
        True, "drift debt 2,150.3 >= fine-tune cost 2,000 after 4.2 days")


# ---------------------------------------------------------------------------------------------------- events


def test_event_shapes_and_kafka_encoding():
    e = CadenceEvent("rag_refresh", 7 * H, ({"pair": [1, 2], "change": 0.5},), "why", {"pairs": 1})
    assert e.event_id == f"rag_refresh-{7 * H}"
    assert e.to_dict() == {"event_id": e.event_id, "kind": "rag_refresh", "ts": 7 * H,
                           "pairs": [{"pair": [1, 2], "change": 0.5}], "reason": "why", "evidence": {"pairs": 1}}
    key, value = e.to_kafka()
    assert key == b"rag_refresh" and orjson.loads(value) == e.to_dict()
    assert CadenceEvent("fine_tune", 0, (), "r", {}).to_dict()["pairs"] == []
    assert KINDS == ("rag_refresh", "fine_tune")
    with pytest.raises(ValueError, match="rag_refresh"):
        CadenceEvent("refresh", 0, (), "r", {})


# -------------------------------------------------------------------------------------------------- histories


def test_stationary_history_never_refreshes_nor_fine_tunes():
    triples = merged(hourly((1, 2), 100, mix_70_30, 0, 240), hourly((5, 6), 60, lambda i: 7 + i % 2, 0, 240))
    ctl, events = run(triples, until=240 * H)
    assert events == []
    s = ctl.status()
    assert s["pairs"] == 2 and s["stale_pairs"] == 0 and s["refreshes"] == 0 and s["finetunes"] == 0
    assert ctl.last_finetune_ms is None and ctl.now_ms == 240 * H
    assert 0.0 <= ctl.debt < 1.0  # sampling wiggle of an interleaved mix, far below the fine-tune cost




def busy(hours):  # (1, 2), 200 triples an hour: 3 80% / 4 20%, then 5 80% / 4 20% from hour 24
    return hourly((1, 2), 200, lambda i: 4 if i % 5 == 0 else 3, 0, 24) \
        + hourly((1, 2), 200, lambda i: 5 if i % 5 else 4, 24, hours)


BUSY = busy(48)
QUIET = [(8, 9, 3, i * 60_000) for i in range(30)] \
    + [(8, 9, 3 if h < 24 else 5, h * H + 1) for h in range(3, 48, 3)]  # same switch, one triple every 3 hours
# (the quiet pair's drift beats sampling noise: change ~0.21 at hour 48 over 15 stale triples, a loss of ~0.15)


def test_abrupt_switch_refreshes_the_busy_pair_not_the_quiet_one():
    ctl, events = run(merged(BUSY, QUIET), until=48 * H)
    # the row of hour 1 rests on ~200 triples, so its sampling noise (~0.03) delays each refresh a little
    assert [(e.kind, e.ts_ms // H) for e in events] == [("rag_refresh", 30), ("rag_refresh", 38)]
    assert all([p["pair"] for p in e.pairs] == [[1, 2]] for e in events)
    first = events[0].pairs[0]
    assert first["top_before"] == [3, 4] and first["top_after"] == [3, 4, 5]
    assert first["stale_traffic"] == 29 * 200 and first["change"] == pytest.approx(0.165409, abs=1e-6)
    assert first["expected_loss"] == pytest.approx(first["stale_traffic"] * first["change"] * 0.05, abs=1e-3)
    assert events[0].evidence == {"pairs": 1, "cost": 1.0, "expected_loss": first["expected_loss"]}
    assert events[0].reason == ("refresh 1 stale pair: expected loss 47.97 >= refresh cost 1; "
                                "largest (1, 2): change 0.17 over 5,800 events")
    assert events[-1].pairs[0]["top_before"] == [3, 4, 5] and events[-1].pairs[0]["top_after"] == [3, 5, 4]
    assert ctl.status()["stale_pairs"] == 1  # the quiet pair drifted too, but its stale row costs < one refresh
    assert ctl.refreshes == 2 and ctl.finetunes == 0


def test_higher_min_change_refreshes_once_the_new_successor_leads():
    _, events = run(merged(busy(72), QUIET), CadenceConfig(min_change=0.5, **FIXED_2D), until=72 * H)
    assert [e.ts_ms // H for e in events] == [56]  # total variation ~0.53 less ~0.03 noise of the hour-1 row
    (p,) = events[0].pairs
    assert p["pair"] == [1, 2] and p["top_before"] == [3, 4] and p["top_after"][0] == 5


def test_refresh_cost_above_the_expected_loss_refreshes_nothing():
    ctl, events = run(merged(BUSY, QUIET), CadenceConfig(refresh_cost=1e6, **FIXED_2D), until=48 * H)
    assert events == [] and ctl.status()["stale_pairs"] == 2


def test_drift_debt_by_hand():
    cfg = CadenceConfig(half_life_ms=NO_DECAY, min_support=2.0, miss_cost=0.5, refresh_cost=1e9, finetune_cost=1e9)
    ctl = CadenceController(cfg)
    assert ctl.on_triples([(1, 2, 3, i) for i in range(4)] + [(7, 8, 9, 5)]) == []
    ctl.advance(H)
    assert ctl.debt == 0.0  # base set at this first check; (7, 8) has support 1 < 2
    ctl.on_triples([(1, 2, 5, H + i) for i in range(4)])
    # effective sample sizes are 2 x support: base 2 x 4 = 8 (set at hour 1); now 2 x 8 = 16.
    # {3: .5, 5: .5} vs base {3: 1}: tv 0.5; shares' means m = .75 / .25, m(1 - m) = 3/16 each; 1/16 + 1/8 = 3/16;
    # noise = 0.5 * 2 * sqrt(2/pi * 3/16 * 3/16) = 3/16 sqrt(2/pi) = 0.149603 -> change 0.350397
    ctl.advance(2 * H)  # -> 4 events * 0.350397 * 0.5 = 0.700793
    change2 = 0.5 - 3 / 16 * math.sqrt(2 / math.pi)
    assert change2 == pytest.approx(0.350397, abs=1e-6)
    assert ctl.debt == pytest.approx(4 * change2 * 0.5)
    ctl.on_triples([(1, 2, 5, 2 * H + i) for i in range(4)])
    # {3: 1/3, 5: 2/3} (2 x 12 = 24) vs base {3: 1} (8): tv 2/3; m = 2/3 / 1/3, m(1 - m) = 2/9; 1/24 + 1/8 = 1/6;
    # noise = sqrt(2/pi * 2/9 * 1/6) = sqrt(2 / (27 pi)) = 0.153553 -> change 0.513114
    ctl.advance(3 * H)  # -> + 4 * 0.513114 * 0.5 = 1.026227, debt 1.727020
    change3 = 2 / 3 - math.sqrt(2 / (27 * math.pi))
    assert change3 == pytest.approx(0.513114, abs=1e-6)
    assert ctl.debt == pytest.approx(4 * change2 * 0.5 + 4 * change3 * 0.5)
    assert ctl.debt == pytest.approx(1.727020, abs=1e-6)


def test_fine_tune_resets_the_base_and_pairs_it_never_saw_count_as_fully_drifted():
    cfg = CadenceConfig(half_life_ms=NO_DECAY, min_support=2.0, miss_cost=0.5, finetune_cost=1.0,
                        min_finetune_interval_ms=0, refresh_cost=1e9)
    # 8 triples a step (4 are too few: their debt, 4 * 0.350 * 0.5 = 0.70, stays below the cost of 1)
    ctl, events = run([(1, 2, 3, i) for i in range(8)] + [(1, 2, 5, H + i) for i in range(8)], cfg, until=2 * H)
    assert [(e.kind, e.ts_ms) for e in events] == [("fine_tune", 2 * H)]
    # {3: .5, 5: .5} (n = 2 x 16 = 32) vs base {3: 1} (n = 16): tv 0.5; m(1 - m) = 3/16, 1/32 + 1/16 = 3/32;
    # noise = sqrt(2/pi * 3/16 * 3/32) = 0.105786 -> change 0.394214; debt 8 * 0.394214 * 0.5 = 1.576858
    change = 0.5 - math.sqrt(2 / math.pi * 3 / 16 * 3 / 32)
    assert events[0].evidence == {"debt": pytest.approx(8 * change * 0.5, abs=1e-6), "finetune_cost": 1.0,
                                  "since_ms": 0, "days_since": round(2 / 24, 6),
                                  "traffic_weighted_drift": pytest.approx(change, abs=1e-6), "pairs_drifted": 1}
    assert events[0].evidence["debt"] == pytest.approx(1.576858, abs=1e-6)
    assert ctl.debt == 0.0 and ctl.last_finetune_ms == 2 * H
    # (1, 2): {3: 1/3, 5: 2/3} (n = 48) vs the new base {3: .5, 5: .5} (n = 32): tv 1/6; m = 5/12 / 7/12,
    # m(1 - m) = 35/144; 1/48 + 1/32 = 5/96; noise = sqrt(2/pi * 35/144 * 5/96) = 0.089773 -> change 0.076894,
    # below min change 0.15 (a 1/6 move over 24 triples is mostly noise); (6, 7) is new -> 1.0, whatever its support
    events = ctl.on_triples([(1, 2, 5, 2 * H + i) for i in range(8)] + [(6, 7, 8, 2 * H + i) for i in range(8)])
    events += ctl.advance(3 * H)
    assert [(e.kind, e.ts_ms) for e in events] == [("fine_tune", 3 * H)]
    ev = events[0].evidence
    change12 = 1 / 6 - math.sqrt(2 / math.pi * 35 / 144 * 5 / 96)
    assert change12 == pytest.approx(0.076894, abs=1e-6)
    assert ev["debt"] == pytest.approx(8 * change12 * 0.5 + 8 * 1.0 * 0.5, abs=1e-6)  # 4.307578
    assert ev["since_ms"] == 2 * H and ev["pairs_drifted"] == 1
    assert ev["traffic_weighted_drift"] == pytest.approx((8 * change12 + 8) / 16, abs=1e-6)  # 0.538447


PAIRS = [(a, a + 1) for a in range(0, 40, 2)]  # 20 busy pairs


def broad(h0, h1, successor_base):
    return merged(*(hourly(p, 200, lambda i, p=p: successor_base + p[0] + i % 2, h0, h1) for p in PAIRS))


# everything moves at hours 24 and 120; a 6-hour half-life lets each new mix settle within a day
BROAD_CFG = CadenceConfig(half_life_ms=6 * H)
BROAD = broad(0, 24, 100) + broad(24, 120, 200) + broad(120, 216, 300)


def test_broad_drift_fine_tunes_when_debt_pays_for_it_and_not_before_the_interval():
    ctl = CadenceController(BROAD_CFG)
    events = ctl.on_triples(t for t in BROAD if t[3] < 71 * H)
    assert ctl.debt >= 2_000.0 and ctl.finetunes == 0  # paid for since hour 42, but under 3 days since the start
    assert [e.ts_ms // H for e in events] == [26, 28, 31, 36, 47]  # meanwhile rows are refreshed
    assert all(e.kind == "rag_refresh" and len(e.pairs) == 20 for e in events)
    events = ctl.on_triples(t for t in BROAD if t[3] >= 71 * H) + ctl.advance(216 * H)
    fine_tunes = [e for e in events if e.kind == "fine_tune"]
    assert [e.ts_ms // H for e in fine_tunes] == [72, 144]
    ft = fine_tunes[0]
    assert ft.pairs == () and ft.event_id == f"fine_tune-{72 * H}"
    # the base rests on the first hour's ~190 decayed triples a pair: its noise (~0.04) trims every pair's change
    assert ft.evidence == {"debt": pytest.approx(7_675.308, abs=1e-3), "finetune_cost": 2_000.0, "since_ms": 0,
                           "days_since": 3.0, "traffic_weighted_drift": pytest.approx(0.95889, abs=1e-6),
                           "pairs_drifted": 20}
    assert ft.reason == "drift debt 7,675.3 >= fine-tune cost 2,000 after 3.0 days"
    assert not [e for e in events if e.ts_ms == 72 * H and e.kind == "rag_refresh"]
    # the second fine-tune needs the new drift of hour 120, and waits for 3 days after the first
    assert fine_tunes[1].evidence["since_ms"] == 72 * H and fine_tunes[1].evidence["days_since"] == 3.0
    assert fine_tunes[1].reason == "drift debt 3,189.7 >= fine-tune cost 2,000 after 3.0 days"
    assert ctl.finetunes == 2 and ctl.last_finetune_ms == 144 * H and ctl.debt < 2_000.0


def test_no_new_drift_after_a_fine_tune_means_no_second_one():
    ctl, events = run([t for t in BROAD if t[3] < 120 * H], BROAD_CFG, until=120 * H)
    assert [e.ts_ms // H for e in events if e.kind == "fine_tune"] == [72]
    assert [e for e in events if e.ts_ms > 72 * H] == []
    assert ctl.debt == 0.0 and ctl.status()["stale_pairs"] == 0  # residual decay after hour 72 is within noise


# ------------------------------------------------------------------------------------------------- event time


def test_time_jump_runs_a_check_at_every_boundary_passed():
    """A jump from 2h30 to 10h30 checks at 3h, 4h, ... 10h in turn, as a stream batched hour by hour would: the
    switch is refreshed at the first boundary after it (3h), once."""
    ctl, _ = run(hourly((1, 2), 100, lambda i: 3, 0, 2))  # row set at the check of hour 1
    assert ctl.on_triples([(1, 2, 5, 2 * H + 30 * 60_000 + i) for i in range(200)]) == []
    events = ctl.on_triple(1, 2, 5, 10 * H + 30 * 60_000)
    assert [(e.kind, e.ts_ms) for e in events] == [("rag_refresh", 3 * H)]
    (p,) = events[0].pairs
    assert p["stale_traffic"] == 300 and p["top_after"] == [5, 3]  # hour 1 plus the 200 switched triples, once
    assert ctl.debt == pytest.approx(200 * p["change"] * 0.05, abs=1e-5)  # the row is also the base here


def test_late_triple_is_counted_at_its_own_time_and_does_not_move_time_back():
    ctl, _ = run([(1, 2, 3, 10 * H + 5)])
    before = ctl.successors.counts((1, 2), 10 * H + 5)[3]
    assert ctl.on_triple(1, 2, 3, 10 * H + 5 - DAY_MS * 2) == []  # one half-life before the latest
    assert ctl.now_ms == 10 * H + 5
    after = ctl.successors.counts((1, 2), 10 * H + 5)[3]
    assert after - before == pytest.approx(0.5, rel=1e-12)
    assert ctl.advance(5 * H) == [] and ctl.now_ms == 10 * H + 5


# -------------------------------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_snapshot_round_trip_continues_identically(codec):
    cut = 71 * H + 1_234  # mid-hour: triples pending since the last check travel with the snapshot
    _, whole = run(BROAD, BROAD_CFG, until=216 * H)
    first, events = run([t for t in BROAD if t[3] < cut], BROAD_CFG)
    snap = first.snapshot()
    snap = json.loads(json.dumps(snap)) if codec == "json" else pickle.loads(pickle.dumps(snap))
    second = CadenceController.from_snapshot(snap)
    assert second.status() == first.status() and second.config == first.config
    events += second.on_triples(t for t in BROAD if t[3] >= cut) + second.advance(216 * H)
    assert [e.to_dict() for e in events] == [e.to_dict() for e in whole]
    with pytest.raises(ValueError, match="version"):
        CadenceController.from_snapshot({**snap, "version": 99})


# ------------------------------------------------------------------------------- C_p: the adaptive estimate


def test_by_default_c_p_is_the_adaptive_estimate_the_job_serves():
    cfg = CadenceConfig()
    assert cfg.half_life_ms is None and cfg.half_lives() == DEFAULT_HALF_LIVES_MS
    ctl, _ = run(BUSY, cfg, until=48 * H)
    ref = AdaptiveSuccessorTable()
    for c1, c2, c, ts in BUSY:
        ref.update((c1, c2, c), ts)
    pair = (BUSY[0][0], BUSY[0][1])
    assert ctl.successors.counts(pair, 48 * H) == pytest.approx(ref.counts(pair, 48 * H), rel=1e-12)
    assert CadenceConfig(half_life_ms=DAY_MS).half_lives() == (DAY_MS,)


def test_effective_sample_size_counts_an_undecayed_transition_once_and_a_decayed_one_twice():
    for half_lives, factor in (((INF,), 1.0), ((DAY_MS,), 2.0)):
        ctl = CadenceController(CadenceConfig(half_lives_ms=half_lives))
        ctl.on_triples([(1, 2, 3, i * 60_000) for i in range(50)])
        support, dist, size = ctl._read((1, 2), 50 * 60_000)
        assert dist == {3: 1.0} and size == pytest.approx(factor * support, rel=1e-12)


def _flat_state(config: CadenceConfig, **fields) -> dict:
    """A controller's __dict__ as versions before the clock and the book were their own objects pickled it."""
    state = {"config": config, "_now": None, "_start": 0, "_ref": 0, "_pending": {}, "_rows": {}, "_base": {},
             "_n": {}, "_stale": {}, "_debt": 0.0, "_last_finetune": None, "_refreshes": 0, "_finetunes": 0,
             "_stale_pairs": 0, "_stale_keys": set()}
    state.update(fields)
    return state


def test_a_controller_pickled_before_the_adaptive_estimate_resumes_with_its_fixed_half_life():
    """A recovery store of an earlier version holds the controller pickled with its own per-pair counts (each
    scaled to the pair's time in _scaled_at); it resumes as a table of that one half-life, same counts."""
    old = CadenceController.__new__(CadenceController)
    old.__setstate__(_flat_state(CadenceConfig(half_life_ms=2 * DAY_MS), _counts={(1, 2): {3: 4.0, 5: 2.0}},
                                 _scaled_at={(1, 2): 10 * H}, _inv_half_life=1 / (2 * DAY_MS), _now=10 * H,
                                 _ref=10 * H))
    assert old.successors.half_lives_ms == (2 * DAY_MS,) and not hasattr(old, "_counts")
    assert old.successors.counts((1, 2), 10 * H + 2 * DAY_MS) == pytest.approx({3: 2.0, 5: 1.0}, rel=1e-12)
    assert old.on_triple(1, 2, 3, 11 * H) == [] and old.status()["pairs"] == 1
    assert old.now_ms == 11 * H and not hasattr(old, "_now")


def test_a_controller_pickled_before_the_clock_and_book_split_continues_identically():
    """The controller of the version before CadenceClock and CadenceBook kept their fields as its own attributes
    (a recovery store pickled it so): unpickled, it continues event for event as the controller it was."""
    triples = [t for t in BROAD if t[3] < 100 * H]
    ref = CadenceController(BROAD_CFG)
    ref.on_triples(triples[:len(triples) // 2])
    book, clock = ref.book, ref.clock
    flat = _flat_state(ref.config, _table=pickle.loads(pickle.dumps(ref.successors)), _now=clock.now,
                       _start=clock.start, _ref=clock.ref, _pending=dict(clock.pending),
                       **{name: pickle.loads(pickle.dumps(getattr(book, name)))
                          for name in CadenceController._BOOK_FIELDS})
    old = CadenceController.__new__(CadenceController)
    old.__setstate__(flat)
    assert old.snapshot() == ref.snapshot()
    rest = triples[len(triples) // 2:]
    a, b = ref.on_triples(rest) + ref.advance(101 * H), old.on_triples(rest) + old.advance(101 * H)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b] and any(e.kind == "fine_tune" for e in a)
