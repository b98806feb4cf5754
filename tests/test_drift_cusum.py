"""The accumulating drift tests (issue #14): RateCusum and MeanDropCusum alone on seeded streams (exact detection
indices, River's style), and inside the monitor, where they catch slow ramps that the window tests miss, name
themselves in the alert's evidence, restart after the hold, and survive a snapshot."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from operators.drift import HOUR_MS, DriftConfig, DriftMonitor
from operators.drift_cusum import Cusum, MeanDropCusum, RateCusum

LEVEL = 10.0  # nats, for these unit streams (the monitor's levels come from calibration)
DAY_H = 24


def _crossings(stats: list[float]) -> list[int]:
    """The steps at which the statistic reaches LEVEL from below."""
    return [i for i, x in enumerate(stats) if x >= LEVEL and (i == 0 or stats[i - 1] < LEVEL)]


def _rate_stream(seed: int, change_h: float, ramp_h: float, hours: int = 400, per_h: int = 40,
                 before: float = 0.5, after: float = 0.3) -> list[int]:
    """Successes per hour out of ``per_h`` trials; the rate ramps from ``before`` to ``after``."""
    rng = random.Random(seed)
    out = []
    for h in range(hours):
        f = min(1.0, max(0.0, (h - change_h) / ramp_h)) if ramp_h else float(h >= change_h)
        p = before + (after - before) * f
        out.append(sum(rng.random() < p for _ in range(per_h)))
    return out


def _run_rate(successes: list[int], per_h: int = 40, ref_h: int = 72, gap_h: int = 12, recent_h: int = 12
              ) -> tuple[list[int], list[float]]:
    """A rolling reference (``ref_h`` hours ending ``gap_h`` ago), recent = the ``recent_h`` before the new hour."""
    c, stats = RateCusum(), []
    for h, k in enumerate(successes):
        ref = successes[max(0, h - gap_h - ref_h): max(0, h - gap_h)]
        rec = successes[max(0, h - recent_h): h]
        c.update((per_h * len(ref), sum(ref)), (per_h * len(rec), sum(rec)), (per_h, k))
        stats.append(c.statistic)
    return _crossings(stats), stats


def test_rate_cusum_detects_an_abrupt_change_at_the_exact_hour():
    hits, stats = _run_rate(_rate_stream(0, change_h=200, ramp_h=0))
    assert hits == [208]
    assert max(stats[:200]) < 0.75 * LEVEL


def test_rate_cusum_accumulates_a_seven_day_ramp_against_a_rolling_reference():
    hits, stats = _run_rate(_rate_stream(1, change_h=150, ramp_h=7 * DAY_H, hours=400))
    assert hits == [258]  # 4.5 days into the ramp: the rate has moved 0.13 of its 0.2
    assert max(stats[:150]) < 0.75 * LEVEL


@pytest.mark.parametrize("seed", range(6))
def test_rate_cusum_quiet_when_stationary(seed):
    hits, stats = _run_rate(_rate_stream(seed, change_h=1e9, ramp_h=0, hours=600))
    assert hits == [] and max(stats) < LEVEL


def test_rate_cusum_needs_a_reference_and_new_trials():
    c = RateCusum(min_reference=60)
    c.update((59, 30), (10, 5), (40, 0))
    assert c.statistic == 0.0 and c.last_llr is None
    c.update((600, 300), (400, 200), (0, 0))
    assert c.last_llr is None
    c.update((600, 300), (400, 40), (40, 4))  # the recent rate fell to 0.1 and the new trials agree
    assert c.statistic > 0 and c.last_llr > 0 and c.result()["rate_recent"] < 0.3


def _mean_stream(seed: int, change_t: int, ramp: int, n: int = 300, sd: float = 0.1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.6 - 0.15 * (min(1.0, max(0, t - change_t) / ramp) if ramp else float(t >= change_t)), sd)
            for t in range(n)]


def _run_mean(xs: list[float]) -> tuple[list[int], list[float]]:
    c, stats, recent = MeanDropCusum(), [], []
    for x in xs:
        c.update((0.6, 0.01, 500), (sum(recent), len(recent)), [x])
        recent = (recent + [x])[-10:]
        stats.append(c.statistic)
    return _crossings(stats), stats


def test_mean_drop_cusum_detects_an_abrupt_drop_at_the_exact_item():
    hits, stats = _run_mean(_mean_stream(2, change_t=150, ramp=0))
    assert hits == [165]
    assert max(stats[:150]) < 0.75 * LEVEL


def test_mean_drop_cusum_is_one_sided():
    rng = random.Random(4)
    hits, stats = _run_mean([rng.gauss(0.6 + 0.15 * (t >= 100), 0.1) for t in range(300)])  # a *rise*
    assert hits == [] and max(stats) < 0.75 * LEVEL


@pytest.mark.parametrize("seed", range(6))
def test_mean_drop_cusum_quiet_when_stationary(seed):
    hits, stats = _run_mean(_mean_stream(seed, change_t=10**9, ramp=0, n=1000))
    assert hits == [] and max(stats) < 0.75 * LEVEL


def test_hold_keeps_counting_then_restarts_and_state_round_trips():
    c = Cusum(quiet_ms=200)
    c.step(5.0, 10)
    c.hold(1_000)
    c.step(2.0, 10, now_ms=500)
    assert c.statistic == 7.0 and c.held_until == 1_000
    again = Cusum(quiet_ms=200).load(c.state())
    assert again.state() == c.state() == [7.0, 7.0, 20.0, 1_000, None, 5.0]
    again.step(1.0, 5, now_ms=1_000)  # past the hold's time, and still moving: held on
    assert again.statistic == 8.0 and again.peak == (8.0, 1_000)
    again.step(-0.5, 5, now_ms=1_100)
    again.step(0.2, 5, now_ms=1_150)
    assert again.statistic == 7.7 and again.held_until == 1_000
    assert Cusum(quiet_ms=200).load(again.state()).state() == again.state() == [7.7, 7.7, 35.0, 1_000, [8.0, 1_000],
                                                                                 5.0]
    again.step(0.1, 5, now_ms=1_200)  # no new high for quiet_ms
    assert again.statistic == 0.0 and again.run_n == 0 and again.held_until is None and again.peak is None
    assert Cusum().load([3.0, 3.0, 4.0]).held_until is None  # a state from before the hold


@pytest.mark.parametrize("cls", [RateCusum, MeanDropCusum])
def test_arguments_are_checked(cls):
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="beta"):
            cls(beta=bad)
        with pytest.raises(ValueError, match="min_reference"):
            cls(min_reference=bad)


# ---------------------------------------------------------------------------------------------- in the monitor


def _ramp_monitor(cfg: DriftConfig, *, days: int = 16, change_day: float = 6.0, ramp_days: float = 7.0,
                  seed: int = 0) -> tuple[DriftMonitor, list]:
    """Cluster 1's positive rate ramps 0.6 -> 0.35 over ``ramp_days``; cluster 2 stays at 0.5; 30 engagements
    an hour each."""
    m = DriftMonitor(cfg)
    rng = np.random.default_rng(seed)
    alerts = []
    for i in range(days * 24 * 30):
        ts = i * HOUR_MS // 30
        f = min(1.0, max(0.0, (ts / HOUR_MS / 24 - change_day) / ramp_days)) if ramp_days else 0.0
        alerts += m.on_engagement(1, ts, bool(rng.random() < 0.6 - 0.25 * f))
        alerts += m.on_engagement(2, ts, bool(rng.random() < 0.5))
    return m, alerts


def _cfg(**kw) -> DriftConfig:
    return DriftConfig(cusum_warning={"engagement": LEVEL, "content": LEVEL, "volume": 1e9}, **kw)


def test_monitor_catches_a_week_long_ramp_the_window_test_misses():
    _, window_only = _ramp_monitor(DriftConfig(cusum_warning={"engagement": 1e9, "content": 1e9, "volume": 1e9}))
    assert [a for a in window_only if a.kind == "engagement"] == []
    m, alerts = _ramp_monitor(_cfg())
    eng = [a for a in alerts if a.kind == "engagement"]
    assert [(a.cluster, a.severity) for a in eng] == [(1, "warning"), (1, "critical")]  # one alert, escalated
    assert eng[0].alert_id == eng[1].alert_id
    a = eng[0]
    assert (a.window_end_ms - 6 * 24 * HOUR_MS) // HOUR_MS == 69  # hours into the ramp (the window test: never)
    assert a.evidence["test"] == "rate_cusum"
    t = a.evidence["tests"]["rate_cusum"]
    assert t["threshold"] == LEVEL and t["statistic"] >= LEVEL and t["support"] > 0 and t["effect_size"] > 0
    assert t["rate_recent"] < t["rate_reference"]
    assert a.evidence["support"] == t["support"]
    assert "rate_change" in a.evidence["tests"]  # the window test's statistic is there too
    # the alert restarted the CUSUM: it is held for the cooldown, then counts again from 0
    cu = m.shard._engagement[1].cusum
    assert cu.held_until is None or cu.held_until == a.window_end_ms + m.config.cooldown("engagement")


def test_monitor_stationary_cusums_raise_nothing():
    _, alerts = _ramp_monitor(_cfg(), ramp_days=0, change_day=1e9)
    assert alerts == []


def test_monitor_snapshot_keeps_the_cusums():
    m, _ = _ramp_monitor(_cfg(), days=9)
    snap = pickle.loads(pickle.dumps(m.snapshot()))
    again = DriftMonitor.from_snapshot(snap)
    assert again.shard._engagement[1].cusum.state() == m.shard._engagement[1].cusum.state()
    assert {c: cu.state() for c, cu in again.combiner._volume.cusums.items()} == \
        {c: cu.state() for c, cu in m.combiner._volume.cusums.items()}
    rng = np.random.default_rng(9)
    for i in range(9 * 24 * 30, 11 * 24 * 30):  # both go on identically
        ts, pos = i * HOUR_MS // 30, bool(rng.random() < 0.4)
        assert m.on_engagement(1, ts, pos) == again.on_engagement(1, ts, pos)
    assert again.scores() == m.scores()
    old = m.snapshot()
    for st in old["engagement"].values():  # a snapshot from before the CUSUMs still loads
        del st["cusum"], st["last_ms"]
    for k in ("cusums", "last_ms"):
        del old["volume"][k]
    del old["config"]["cusum_warning"], old["config"]["cusum_recent_ms"]
    DriftMonitor.from_snapshot(old).advance(12 * 24 * HOUR_MS)


def test_content_cusum_in_the_monitor_names_itself():
    cfg = DriftConfig(cusum_warning={"engagement": 1e9, "content": 3.0, "volume": 1e9})  # 12 items a day
    m = DriftMonitor(cfg)
    rng = np.random.default_rng(3)
    base, other = np.eye(16)[0], np.eye(16)[1]
    alerts = []
    for h in range(24 * 12):  # one item every 2 h; from day 5 a growing share comes from `other`
        ts = h * HOUR_MS
        alerts += m.advance(ts)
        if h % 2 == 0:
            f = min(1.0, max(0.0, (h / 24 - 5) / 5))
            v = (other if rng.random() < 0.6 * f else base) + 0.4 * rng.standard_normal(16)
            m.on_item(3, ts, v, novel=False)
    content = [a for a in alerts if a.kind == "content"]
    assert [(a.cluster, a.evidence["test"]) for a in content][:1] == [(3, "cosine_cusum")]
    t = content[0].evidence["tests"]["cosine_cusum"]
    assert t["mean_recent"] < t["mean_reference"] and t["statistic"] >= 3.0
    assert (content[0].window_end_ms - 5 * 24 * HOUR_MS) // HOUR_MS == 82  # hours into the ramp (window test: 84)


def test_config_checks_the_cusum_settings():
    with pytest.raises(ValueError, match="cusum_warning"):
        DriftConfig(cusum_warning={"engagement": 1.0, "content": 1.0})
    with pytest.raises(ValueError, match=r"cusum_warning\[volume\]"):
        DriftConfig(cusum_warning={"engagement": 1.0, "content": 1.0, "volume": 0.0})
    with pytest.raises(ValueError, match=r"cusum_min_effect\[content\]"):
        DriftConfig(cusum_min_effect={"engagement": 0.0, "content": -0.1, "volume": 0.2})
    with pytest.raises(ValueError, match="cusum_recent_ms"):
        DriftConfig(cusum_recent_ms=0)
    with pytest.raises(ValueError, match="scale"):
        RateCusum(scale="ratio")


def test_share_cusum_ignores_the_shares_every_cluster_loses_to_a_trending_one():
    """16 clusters with equal traffic; from hour 100 cluster 0 draws 8x the traffic of each other one, whose
    shares fall from 1/16 to 1/23 (log ratio -0.36, past the allowance). Only cluster 0 alerts on volume: the
    median cluster's move is taken off (without that, 12 of the 15 others alerted)."""
    m = DriftMonitor(DriftConfig(cusum_warning={"engagement": 1e9, "content": 1e9, "volume": LEVEL}))
    rng = np.random.default_rng(5)
    alerts = []
    for h in range(240):
        weights = np.ones(16)
        if h >= 100:
            weights[0] = 8.0
        for c in rng.choice(16, size=320, p=weights / weights.sum()):
            alerts += m.on_engagement(int(c), h * HOUR_MS + 1, True)
    vol = [a for a in alerts if a.kind == "volume"]
    assert sorted({a.cluster for a in vol}) == [0]
