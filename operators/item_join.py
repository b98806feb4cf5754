"""Engagements meet their item's cluster: per item, the cluster once known and the engagements waiting for it.

Waiting is bounded per item: by count, and by how long (processing time) an engagement has waited; what falls
out is counted, not silently kept forever. Processing time, not event time: when the job catches up on a
backlog, an item's content can be minutes of processing behind its engagements but hours behind in event time.

>>> j = ItemClusterJoin(max_pending=2, max_wait_ms=1_000)
>>> j.on_engagement("e1", now_ms=0), j.on_engagement("e2", now_ms=10)
(([], 0), ([], 0))
>>> j.on_engagement("e3", now_ms=20)          # a third one pushes the oldest out
([], 1)
>>> j.on_item(cluster=4, distance=0.2)       # the content arrives: the waiting ones are released
[('e2', 4), ('e3', 4)]
>>> j.on_engagement("e4", now_ms=30)
([('e4', 4)], 0)
>>> k = ItemClusterJoin(max_pending=2, max_wait_ms=1_000); _ = k.on_engagement("e5", now_ms=40)
>>> ItemClusterJoin.from_snapshot(k.snapshot(), 2, 1_000).on_item(cluster=1, distance=0.1)
[('e5', 1)]
"""

from __future__ import annotations

from typing import Any


class ItemClusterJoin:
    def __init__(self, max_pending: int = 64, max_wait_ms: int = 3_600_000) -> None:
        if max_pending < 0:
            raise ValueError(f"max_pending must be >= 0, got {max_pending}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_pending = max_pending
        self.max_wait_ms = max_wait_ms
        self.cluster: int | None = None
        self.distance: float | None = None
        self._pending: list[tuple[int, Any]] = []

    def on_item(self, cluster: int, distance: float) -> list[tuple[Any, int]]:
        """The item's (new) cluster; returns the released engagements with it."""
        self.cluster, self.distance = cluster, distance
        released = [(e, cluster) for _, e in self._pending]
        self._pending = []
        return released

    def on_engagement(self, engagement: Any, now_ms: int) -> tuple[list[tuple[Any, int]], int]:
        """Returns (engagements ready with their cluster, how many waiting ones were dropped)."""
        if self.cluster is not None:
            return [(engagement, self.cluster)], 0
        dropped = 0
        if self._pending:
            kept = [(t, e) for t, e in self._pending if now_ms - t <= self.max_wait_ms]
            dropped += len(self._pending) - len(kept)
            self._pending = kept
        self._pending.append((now_ms, engagement))
        if len(self._pending) > self.max_pending:
            dropped += len(self._pending) - self.max_pending
            self._pending = self._pending[-self.max_pending:] if self.max_pending else []
        return [], dropped

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def snapshot(self) -> tuple[int | None, float | None, tuple[tuple[int, Any], ...]]:
        return (self.cluster, self.distance, tuple(self._pending))

    @classmethod
    def from_snapshot(cls, snap: tuple, max_pending: int, max_wait_ms: int) -> ItemClusterJoin:
        j = cls(max_pending, max_wait_ms)
        j.cluster, j.distance, pending = snap
        j._pending = list(pending)
        return j
