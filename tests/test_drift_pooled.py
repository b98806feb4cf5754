"""The pooled transition test (issue #14): every pair into a cluster tested together by a CUSUM of predictive
log-likelihood ratios. Seeded streams, exact detection indices (River's style), the multiple-testing and
"moved everywhere" corrections, the alert's evidence, snapshots, and the generator's "source" scenario."""

from __future__ import annotations

import numpy as np
import pytest

from operators.drift import HOUR_MS, DriftConfig, DriftMonitor, PooledTransitionDrift, _test_of, _Window
from streams.generator import GeneratorConfig, WorkloadGenerator

LEVEL = 8.0  # a CUSUM level in nats for these unit streams (the monitor's comes from calibration)


def _stream(change_h: float, hours: int = 220, per_h: int = 3, new_share: float = 0.6, ramp_h: float = 0.0,
            seed: int = 0, pairs: int = 10, stride: int = 1) -> list[tuple[int, int, str]]:
    """(c1, hour, successor): ``pairs`` pairs (c1, X), ``per_h`` triples an hour in all; each pair has two usual
    successors out of "abcde"; from ``change_h`` (ramped over ``ramp_h``) a share ``new_share`` goes to "z"."""
    rng = np.random.default_rng(seed)
    out = []
    for h in range(hours):
        share = new_share * min(1.0, max(0.0, (h - change_h) / ramp_h)) if ramp_h else new_share * (h >= change_h)
        for _ in range(per_h):
            c1 = int(rng.integers(pairs))
            z = rng.random() < share
            out.append((c1 * stride, h, "z" if z else "abcde"[(c1 + int(rng.integers(2))) % 5]))
    return out


def _run(stream: list[tuple[int, int, str]], hours: int = 220, others=None, **kw) -> tuple[list[int], list[float]]:
    """Hours at which the statistic first reaches LEVEL after being below it, and the statistic per hour."""
    d = PooledTransitionDrift(recent_ms=12 * HOUR_MS, **kw)
    by_h: dict[int, list] = {}
    for c1, h, s in stream:
        by_h.setdefault(h, []).append((c1, s))
    hits, stats, above = [], [], False
    for h in range(hours):
        for c1, s in by_h.get(h, []):
            d.update(c1, s, h * HOUR_MS + 1)
        d.evaluate(_Window((h + 1) * HOUR_MS, 48 * HOUR_MS, 72 * HOUR_MS), others)
        stats.append(d.statistic)
        if d.statistic >= LEVEL and not above:
            hits.append(h)
        above = d.statistic >= LEVEL
    return hits, stats


def test_detects_a_change_shared_by_every_pair_at_the_exact_hour():
    """10 pairs, 3 triples an hour in all (0.3 per pair): at hour 150 every pair's successors move to "z"."""
    hits, stats = _run(_stream(change_h=150))
    assert hits == [151]
    assert max(stats[:150]) < 0.75 * LEVEL


@pytest.mark.parametrize("seed", range(5))
def test_quiet_when_stationary(seed):
    hits, stats = _run(_stream(change_h=1e9, seed=seed))
    assert hits == [] and max(stats) < 0.75 * LEVEL


def test_a_gradual_change_accumulates():
    """The same change ramped over 3 days: each 12-hour window moves little, the CUSUM adds it up."""
    hits, _ = _run(_stream(change_h=120, ramp_h=72, hours=240), hours=240)
    assert hits == [138]


def test_pooling_finds_what_no_single_pair_shows():
    """40 pairs, 3 triples an hour in all: each pair sees under 2 triples a day, far below any pair test's
    support, and the pooled statistic still fires within a day."""
    hits, _ = _run(_stream(change_h=150, pairs=40))
    assert hits == [152]


def test_a_successor_that_moved_everywhere_is_left_out():
    """The same change, but "z" rose as much in every other cluster (e.g. a new cluster trending everywhere):
    conditional on the other successors nothing moved."""
    others = ({"z": 500}, {"z": 10.0})
    hits, stats = _run(_stream(change_h=150), others=others)
    assert hits == [] and max(stats) < 0.75 * LEVEL


def test_a_new_pair_is_not_a_drift():
    """Pairs that had no reference (c1 = 100..109) join at hour 150 with successors of their own."""
    old = _stream(change_h=1e9)
    new = [(c1 + 100, h, "z") for c1, h, _ in _stream(change_h=1e9, seed=1) if h >= 150]
    hits, stats = _run(old + new)
    assert hits == [] and max(stats) < 0.75 * LEVEL


def test_state_round_trip_continues_identically():
    stream = _stream(change_h=150)
    a = PooledTransitionDrift(recent_ms=12 * HOUR_MS)
    b = None
    for h in range(200):
        for c1, hh, s in stream:
            if hh == h:
                a.update(c1, s, h * HOUR_MS + 1)
                if b is not None:
                    b.update(c1, s, h * HOUR_MS + 1)
        w = _Window((h + 1) * HOUR_MS, 48 * HOUR_MS, 72 * HOUR_MS)
        ra = a.evaluate(w)
        if b is not None:
            assert b.evaluate(w) == ra
        if h == 152:
            b = PooledTransitionDrift(recent_ms=12 * HOUR_MS).load(a.state())
    assert ra["score"] > LEVEL and ra["support"] > 0 and ra["effect_nats"] > 0.3


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        PooledTransitionDrift(recent_ms=0)
    with pytest.raises(ValueError):
        DriftConfig(pooled_warning=-1.0)


# -------------------------------------------------------------------------------------------- in the monitor


def _monitor_run(cfg: DriftConfig, change_h: float = 150, hours: int = 220) -> tuple[DriftMonitor, list]:
    """Cluster 7 receives the pairs (c1, 7), c1 = 20..29 (3 triples an hour); every pair moves at change_h.
    Clusters 1..6 receive steady triples, so the monitor has others to compare with."""
    mon = DriftMonitor(cfg)
    rng = np.random.default_rng(3)
    alerts = []
    src = _stream(change_h=change_h, hours=hours)
    for h in range(hours):
        for c1, hh, s in src:
            if hh == h:
                alerts += mon.on_triple(20 + c1, 7, 30 + "abcdez".index(s), h * HOUR_MS + 1)
        for _ in range(12):
            x = int(rng.integers(1, 7))
            alerts += mon.on_triple(40 + int(rng.integers(5)), x, 30 + int(rng.integers(5)), h * HOUR_MS + 2)
    alerts += mon.advance(hours * HOUR_MS)
    return mon, alerts


def test_monitor_alerts_once_naming_the_test_its_effect_and_the_pairs():
    cfg = DriftConfig(pooled_warning=LEVEL)
    mon, alerts = _monitor_run(cfg)
    assert [(a.cluster, a.kind, a.severity) for a in alerts] == [(7, "transition", "warning"),
                                                                (7, "transition", "critical")]
    assert alerts[0].alert_id == alerts[1].alert_id  # one drift, one alert, escalated once
    a = alerts[0]
    ev = a.evidence
    assert ev["test"] == "pooled_cusum" and ev["support"] > 0 and ev["effect_size"] > 0.2
    t = ev["tests"]["pooled_cusum"]
    assert t["threshold"] == LEVEL and t["statistic"] >= LEVEL and t["pairs_moved_most"]
    assert ev["pair"] == t["pairs_moved_most"][0][0] and ev["pair"][1] == 7 and 20 <= ev["pair"][0] < 30
    assert a.score == pytest.approx(cfg.warning["transition"] * t["statistic"] / LEVEL, rel=1e-6)
    assert (a.ts_ms - 150 * HOUR_MS) / HOUR_MS == 4  # detection hour (evaluated every 2 h)
    again = DriftMonitor.from_snapshot(mon.snapshot())
    assert again.snapshot() == mon.snapshot()


def test_monitor_stationary_raises_nothing():
    _, alerts = _monitor_run(DriftConfig(pooled_warning=LEVEL), change_h=1e9)
    assert alerts == []


def test_test_of_each_kind():
    assert _test_of("volume", {"count_before": 10, "total_before": 1000, "count_after": 50, "total_after": 1000}
                    )["effect_size"] == pytest.approx(np.log(50.5 / 10.5), abs=1e-6)
    assert _test_of("content", {"cos_before": 0.8, "cos_after": 0.6, "n_after": 7}) == {
        "test": "centroid_cosine_drop", "effect_size": 0.2, "support": 7}


# ------------------------------------------------------------------------------------------- the generator


def test_source_scenario_moves_every_pair_into_one_cluster():
    gen = WorkloadGenerator(GeneratorConfig(seed=3, scenario="source", events=2_000, ramp_days=3.0))
    gt = gen.ground_truth()
    tr = [d for d in gt["drifts"] if d["kind"] == "transition"]
    assert [d["mode"] for d in tr] == ["abrupt", "gradual"] and tr[1]["end_ms"] - tr[1]["start_ms"] == 3 * 86_400_000
    for d in tr:
        pairs = [c["pair"] for c in gt["successors"]["changes"] if c["drift"] == d["id"]]
        k = gen.config.n_clusters
        assert d["pair"] is None and all(p[1] == d["cluster"] for p in pairs) and len(pairs) == k - 2
        tops = {max(c["dist"].items(), key=lambda kv: kv[1])[0] for c in gt["successors"]["changes"]
                if c["drift"] == d["id"] and str(d["after"]["top_successor"]) in c["dist"]}
        assert tops == {str(d["after"]["top_successor"])}
    with pytest.raises(ValueError):
        GeneratorConfig(ramp_days=30.0)  # longer than the span
