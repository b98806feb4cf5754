"""Drift signals, the support floor, one alert per drift (hysteresis, cooldown, escalation once), the reference
policy, snapshots, calibration and a stationary generator stream without a critical alert."""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np
import pytest

from operators.alerts import Alert
from operators.drift import (
    DAY_MS,
    HOUR_MS,
    AlertGate,
    ContentDrift,
    DriftConfig,
    DriftMonitor,
    EngagementDrift,
    TransitionDrift,
    VolumeDrift,
    _Window,
    calibrate,
    count_episodes,
    js_divergence,
)
from operators.transitions import TransitionTracker
from streams.contract import ContentEvent, Engagement, RawMessage, Validator
from streams.generator import GeneratorConfig, WorkloadGenerator

W = _Window(100 * HOUR_MS, 12 * HOUR_MS, 72 * HOUR_MS)  # current: [88 h, 100 h); reference: [16 h, 88 h)
CFG = DriftConfig()


def _engagements(rate_before: float, rate_after: float, change_h: float, hours: float = 100, per_h: int = 20,
                 seed: int = 0) -> EngagementDrift:
    rng = np.random.default_rng(seed)
    e = EngagementDrift(min_support=60)
    for i in range(int(hours * per_h)):
        ts = i * HOUR_MS // per_h
        e.update(ts, bool(rng.random() < (rate_before if ts < change_h * HOUR_MS else rate_after)))
    return e


# ------------------------------------------------------------------------------------------------- engagement


def test_engagement_detects_a_rate_shift():
    r = _engagements(0.6, 0.3, change_h=88).evaluate(W.now_ms, W)  # the whole current window after the change
    assert r["rate_before"] == pytest.approx(0.6, abs=0.03) and r["rate_after"] < 0.4
    assert r["score"] > CFG.warning["engagement"]


@pytest.mark.parametrize("seed", range(5))
def test_engagement_quiet_when_stationary(seed):
    r = _engagements(0.5, 0.5, change_h=0, seed=seed).evaluate(W.now_ms, W)
    assert r["score"] < CFG.warning["engagement"]


def test_engagement_support_floor():
    e = _engagements(0.9, 0.0, change_h=95, per_h=1)  # 12 engagements in the current window: a floor of 60
    assert e.evaluate(W.now_ms, W) is None


# ----------------------------------------------------------------------------------------------------- volume


def _volume(trend_from_h: float, trend_share: float, seed: int = 0, per_h: int = 120) -> VolumeDrift:
    rng = np.random.default_rng(seed)
    v = VolumeDrift(min_support=200, min_cluster=20)
    for i in range(100 * per_h):
        ts = i * HOUR_MS // per_h
        if ts >= trend_from_h * HOUR_MS and rng.random() < trend_share:
            v.update(99, ts)
        else:
            v.update(int(rng.integers(0, 8)), ts)
    return v


def test_volume_catches_a_new_trending_cluster():
    r = _volume(92, 0.06).evaluate(99, W)  # no traffic at all in the reference
    assert r["share_before"] == 0.0 and r["share_after"] > 0.03
    assert r["score"] > CFG.critical["volume"]


@pytest.mark.parametrize("seed", range(3))
def test_volume_quiet_when_stationary(seed):
    v = _volume(1e9, 0.0, seed=seed)
    assert max(v.evaluate(c, W)["score"] for c in range(8)) < CFG.warning["volume"]


def test_volume_support_floor():
    assert _volume(99.5, 0.01).evaluate(99, W) is None  # a handful of engagements: below min_cluster
    assert _volume(1e9, 0.0, per_h=10).evaluate(0, W) is None  # 120 engagements in all: below min_support


# ------------------------------------------------------------------------------------------------- transition


def _transitions(before: list[float], after: list[float], change_h: float, per_h: int = 4, seed: int = 0,
                 hours: int = 120) -> TransitionDrift:
    rng = np.random.default_rng(seed)
    t = TransitionDrift(min_support=40)
    for i in range(hours * per_h):
        ts = i * HOUR_MS // per_h
        p = before if ts < change_h * HOUR_MS else after
        t.update(int(rng.choice(len(p), p=p)), ts)
    return t


BEFORE = [0.6, 0.2, 0.1, 0.02, 0.02, 0.02, 0.02, 0.02]
AFTER = [0.02, 0.02, 0.02, 0.6, 0.2, 0.1, 0.02, 0.02]
TW = _Window(120 * HOUR_MS, 48 * HOUR_MS, 72 * HOUR_MS)


def test_transition_detects_a_new_top_successor():
    r = _transitions(BEFORE, AFTER, change_h=80).evaluate(TW)
    assert r["top_before"][0][0] == 0 and r["top_after"][0][0] == 3
    assert r["jaccard_distance"] > 0 and r["score"] > CFG.warning["transition"]


@pytest.mark.parametrize("seed", range(5))
def test_transition_quiet_when_stationary(seed):
    r = _transitions(BEFORE, BEFORE, change_h=0, seed=seed).evaluate(TW)
    assert r["score"] < CFG.warning["transition"]


def test_transition_support_floor():
    t = _transitions(BEFORE, AFTER, change_h=100, per_h=1, hours=120)  # 48 before, but 20 after the change
    t2 = _transitions(BEFORE, AFTER, change_h=115, per_h=1, hours=120)  # 5 triples of the new successors
    assert t.evaluate(TW) is not None  # 48 >= 40 in each window
    assert _transitions(BEFORE, AFTER, change_h=100, per_h=1, hours=110).evaluate(
        _Window(110 * HOUR_MS, 30 * HOUR_MS, 72 * HOUR_MS)) is None  # 30 triples now: below the floor of 40
    assert t2.evaluate(TW)["score"] < t.evaluate(TW)["score"]


def test_js_divergence_bounds():
    assert js_divergence({1: 5}, {1: 2}) == 0.0
    assert js_divergence({1: 5}, {2: 2}) == 1.0


# ---------------------------------------------------------------------------------------------------- content


def _content(shift_at: int | None, n_new: int = 8, seed: int = 0) -> ContentDrift:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(32)
    other = rng.standard_normal(32)
    c = ContentDrift(min_support=4, min_reference=10, window_ms=24 * HOUR_MS)
    for _ in range(40):  # the catalogue
        c.update(0, base + 0.8 * rng.standard_normal(32))
    for i in range(n_new):  # fresh items in the last day
        centre = other if shift_at is not None and i >= shift_at else base
        c.update(80 * HOUR_MS + i * HOUR_MS, centre + 0.8 * rng.standard_normal(32), novel=centre is other)
    return c


CW = _Window(100 * HOUR_MS, 24 * HOUR_MS, 72 * HOUR_MS)


def test_content_detects_fresh_items_from_elsewhere():
    r = _content(shift_at=0).evaluate(CW)
    assert r["centroid_shift"] > 0.3 and r["novel_share_after"] == 1.0 and r["novel_share_before"] == 0.0
    assert r["score"] > CFG.critical["content"]


@pytest.mark.parametrize("seed", range(5))
def test_content_quiet_when_stationary(seed):
    assert _content(shift_at=None, seed=seed).evaluate(CW)["score"] < CFG.warning["content"]


def test_content_support_floor():
    assert _content(shift_at=0, n_new=3).evaluate(CW) is None  # 3 fresh items < 4


# ------------------------------------------------------------------------------------ one drift -> one alert


def test_gate_opens_once_escalates_once_and_cools_down():
    g = AlertGate(warning=1.0, critical=2.0, rearm=0.5, cooldown_ms=10)
    out = [g.update(s, t) for t, s in enumerate([1.2, 2.5, 0.9, 2.6, 3.0, 1.1])]
    assert out == ["warning", "escalate", None, None, None, None]  # stays open above rearm: no second alert
    assert g.update(0.1, 6) is None and not g.is_open  # closes below rearm
    assert g.update(1.5, 7) is None  # ...but the cooldown (10 since it opened at 0) is not over
    assert g.update(1.5, 10) == "warning"
    with pytest.raises(ValueError):
        AlertGate(warning=1.0, critical=0.5, rearm=0.1, cooldown_ms=0)


def _feed_rate_drop(m: DriftMonitor, days: float = 8, drop_day: float = 3, seed: int = 1,
                    mark: tuple[float, str] | None = None) -> list[Alert]:
    rng = np.random.default_rng(seed)
    alerts: list[Alert] = []
    per_h = 30
    for i in range(int(days * 24 * per_h)):
        ts = i * HOUR_MS // per_h
        if mark is not None and ts == int(mark[0] * DAY_MS):
            m.mark_reference(ts, mark[1])
        alerts += m.on_engagement(1, ts, bool(rng.random() < (0.6 if ts < drop_day * DAY_MS else 0.2)))
        alerts += m.on_engagement(2, ts, bool(rng.random() < 0.5))
    return alerts


def test_persistent_drift_gives_one_alert_escalated_once():
    alerts = _feed_rate_drop(DriftMonitor(DriftConfig()))
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.severity for a in alerts] == ["warning", "critical"]
    a = alerts[0]
    assert a.cluster == 1 and a.kind == "engagement" and a.alert_id == f"drift-1-engagement-{a.ts_ms}"
    assert a.evidence["rate_before"] > 0.5 and a.evidence["rate_after"] < a.evidence["rate_before"] - 0.1
    assert alerts[1].evidence["rate_after"] < 0.4 and alerts[1].threshold == CFG.critical["engagement"]
    assert a.evidence["n_before"] >= 60 and a.evidence["n_after"] >= 60
    assert a.reference["policy"] == "rolling" and a.reference["until_ms"] <= a.window_start_ms
    assert DriftMonitor(DriftConfig()).advance(0) == []


def test_reference_policy_changes_what_is_compared():
    rolling = DriftMonitor(DriftConfig())
    marked = DriftMonitor(DriftConfig())
    a_roll = _feed_rate_drop(rolling, days=9)
    a_mark = _feed_rate_drop(marked, days=9, mark=(2.5, "refresh"))
    since = int(2.5 * DAY_MS)
    assert a_mark and all(a.reference == {"policy": "refresh", "since_ms": since} for a in a_mark)
    assert all(a.reference["policy"] == "rolling" for a in a_roll)
    # 6 days after the drop the rolling reference has absorbed it; the frozen one still compares with day 2.5
    assert rolling.scores()[1]["engagement"] < 1.0 < marked.scores()[1]["engagement"]
    st = marked.status(1)
    assert st["reference"]["engagement"] == {"policy": "refresh", "since_ms": since}
    assert st["alerts"][0]["reference"]["policy"] == "refresh" and st["scores"]["engagement"] > 1.0
    with pytest.raises(ValueError):
        marked.mark_reference(0, "rolling")


def test_snapshot_round_trip():
    rng = np.random.default_rng(3)
    events = []
    for i in range(6 * 24 * 30):
        ts = i * HOUR_MS // 30
        c = int(rng.integers(0, 4)) if ts < 4 * DAY_MS or rng.random() < 0.8 else 7
        events.append(("e", c, ts, bool(rng.random() < 0.5)))
        if i % 5 == 0:
            events.append(("t", c, (c + 1) % 4, (c + 2) % 4 if ts < 3 * DAY_MS else (c + 3) % 4, ts))
        if i % 40 == 0:
            events.append(("i", c, ts, rng.standard_normal(8), False))

    def feed(m: DriftMonitor, evs: list) -> list:
        out = []
        for e in evs:
            if e[0] == "e":
                out += m.on_engagement(e[1], e[2], e[3])
            elif e[0] == "t":
                out += m.on_triple(e[1], e[2], e[3], e[4])
            else:
                out += m.on_item(e[1], e[2], e[3], e[4])
        return [a.to_dict() for a in out]

    half = len(events) // 2
    a, b = DriftMonitor(), DriftMonitor()
    feed(a, events[:half])
    feed(b, events[:half])
    b.mark_reference(events[half][2], "refresh")
    a.mark_reference(events[half][2], "refresh")
    restored = DriftMonitor.from_snapshot(pickle.loads(pickle.dumps(b.snapshot())))
    pickle.loads(pickle.dumps(a))  # the monitor itself pickles too (Bytewax state)
    rest_a, rest_b = feed(a, events[half:]), feed(restored, events[half:])
    assert rest_a == rest_b and rest_a  # the trending cluster 7 alerts after the restore
    assert a.scores() == restored.scores()


# ------------------------------------------------------------------------------------------------ calibration


def test_calibrate_hits_the_budget_and_keeps_critical_above_stationary():
    rng = np.random.default_rng(0)
    series = {"engagement": {c: [(t * HOUR_MS, float(abs(rng.standard_normal()) * 0.01)) for t in range(500)]
                             for c in range(10)}}
    warning, critical = calibrate(series, cluster_hours=5000, target_per_1000h=1.0, cooldown_ms=0)
    w = warning["engagement"]
    n = sum(count_episodes(s, w, 0.5 * w, 0) for s in series["engagement"].values())
    assert n <= 5 and critical["engagement"] > max(x for s in series["engagement"].values() for _, x in s)
    assert calibrate(series, 5000, floors={"engagement": 1.0})[0]["engagement"] == 1.0


def test_config_checks():
    with pytest.raises(ValueError):
        DriftConfig(warning={"engagement": 0.1})
    with pytest.raises(ValueError):
        DriftConfig(critical={**DriftConfig().critical, "volume": 0.01})


# -------------------------------------------------------------------------------------- a stationary stream


def test_stationary_generator_stream_raises_no_critical_alert():
    cfg = GeneratorConfig(seed=13, scenario="stationary", events=40_000, n_users=800, days=8.0)
    gen = WorkloadGenerator(cfg)
    item_cluster = {k: int(v) for k, v in gen.ground_truth()["items"].items()}
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((cfg.n_clusters, 32))
    val, mon = Validator(), DriftMonitor(DriftConfig())
    trackers: dict[str, TransitionTracker] = defaultdict(TransitionTracker)
    alerts: list[Alert] = []
    for n, msg in enumerate(gen.messages()):
        ev = val.validate(RawMessage(msg.topic, 0, n, msg.key, msg.value))
        if isinstance(ev, Engagement) and ev.item_id in item_cluster:
            c = item_cluster[ev.item_id]
            alerts += mon.on_engagement(c, ev.ts_ms, ev.positive)
            if ev.positive and (t := trackers[ev.user_id].update(c)) is not None:
                alerts += mon.on_triple(*t, ev.ts_ms)
        elif isinstance(ev, ContentEvent) and ev.item_id in item_cluster:
            c = item_cluster[ev.item_id]
            alerts += mon.on_item(c, ev.ts_ms, centres[c] + 0.8 * rng.standard_normal(32), False)
    assert mon.updates > 40_000 and mon.scores()  # it evaluated
    assert not [a for a in alerts if a.severity == "critical"]


def test_running_window_sums_equal_a_re_sum_and_old_states_load():
    """EngagementDrift keeps its two windows' [n, positives] as running sums (no re-summing per evaluation):
    under random updates, late events and window moves (forward, jumps, backwards) they equal a fresh sum."""
    from operators.drift_signals import _Buckets, _RunningPair

    rng = np.random.default_rng(5)
    data: dict[int, list[float]] = {}
    run = _RunningPair()
    lo = 0
    for _ in range(2000):
        b = int(rng.integers(0, 60))
        n, p = int(rng.integers(1, 4)), int(rng.integers(0, 2))
        row = data.setdefault(b, [0.0, 0.0])
        row[0] += n
        row[1] += p
        run.add(b, n, p)
        if rng.random() < 0.2:
            lo = max(0, lo + int(rng.integers(-3, 6)))
            hi = lo + int(rng.integers(1, 20))
            rows = [r for k, r in data.items() if lo <= k < hi]
            want = (sum(r[0] for r in rows), sum(r[1] for r in rows))
            assert run.move(data, lo, hi) == want
    # states pickled before these fields existed still load
    e = EngagementDrift()
    e.update(0, True)
    del e._cur, e._ref
    again = pickle.loads(pickle.dumps(e))
    assert again.evaluate(3_600_000) is None and again._cur is not None
    bk = _Buckets(10, 100)
    bk.__setstate__((None, {"bucket_ms": 10, "keep_ms": 100, "data": {0: 1, 5: 2}}))
    bk.prune(110)  # keep 100 ms: bucket 0 (0-9 ms) goes
    assert bk.data == {5: 2} and bk.rows(0, 100) == [2]
