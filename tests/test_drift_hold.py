"""The drift step's ordering inside an hour, without a dataflow: observations of every kind that collide on every
sort key (same event time, same first cluster) are fed in one canonical order and never compared across kinds."""

from __future__ import annotations

import itertools
import random

import numpy as np

from operators.drift import DriftMonitor
from streams.drift_stage import DriftOrder, Hold, _ts_key, feed_monitor
from streams.transitions_stage import ScoredTriple

HOUR = 3_600_000
T0 = 1_700_000_000_000 // HOUR * HOUR


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def _colliding_hour(ts: int) -> list[tuple]:
    """An item, a triple and an engagement at the same time whose first cluster is the same (the retail log's
    crash: a content row and a triple row compared an int with an item id)."""
    return [("i", 3, ts, _vec(1), True, "item-b"), ("t", 3, 5, 7, ts, 0, "u2"), ("e", 3, ts, True, 0),
            ("i", 3, ts, _vec(2), False, "item-a"), ("t", 3, 5, 6, ts, 0, "u1"), ("t", 3, 5, 6, ts, 0, "u0"),
            ("e", 5, ts, False, 0)]


def test_rows_of_every_kind_at_one_time_sort_without_error():
    rows = _colliding_hour(T0)
    keys = sorted(map(_ts_key, rows))
    assert len(keys) == len(rows)
    for perm in itertools.permutations(rows):
        assert sorted(perm, key=_ts_key) == sorted(rows, key=_ts_key)


def test_the_monitor_is_fed_the_same_whatever_the_arrival_order():
    base = [o for h in range(30) for o in _colliding_hour(T0 + h * HOUR + 60_000)]
    outs = []
    for seed in range(3):
        obs = base[:]
        random.Random(seed).shuffle(obs)
        monitor = DriftMonitor()
        out, latest = feed_monitor(monitor, obs, DriftOrder(Hold()))
        scored = [(s.ts_ms, s.c1, s.c2, s.c_next, s.user_id) for s in out if type(s) is ScoredTriple]
        outs.append((latest, monitor.scores(), [a.to_dict() for a in out if type(a) is not ScoredTriple], scored))
    assert outs[0][0] == T0 + 29 * HOUR
    assert outs[1] == outs[0] and outs[2] == outs[0]
    # every triple of the complete hours handed back once, in the canonical order the successor estimates score in
    assert outs[0][3] == sorted((T0 + h * HOUR + 60_000, 3, 5, c, u) for h in range(29)
                                for c, u in ((6, "u0"), (6, "u1"), (7, "u2")))
