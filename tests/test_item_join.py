"""OrderedItemJoin: engagements meet their item's cluster, each user's in arrival order, waiting bounded."""

from __future__ import annotations

import random
from collections import namedtuple

import pytest

from operators.item_join import OrderedItemJoin

E = namedtuple("E", "user_id item_id n")


def test_per_item_bound_gives_up_the_longest_waiting_user_and_releases_its_queue():
    j = OrderedItemJoin(max_pending=2, max_wait_ms=10_000)
    j.on_item("k", 1)
    assert j.on_engagement(E("a", "x", 1), 0) == ([], 0)
    assert j.on_engagement(E("a", "k", 2), 1) == ([], 0)  # queued behind a's wait for x
    assert j.on_engagement(E("b", "x", 3), 2) == ([], 0)
    out, dropped = j.on_engagement(E("c", "x", 4), 3)  # a third user waits for x: a (longest) gives up
    assert dropped == 1 and out == [(E("a", "k", 2), 1)]  # and a's queued engagement goes on
    assert j.on_item("x", 5) == [(E("b", "x", 3), 5), (E("c", "x", 4), 5)]
    assert j.waiting == 0 and j.queues == {}


def test_per_user_bound_and_age_bound():
    j = OrderedItemJoin(max_pending=2, max_wait_ms=100)
    j.on_item("k", 1)
    j.on_engagement(E("a", "x", 1), 0)
    j.on_engagement(E("a", "k", 2), 1)
    out, dropped = j.on_engagement(E("a", "k", 3), 2)  # a's queue over 2: its head gives up, the rest goes
    assert dropped == 1 and out == [(E("a", "k", 2), 1), (E("a", "k", 3), 1)]
    j.on_engagement(E("b", "y", 4), 10)
    j.on_engagement(E("b", "k", 5), 20)
    assert j.expire(110) == ([], 0)  # 100 ms old: not yet
    assert j.expire(111) == ([(E("b", "k", 5), 1)], 1)  # older than 100 ms: given up, its follower released
    assert j.waiting == 0


def test_without_waiting_content_must_come_first():
    j = OrderedItemJoin(max_pending=0, max_wait_ms=100)
    assert j.on_engagement(E("a", "x", 1), 0) == ([], 1)
    assert j.waiting == 0 and j.on_item("x", 2) == []
    with pytest.raises(ValueError, match="max_pending must be >= 0"):
        OrderedItemJoin(max_pending=-1)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        OrderedItemJoin(max_wait_ms=-1)


def test_a_content_update_moves_later_engagements_to_the_new_cluster():
    j = OrderedItemJoin()
    j.on_item("i", 1)
    assert j.on_engagement(E("a", "i", 1), 0)[0] == [(E("a", "i", 1), 1)]
    j.on_item("i", 2)
    assert j.on_engagement(E("a", "i", 2), 1)[0] == [(E("a", "i", 2), 2)]


@pytest.mark.parametrize("seed", range(5))
def test_random_streams_keep_each_users_order_and_account_for_everything(seed):
    """Engagements and content in random interleavings, with snapshots and restores on the way: every user's
    released engagements are in arrival order, nothing is released twice, and released + dropped + waiting is
    everything that came in."""
    rng = random.Random(seed)
    j = OrderedItemJoin(max_pending=3, max_wait_ms=50)
    released: dict[str, list[int]] = {}
    seen, dropped_total, now = 0, 0, 0
    known: set[str] = set()
    for n in range(3000):
        now += rng.randint(0, 2)
        if rng.random() < 0.05:
            item = f"i{rng.randint(0, 40)}"
            known.add(item)
            out = j.on_item(item, rng.randint(0, 5))
        else:
            seen += 1
            out, dropped = j.on_engagement(E(f"u{rng.randint(0, 30)}", f"i{rng.randint(0, 40)}", n), now)
            dropped_total += dropped
        for e, c in out:
            assert e.item_id in known and isinstance(c, int)
            released.setdefault(e.user_id, []).append(e.n)
        if rng.random() < 0.01:
            j = OrderedItemJoin.from_snapshot(j.snapshot(), 3, 50)
    for order in released.values():
        assert order == sorted(order) and len(set(order)) == len(order)
    assert sum(map(len, released.values())) + dropped_total + j.waiting == seen
    assert dropped_total > 0 and j.waiting < seen  # the bounds were exercised, and most got through
