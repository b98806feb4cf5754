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
