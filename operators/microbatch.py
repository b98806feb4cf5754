"""Micro-batches within a size and a latency budget.

A batch closes when it holds ``max_size`` items, or ``max_latency_s`` after its first item arrived, whichever
comes first. The clock is passed in, so the rule is testable and Bytewax can drive it with timers.

>>> b = MicroBatcher(max_size=3, max_latency_s=0.020)
>>> b.add("a", now=0.000), b.add("b", now=0.005), b.deadline
(None, None, 0.02)
>>> b.add("c", now=0.006)
['a', 'b', 'c']
>>> b.add("d", now=1.0), b.due(now=1.019), b.due(now=1.020)
(None, False, True)
>>> b.flush()
['d']
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(self, max_size: int = 64, max_latency_s: float = 0.020) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_latency_s < 0:
            raise ValueError(f"max_latency_s must be >= 0, got {max_latency_s}")
        self.max_size = max_size
        self.max_latency_s = max_latency_s
        self._items: list[T] = []
        self._deadline: float | None = None

    def add(self, item: T, now: float) -> list[T] | None:
        """Add one item; returns the closed batch when this item filled it."""
        if not self._items:
            self._deadline = now + self.max_latency_s
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self.flush()
        return None

    def restore(self, items: list[T], now: float) -> None:
        """Reopen a snapshotted batch; its latency budget restarts at ``now``."""
        self._items = list(items)
        self._deadline = now + self.max_latency_s if self._items else None

    def due(self, now: float) -> bool:
        return self._deadline is not None and now >= self._deadline

    def flush(self) -> list[T]:
        items, self._items, self._deadline = self._items, [], None
        return items

    @property
    def deadline(self) -> float | None:
        """When the open batch must close (None when empty)."""
        return self._deadline

    @property
    def pending(self) -> list[T]:
        """The open batch (a copy): the snapshot to rebuild from."""
        return list(self._items)
