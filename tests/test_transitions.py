"""The brief's transition rule on hand-worked sequences, alone and through the dataflow's positive filter."""

from __future__ import annotations

import orjson
import pytest

from operators.transitions import TransitionTracker
from streams.content_stage import ClusteredEngagement
from streams.contract import RawMessage, Validator
from tests.test_transitions_stage import run


def triples(clusters: list[int]) -> list[tuple[int, int, int]]:
    t = TransitionTracker()
    return [x for x in map(t.update, clusters) if x is not None]


@pytest.mark.parametrize(("seq", "expected"), [
    ([], []),                                   # no history
    ([1], []),                                  # shorter than two
    ([1, 2], []),                               # two distinct clusters: a pair, no successor yet
    ([1, 1, 1, 2, 2], []),                      # repeats change nothing
    ([1, 2, 3], [(1, 2, 3)]),
    ([1, 2, 1], []),                            # a return to the previous cluster is not a successor...
    ([1, 2, 1, 2], []),                         # ...and ping-pong never emits
    ([1, 2, 1, 3], [(2, 1, 3)]),                # but the pair moved on: (h1, h2) = (2, 1)
    ([1, 2, 2, 3, 3, 4], [(1, 2, 3), (2, 3, 4)]),
    ([5, 3, 3, 7, 7, 2], [(5, 3, 7), (3, 7, 2)]),
])
def test_hand_worked_sequences(seq, expected):
    assert triples(seq) == expected


def test_state_after_a_return():
    t = TransitionTracker()
    for c in (1, 2, 1):
        t.update(c)
    assert t.state == (2, 1)


def test_negative_and_short_dwell_engagements_are_ignored_by_the_dataflow():
    """Through the validator (positive rule: like/share/comment/save, or view with dwell >= 10 s) and the
    transitions stage: only positive engagements move a user's clusters."""
    v = Validator()

    def eng(item: str, action: str, ts: int, dwell: int | None = None) -> ClusteredEngagement:
        obj = {"user_id": "u", "item_id": item, "action": action, "ts": ts}
        if dwell is not None:
            obj["dwell_ms"] = dwell
        e = v.validate(RawMessage("engagements", 0, ts, b"u", orjson.dumps(obj)))
        return ClusteredEngagement(e, int(item[1:]))

    events = [
        eng("c1", "like", 1),
        eng("c9", "skip", 2),                   # negative
        eng("c8", "dislike", 3),                # negative
        eng("c2", "view", 4, dwell=12_000),     # a long view is positive
        eng("c7", "view", 5, dwell=3_000),      # short dwell: ignored
        eng("c6", "view", 6),                   # a view without dwell: ignored
        eng("c3", "save", 7),
    ]
    got, states = run(events)
    assert [(t.c1, t.c2, t.c_next) for t in got] == [(1, 2, 3)]
    assert [s.pair for s in states] == [(1, 2)]
