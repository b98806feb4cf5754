"""What the dashboard shows over time, kept by the live index as it applies mutations: each alert's story and each
pair's successor shares. Bounded, and what this replica applied since it started (not in snapshots).

>>> log = AlertLog(size=2)
>>> a = {"alert_id": "a1", "ts": 10, "severity": "warning", "score": 0.6}
>>> log.record([], [a], 10)
>>> log.record([a], [{**a, "severity": "critical", "score": 1.2}], 20)  # escalated
>>> log.record([{**a, "severity": "critical"}], [], 30)  # gone from the cluster's status: closed
>>> e = log.entries["a1"]
>>> e["opened_ts"], e["closed_ts"], [s["severity"] for s in e["steps"]]
(10, 30, ['warning', 'critical'])
>>> h = PairHistory(points=2, pairs=1, bucket_ms=100)
>>> for ts in (5, 50, 150, 260):
...     h.record((1, 2), {"ts_ms": ts, "support": 3.0, "successors": [{"cluster": 4, "score": 1.0}]})
>>> [t for t, _, _ in h.points((1, 2))]  # one point per bucket (the latest wins), at most 2
[150, 260]
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

__all__ = ["AlertLog", "PairHistory"]

Point = tuple[int, float, tuple[tuple[int, float], ...]]  # (ts_ms, support, ((successor, share), ...))


class AlertLog:
    """Each alert's latest version (with its evidence) by ``alert_id``, when it opened, its severity steps (at most
    8) and the event time of the first drift status without it (closed); at most ``size`` alerts, the oldest
    dropped first."""

    def __init__(self, size: int = 500) -> None:
        self.size = size
        self.entries: dict[str, dict[str, Any]] = {}  # alert id -> {"alert", "opened_ts", "closed_ts", "steps"}

    def record(self, old: list[dict[str, Any]], new: list[dict[str, Any]], ts_ms: int | None) -> None:
        """A cluster's open alerts went from ``old`` to ``new`` at event time ``ts_ms``."""
        log_ = self.entries
        for a in new:
            aid = str(a.get("alert_id") or "")
            if not aid:
                continue
            e = log_.get(aid)
            if e is None:
                e = log_[aid] = {"alert": a, "opened_ts": a.get("ts"), "closed_ts": None, "steps": []}
                while len(log_) > self.size:
                    log_.pop(next(iter(log_)))
            e["alert"], e["closed_ts"] = a, None
            step = {"ts": a.get("ts"), "severity": a.get("severity"), "score": a.get("score")}
            if len(e["steps"]) < 8 and (not e["steps"] or e["steps"][-1]["severity"] != step["severity"]):
                e["steps"] = [*e["steps"], step]
        still = {str(a.get("alert_id")) for a in new}
        for a in old:
            aid = str(a.get("alert_id") or "")
            if aid and aid not in still:
                e = log_.setdefault(aid, {"alert": a, "opened_ts": a.get("ts"), "closed_ts": None, "steps": []})
                e["closed_ts"] = ts_ms


class PairHistory:
    """One point of a pair's top ``successors`` shares per ``bucket_ms`` of event time (the latest in the bucket
    wins; an older point is ignored), at most ``points`` per pair and ``pairs`` pairs (the least recently updated
    goes first)."""

    def __init__(self, points: int = 64, pairs: int = 1024, bucket_ms: int = 2 * 3_600_000,
                 successors: int = 6) -> None:
        self.max_points, self.max_pairs, self.bucket_ms, self.successors = points, pairs, bucket_ms, successors
        self.by_pair: OrderedDict[tuple[int, int], deque[Point]] = OrderedDict()  # LRU: most recently updated last

    def record(self, pair: tuple[int, int], p: dict[str, Any]) -> None:
        """The pair's state ``p`` as the index applied it (``ts_ms``, ``support``, ``successors`` with scores)."""
        top = sorted(p["successors"], key=lambda s: (-s["score"], s["cluster"]))[:self.successors]
        point = (p["ts_ms"], round(p["support"], 2), tuple((s["cluster"], round(s["score"], 4)) for s in top))
        hist = self.by_pair.get(pair)
        if hist is None:
            hist = self.by_pair[pair] = deque(maxlen=self.max_points)
        else:
            self.by_pair.move_to_end(pair)
        bucket = self.bucket_ms
        if hist and point[0] // bucket == hist[-1][0] // bucket:
            if point[0] >= hist[-1][0]:
                hist[-1] = point
        elif not hist or point[0] > hist[-1][0]:
            hist.append(point)
        while len(self.by_pair) > self.max_pairs:
            self.by_pair.popitem(last=False)

    def points(self, pair: tuple[int, int]) -> list[Point]:
        """The pair's points, oldest first (empty: none kept)."""
        return list(self.by_pair.get(pair, ()))

    def __contains__(self, pair: object) -> bool:
        return pair in self.by_pair

    def __iter__(self) -> Any:
        return iter(self.by_pair)

    def __len__(self) -> int:
        return len(self.by_pair)
