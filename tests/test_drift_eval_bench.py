"""bench/drift_eval.py's peer plumbing: the memoised KS test gives River's KSWIN exactly the decisions of scipy's.

The benchmark's KSWIN figures are only fair if the memoisation changes nothing: the same drift indices on
streams with ties, steps and slow moves, at several alphas."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from river import drift
from river.drift import kswin
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts, not an installed package
from bench.drift_eval import MemoKS  # noqa: E402


def _stream(seed: int, n: int = 3000) -> list[float]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if seed % 3 == 0:  # few distinct values: many ties
            out.append(float(rng.choice([0, 1, 2] if i < n // 2 else [1, 2, 3])))
        elif seed % 3 == 1:  # a step in the mean
            out.append(rng.gauss(0.0 if i < n // 2 else 0.8, 1.0))
        else:  # a slow move
            out.append(rng.gauss(i / n, 0.5))
    return out


def _detections(xs: list[float], alpha: float, ks: object) -> list[int]:
    saved = kswin.stats
    kswin.stats = ks
    try:
        det = drift.KSWIN(alpha=alpha, seed=42)
        hits = []
        for i, x in enumerate(xs):
            det.update(x)
            if det.drift_detected:
                hits.append(i)
        return hits
    finally:
        kswin.stats = saved


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.05, 1e-3, 1e-5])
def test_memoised_ks_gives_kswin_the_same_drifts(seed, alpha):
    xs = _stream(seed)
    memo = MemoKS()
    assert _detections(xs, alpha, memo) == _detections(xs, alpha, stats)
    assert 0 < len(memo.memo) < 100  # few distinct (sizes, D): that is why it is fast


def test_memoised_ks_matches_scipy_value_for_value():
    rng = random.Random(7)
    memo = MemoKS()
    for _ in range(300):
        a = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(30)]
        b = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(30)]
        want = stats.ks_2samp(a, b, method="auto")
        assert memo.ks_2samp(a, b, method="auto") == (float(want.statistic), float(want.pvalue))



def test_the_traced_monitor_records_each_evaluations_fresh_results_and_alerts_as_the_monitor_does():
    """bench/drift_eval.py's TracedMonitor (the drift benchmark's view of every evaluation) raises the plain
    monitor's alerts, and its trace has one entry per boundary evaluated with the results of the kinds scored
    afresh there and only those. (When the monitor became a shard and a combiner, the trace went missing and the
    benchmark stopped running.)"""
    from bench.drift_eval import TracedMonitor
    from operators.drift import DriftConfig, DriftMonitor

    rng = random.Random(4)
    hour, t0 = 3_600_000, 1_767_225_600_000
    events = sorted((t0 + h * hour + rng.randrange(hour), rng.choice([0, 1, 2] if h < 80 else [1, 1, 1, 2]),
                      rng.random() < 0.6) for h in range(120) for _ in range(30))  # cluster 0 goes quiet at 80 h
    cfg = DriftConfig()
    traced, plain = TracedMonitor(cfg), DriftMonitor(cfg)
    alerts: dict[str, list] = {"traced": [], "plain": []}
    for ts, c, pos in events:
        alerts["traced"] += [a.to_dict() for a in traced.on_engagement(c, ts, pos)]
        alerts["plain"] += [a.to_dict() for a in plain.on_engagement(c, ts, pos)]
    assert alerts["traced"] == alerts["plain"] and any(a["kind"] == "volume" for a in alerts["plain"])
    assert [ts for ts, _ in traced.trace] == [t0 + h * hour for h in range(1, 120)]
    slots: dict[str, int] = {}
    for ts, results in traced.trace:
        due = set()
        for kind in ("engagement", "volume", "content", "transition"):
            slot = ts // cfg.evaluate_every_ms.get(kind, cfg.bucket_ms)
            if slots.get(kind) != slot:
                due.add(kind)
                slots[kind] = slot
        assert {kind for _, kind in results} <= due
    assert sum(1 for _, res in traced.trace for _, kind in res if kind == "volume") > 50
