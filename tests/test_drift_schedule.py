"""The drift monitor's shortcuts (issue 16) give what the plain computation gives: the pair schedule (an evaluation
moves only the pairs with a bucket at a window edge or new triples) against moving every pair, a recovery
snapshot taken between evaluations against an uninterrupted run, and the other clusters' successors read per key
against the dicts they stand for. Equality is exact: results, scores and alerts compare with ``==``."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from operators.drift import HOUR_MS, DriftConfig, DriftMonitor, _PairSchedule
from operators.drift_pooled import OtherClusters


class _EveryPair(_PairSchedule):
    """The schedule that moves every pair at every evaluation: the computation before the shortcut."""

    __slots__ = ()

    def due(self, ranges, prune_lo):  # noqa: ANN001, ANN201
        return None


def _calls(hours: int = 200, clusters: int = 30, seed: int = 3) -> list[tuple]:
    """Monitor calls: a few busy pairs into cluster 2 (their successors move at hour 120), many sparse pairs, late
    triples (some inside the windows, some older than they reach), engagements for every cluster."""
    rng = np.random.default_rng(seed)
    out: list[tuple] = []
    for h in range(hours):
        t0 = h * HOUR_MS
        for i in range(40):
            ts = t0 + i * (HOUR_MS // 40)
            if i % 3 == 0:  # busy pairs (c1, 2)
                c1 = int(rng.integers(4))
                nxt = int(rng.integers(20, 23)) if h >= 120 and rng.random() < 0.7 else int(rng.integers(5, 8))
                out.append(("on_triple", (c1, 2, nxt, ts)))
            else:
                c1, c2 = (int(x) for x in rng.integers(clusters, size=2))
                late = ts - int(rng.integers(1, 140)) * HOUR_MS if rng.random() < 0.05 else ts
                out.append(("on_triple", (c1, c2, int(rng.integers(clusters)), max(0, late))))
        for c in range(clusters):
            out.append(("on_engagements", (c, t0 + HOUR_MS - 1, 5, int(rng.integers(6)))))
    return out


def _run(m: DriftMonitor, calls: list[tuple], every_pair: bool = False, mark_at: int | None = None,
         restore_at: tuple[int, ...] = ()) -> tuple[list[dict], list]:
    """Alerts (as dicts) and, at every evaluation, the results, scores and changed clusters."""
    alerts, seen = [], []
    evaluated = None
    for i, (name, args) in enumerate(calls):
        if every_pair and type(m.shard._schedule) is not _EveryPair:
            m.shard._schedule = _EveryPair()
        if i == mark_at:
            m.mark_reference(args[-1] - 30 * HOUR_MS, "refresh")
        alerts += [a.to_dict() for a in getattr(m, name)(*args)]
        if m.shard._evaluated != evaluated:
            evaluated = m.shard._evaluated
            seen.append((evaluated, dict(m.combiner._last), m.scores(),
                         [(c, m.changed_at(c)) for c in m.changed_clusters()]))
        if i in restore_at:
            m = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    return alerts, seen


@pytest.mark.parametrize("mark_at", [None, 7_000])
def test_the_pair_schedule_gives_what_moving_every_pair_gives(mark_at):
    calls = _calls()
    cfg = DriftConfig(reference_max_age_ms=40 * HOUR_MS)  # the mark lapses within the run: back to rolling
    fast = DriftMonitor(cfg)
    alerts, seen = _run(fast, calls, mark_at=mark_at)
    plain = DriftMonitor(cfg)
    alerts_p, seen_p = _run(plain, calls, every_pair=True, mark_at=mark_at)
    assert alerts == alerts_p and seen == seen_p
    assert any(a["kind"] == "transition" for a in alerts)  # the busy pairs' change is seen
    assert any(r.get("pair") for (c, k), r in seen[-40][1].items() if k == "transition")  # and pairs score
    # the pairs' running sums too, once the skipped ones have taken their bounds (as a snapshot does)
    fast.shard._sync_pairs()
    assert fast.shard._pairs.keys() == plain.shard._pairs.keys()
    for p, t in fast.shard._pairs.items():
        u = plain.shard._pairs[p]
        for w, v in ((t._ref, u._ref), (t._cur, u._cur)):
            assert (w.lo, w.hi, list(w.sum.items())) == (v.lo, v.hi, list(v.sum.items()))


def test_a_recovery_snapshot_between_evaluations_continues_identically():
    calls = _calls(hours=160)
    whole = _run(DriftMonitor(), calls)
    restored = _run(DriftMonitor(), calls, restore_at=(3_000, 3_001, 6_500, 9_000))
    assert restored == whole
    m = DriftMonitor()
    _run(m, calls[:5_000])
    assert "_schedule" in m.shard.__dict__ and pickle.loads(pickle.dumps(m)).shard._schedule.ranges is None  # derived


def test_other_clusters_read_as_the_dicts_they_stand_for():
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = [int(k) for k in rng.integers(0, 12, size=20)]
        own_o = Counter({k: int(rng.integers(0, 4)) for k in keys[:6]})
        total_o = Counter(own_o) + Counter({k: int(rng.integers(0, 4)) for k in keys[4:]})
        own_e = {k: float(rng.random() * 3) for k in keys[:8]}
        total_e = Counter()
        total_e.update(own_e)
        total_e.update({k: float(rng.random() * 3) for k in keys[5:]})
        oo, oe = OtherClusters(total_o, total_e, own_o, own_e)
        want_o, want_e = total_o - own_o, {s: v - own_e.get(s, 0.0) for s, v in total_e.items()}
        for s in range(14):
            assert oo.get(s, 0) == want_o.get(s, 0) and type(oo.get(s, 0)) is type(want_o.get(s, 0))
            assert oe.get(s, 0.0) == want_e.get(s, 0.0)
