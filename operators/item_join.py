"""Engagements meet their item's cluster, each user's engagements in the order they arrived.

One instance serves one shard of users (the dataflow keys the join by user shard and sends every item's cluster
to every shard). An engagement whose item has no content yet waits for it; so do that user's later engagements,
even on known items, because the transition rule downstream must see a user's engagements in order: releasing
the later ones first would make the waiting one "late" and lose (or invent) a transition.

Waiting is bounded, and what falls out is counted, never silently kept forever: per item at most
``max_pending`` users wait for it (the longest-waiting gives up first), per user at most ``max_pending``
engagements queue, and an engagement waits at most ``max_wait_ms`` of processing time. Processing time, not event
time: when the job catches up on a backlog, an item's content can be minutes of processing behind its engagements
but hours behind in event time. Giving up on an engagement releases what queued behind it.

>>> from collections import namedtuple
>>> E = namedtuple("E", "user_id item_id")
>>> j = OrderedItemJoin(max_pending=2, max_wait_ms=1_000)
>>> j.on_item("known", cluster=1)
[]
>>> j.on_engagement(E("u", "new"), now_ms=0)            # waits for the content of "new"
([], 0)
>>> j.on_engagement(E("u", "known"), now_ms=5)          # known, but queues behind u's first one
([], 0)
>>> j.on_engagement(E("v", "known"), now_ms=6)          # another user is not held up
([(E(user_id='v', item_id='known'), 1)], 0)
>>> j.on_item("new", cluster=4)                          # the content arrives: u's queue drains in order
[(E(user_id='u', item_id='new'), 4), (E(user_id='u', item_id='known'), 1)]
>>> _ = j.on_engagement(E("w", "never"), now_ms=10); j.waiting
1
>>> j.on_engagement(E("v", "known"), now_ms=2_000)      # w's has waited too long: given up (1 dropped)
([(E(user_id='v', item_id='known'), 1)], 1)
>>> k = OrderedItemJoin.from_snapshot(j.snapshot(), 2, 1_000); k.clusters == j.clusters, k.waiting
(True, 0)
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any


class OrderedItemJoin:
    """``on_item(item_id, cluster)`` and ``on_engagement(e, now_ms)`` return the engagements released, each with
    its cluster, in each user's arrival order; ``on_engagement`` also says how many waiting ones it gave up.
    Engagements are any objects with ``user_id`` and ``item_id``."""

    def __init__(self, max_pending: int = 1000, max_wait_ms: int = 600_000) -> None:
        if max_pending < 0:
            raise ValueError(f"max_pending must be >= 0, got {max_pending}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_pending = max_pending
        self.max_wait_ms = max_wait_ms
        self.clusters: dict[str, int] = {}
        # user -> [(arrived_ms, e)], the head waiting for its content (read-only outside: "is this user held up?")
        self.queues: dict[str, deque[tuple[int, Any]]] = {}
        self._heads: dict[str, list[str]] = {}  # item -> users whose queue head waits for it, longest first
        self._deadlines: list[tuple[int, str]] = []  # heap of (head's arrived_ms, user); stale entries skipped

    # -- events --------------------------------------------------------------------------------------------

    def on_item(self, item_id: str, cluster: int) -> list[tuple[Any, int]]:
        """The item's (new) cluster; releases the queues that waited for it."""
        self.clusters[item_id] = cluster
        out: list[tuple[Any, int]] = []
        for user in self._heads.pop(item_id, ()):
            self._advance(user, out)
        return out

    def on_engagement(self, e: Any, now_ms: int) -> tuple[list[tuple[Any, int]], int]:
        out: list[tuple[Any, int]] = []
        dropped = self._expire(now_ms, out)
        queue = self.queues.get(e.user_id)
        if queue is not None:  # the user has one waiting: this one queues behind it
            queue.append((now_ms, e))
            if len(queue) > self.max_pending:
                dropped += self._give_up_head(e.user_id, out)
            return out, dropped
        cluster = self.clusters.get(e.item_id)
        if cluster is not None:  # the common case
            out.append((e, cluster))
            return out, dropped
        if self.max_pending == 0:  # no waiting at all: content must come first
            return out, dropped + 1
        self.queues[e.user_id] = deque([(now_ms, e)])
        users = self._wait_for(e.item_id, e.user_id, now_ms)
        if len(users) > self.max_pending:
            dropped += self._give_up_head(users[0], out)
        return out, dropped

    def expire(self, now_ms: int) -> tuple[list[tuple[Any, int]], int]:
        """Give up engagements that waited longer than ``max_wait_ms``; returns (released behind them, dropped).
        ``on_engagement`` does this itself; a caller with a fast path for known items calls it once per batch."""
        out: list[tuple[Any, int]] = []
        return out, self._expire(now_ms, out)

    @property
    def waiting(self) -> int:
        """Engagements not released yet (waiting for content, or queued behind one that is)."""
        return sum(len(q) for q in self.queues.values())

    # -- internals -----------------------------------------------------------------------------------------

    def _wait_for(self, item_id: str, user: str, arrived_ms: int) -> list[str]:
        users = self._heads.setdefault(item_id, [])
        users.append(user)
        heapq.heappush(self._deadlines, (arrived_ms, user))
        return users

    def _advance(self, user: str, out: list[tuple[Any, int]]) -> None:
        """Release the user's queue from the front while its items are known; the next unknown one waits."""
        queue = self.queues[user]
        clusters = self.clusters
        while queue:
            arrived, e = queue[0]
            cluster = clusters.get(e.item_id)
            if cluster is None:
                self._wait_for(e.item_id, user, arrived)
                return
            queue.popleft()
            out.append((e, cluster))
        del self.queues[user]

    def _give_up_head(self, user: str, out: list[tuple[Any, int]]) -> int:
        queue = self.queues[user]
        _, e = queue.popleft()
        users = self._heads.get(e.item_id)
        if users is not None and user in users:
            users.remove(user)
            if not users:
                del self._heads[e.item_id]
        if queue:
            self._advance(user, out)
        else:
            del self.queues[user]
        return 1

    def _expire(self, now_ms: int, out: list[tuple[Any, int]]) -> int:
        dropped, limit, heap = 0, now_ms - self.max_wait_ms, self._deadlines
        while heap and heap[0][0] < limit:
            arrived, user = heapq.heappop(heap)
            queue = self.queues.get(user)
            if queue and queue[0][0] == arrived and self.clusters.get(queue[0][1].item_id) is None:
                dropped += self._give_up_head(user, out)
        return dropped

    # -- recovery ------------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, int], dict[str, tuple[tuple[int, Any], ...]]]:
        """Plain values only (a dict copy, not a deep copy of objects): cheap per epoch for a large catalogue."""
        return dict(self.clusters), {u: tuple(q) for u, q in self.queues.items()}

    @classmethod
    def from_snapshot(cls, snap: tuple, max_pending: int, max_wait_ms: int) -> OrderedItemJoin:
        clusters, queues = snap
        j = cls(max_pending, max_wait_ms)
        j.clusters = dict(clusters)
        for user, entries in sorted(queues.items(), key=lambda kv: kv[1][0][0]):  # longest-waiting first
            j.queues[user] = deque(entries)
            j._wait_for(entries[0][1].item_id, user, entries[0][0])
        return j
