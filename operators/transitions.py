"""The paper's transition rule, kept exactly (brief: 'Transitions').

Per user, keep the last two distinct clusters of positively engaged items (h1, h2). On a positive
engagement with cluster c: if c == h2 nothing changes; else if h1 and h2 exist and c != h1, emit the
triple (h1, h2, c); then (h1, h2) = (h2, c).

>>> t = TransitionTracker()
>>> [t.update(c) for c in [3, 3, 5, 3, 7, 7, 2]]
[None, None, None, None, (5, 3, 7), None, (3, 7, 2)]
>>> t.state
(7, 2)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)


class TransitionTracker(Generic[C]):
    """One user's last two distinct positive clusters; ``update(c)`` returns the emitted triple or None.

    Only positive engagements must be fed in: filtering by action/dwell is the caller's job.
    """

    __slots__ = ("h1", "h2")

    def __init__(self, h1: C | None = None, h2: C | None = None) -> None:
        if h1 is not None and h2 is None:
            raise ValueError("h1 set without h2: the history fills from h2 first")
        self.h1 = h1
        self.h2 = h2

    def update(self, c: C) -> tuple[C, C, C] | None:
        h1, h2 = self.h1, self.h2
        if c == h2:
            return None
        triple = (h1, h2, c) if (h1 is not None and h2 is not None and c != h1) else None
        self.h1, self.h2 = h2, c
        return triple  # type: ignore[return-value]

    @property
    def state(self) -> tuple[C | None, C | None]:
        """The immutable snapshot (h1, h2); ``TransitionTracker(*state)`` rebuilds it."""
        return (self.h1, self.h2)


def mine_triples(clusters: Iterable[C]) -> list[tuple[C, C, C]]:
    """All triples of one user's sequence of positive-engagement clusters.

    >>> mine_triples(["a", "b", "a", "c", "c", "d"])
    [('b', 'a', 'c'), ('a', 'c', 'd')]
    >>> mine_triples(["a"])
    []
    """
    tracker: TransitionTracker[C] = TransitionTracker()
    out = []
    for c in clusters:
        t = tracker.update(c)
        if t is not None:
            out.append(t)
    return out
