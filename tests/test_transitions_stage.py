"""The transition rule and successor counts as dataflow steps (Bytewax TestingSource -> steps -> TestingSink)."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.transitions import mine_triples
from streams.content_stage import ClusteredEngagement
from streams.contract import Engagement, RawMessage, Validator
from streams.generator import GeneratorConfig, WorkloadGenerator
from streams.transitions_stage import PairState, Triple, UserShardTransitions, mine_successors, track_user_clusters

DAY = 86_400_000


def ce(user: str, cluster: int, ts: int, positive: bool = True) -> ClusteredEngagement:
    return ClusteredEngagement(Engagement(user, f"i{cluster}", "like" if positive else "skip", ts, positive), cluster)


def run(events: list[ClusteredEngagement], half_lives_ms: tuple[float, ...] = (DAY,), shards: int = 1,
        batch_size: int = 1) -> tuple[list[Triple], list[PairState]]:
    flow = Dataflow("transitions_test")
    triples, states = mine_successors(op.input("in", flow, TestingSource(events, batch_size)), shards=shards,
                                      half_lives_ms=half_lives_ms)
    got_t, got_s = [], []
    op.output("t", triples, TestingSink(got_t))
    op.output("s", states, TestingSink(got_s))
    run_main(flow)
    return got_t, got_s


def test_hand_worked_sequences():
    events = [
        ce("a", 1, 1), ce("a", 1, 2), ce("a", 2, 3), ce("a", 9, 4, positive=False),  # repeat; a negative one
        ce("a", 1, 5), ce("a", 3, 6),  # back to h1: no triple, then (2, 1) -> 3
        ce("b", 5, 7),  # a history shorter than two: nothing
        ce("a", 4, 8),
    ]
    triples, states = run(events)
    assert [(t.user_id, t.c1, t.c2, t.c_next) for t in triples] == [("a", 2, 1, 3), ("a", 1, 3, 4)]
    assert [s.pair for s in states] == [(2, 1), (1, 3)]
    assert [s.successors[0].cluster for s in states] == [3, 4]


def test_user_step_state_is_the_tracker_snapshot_and_last_ts():
    state, out = track_user_clusters(None, ce("u", 4, 1))
    state, out = track_user_clusters(state, ce("u", 6, 2))
    assert state == (4, 6, 2) and out == []
    state, out = track_user_clusters(state, ce("u", 7, 3))
    assert state == (6, 7, 3) and [(t.c1, t.c2, t.c_next) for t in out] == [(4, 6, 7)]
    assert track_user_clusters((6, 7), ce("u", 8, 4))[0] == (7, 8, 4)  # a snapshot from before last_ts


def test_an_engagement_released_late_by_the_content_join_invents_no_transition():
    state, _ = track_user_clusters(None, ce("u", 1, 10))
    state, _ = track_user_clusters(state, ce("u", 2, 20))
    state, out = track_user_clusters(state, ce("u", 3, 15))  # waited for its content; the user moved on
    assert out == [] and state == (1, 2, 20)
    state, out = track_user_clusters(state, ce("u", 3, 30))
    assert [(t.c1, t.c2, t.c_next) for t in out] == [(1, 2, 3)]


def test_busiest_pairs_find_the_generators_true_top_successor():
    gen = WorkloadGenerator(GeneratorConfig(seed=7, events=60_000))
    msgs = list(gen.messages())
    truth = gen.ground_truth()
    cutoff = min(d["start_ms"] for d in truth["drifts"] if d["kind"] == "transition")
    v = Validator()
    events = []
    for i, m in enumerate(msgs):
        e = v.validate(RawMessage(m.topic, 0, i, m.key, m.value))
        if type(e) is Engagement and e.ts_ms < cutoff:
            events.append(ClusteredEngagement(e, truth["items"][e.item_id]))
    _, states = run(events, half_lives_ms=(2 * DAY,))
    latest: dict[tuple[int, int], PairState] = {}
    for s in states:
        latest[s.pair] = s  # full state per pair: the last one is the answer
    busiest = sorted(latest.values(), key=lambda s: -s.support)[:20]
    initial = truth["successors"]["initial"]
    hits = 0
    for s in busiest:
        dist = initial[f"{s.pair[0]},{s.pair[1]}"]
        hits += s.successors[0].cluster == int(max(dist, key=dist.get))
    assert hits >= 16, hits


def test_settings_choose_the_adaptive_mix_or_one_fixed_half_life(monkeypatch):
    from pydantic import ValidationError

    from streams.settings import Settings

    assert Settings().transitions.half_lives() == (DAY, 2 * DAY, 7 * DAY, 30 * DAY, float("inf"))
    monkeypatch.setenv("DRIFTRAG_TRANSITIONS__HALF_LIVES_MS", "[3600000, null]")
    assert Settings().transitions.half_lives() == (3_600_000, float("inf"))
    monkeypatch.setenv("DRIFTRAG_TRANSITIONS__HALF_LIFE_MS", str(2 * DAY))  # one fixed, as earlier versions
    assert Settings().transitions.half_lives() == (2 * DAY,)
    for bad in ("[3600000, 3600000]", "[0]", "[]"):
        monkeypatch.setenv("DRIFTRAG_TRANSITIONS__HALF_LIVES_MS", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_pair_states_carry_the_time_scale_and_a_pairs_last_state_is_its_whole_stream():
    """Default half-lives, scored on arrival (no drift step here): the last state of each pair is the table's
    answer after the whole stream, whatever the batching."""
    from operators.adaptive_successors import LiveSuccessors

    gen = WorkloadGenerator(GeneratorConfig(seed=3, events=8_000))
    v = Validator()
    truth = gen.ground_truth()
    events = [ClusteredEngagement(e, truth["items"][e.item_id]) for i, m in enumerate(gen.messages())
              if type(e := v.validate(RawMessage(m.topic, 0, i, m.key, m.value))) is Engagement]
    triples, states = run(events, half_lives_ms=(DAY, 2 * DAY, 7 * DAY, 30 * DAY, float("inf")))
    ref = LiveSuccessors(trend_window_ms=DAY)
    for t in sorted(triples, key=lambda t: t.ts_ms):
        ref.update((t.c1, t.c2, t.c_next), t.ts_ms, t.user_id)
    latest = {s.pair: s for s in states}
    assert latest.keys() == set(ref.pairs())
    for pair, s in latest.items():
        e = ref.estimate(pair)
        assert s.weights == e.weights and s.half_life_ms == e.half_life_ms and s.half_life in (
            "1d", "2d", "7d", "30d", "none")
        assert dict(s.counts) == pytest.approx(dict(e.counts), rel=1e-9) and s.support == pytest.approx(e.support)
    # Each triple is in exactly one state's count of triples observed: the job's "triples" sums them, whatever
    # the batching or the number of workers (one state per pair and batch).
    assert sum(s.observed for s in states) == len(triples) > 1000


def test_scored_triples_are_not_counted_again():
    from operators.adaptive_successors import LiveSuccessors
    from streams.transitions_stage import CountSuccessors, ScoredTriple

    logic = CountSuccessors(lambda: LiveSuccessors((DAY,)), None, ordered=True)
    t = [Triple(1, 2, c, DAY + i, f"u{i}") for i, c in enumerate((3, 4, 3))]
    out, _ = logic.on_batch(t)
    assert [s.observed for s in out] == [3]
    out, _ = logic.on_batch([ScoredTriple(x.c1, x.c2, x.c_next, x.ts_ms, x.user_id) for x in t])
    assert [s.observed for s in out] == [0] and out[0].support == pytest.approx(3.0)


@pytest.mark.parametrize("shards,batch_size", [(1, 1), (1, 64), (3, 64), (7, 500)])
def test_user_shards_mine_each_users_triples_as_the_rule_does_alone(shards, batch_size):
    """Users kept per shard (one dict per shard) give every user exactly the triples of the paper's rule over that
    user's positive sequence, whatever the shard count and batch size; ids collide across users on purpose (the
    same clusters, the same timestamps)."""
    import random

    rng = random.Random(shards * 1000 + batch_size)
    users = [f"u{i}" for i in range(40)]
    events, seqs = [], {u: [] for u in users}
    for ts in range(2_000):
        u, c, pos = rng.choice(users), rng.randrange(5), rng.random() < 0.8
        events.append(ce(u, c, ts // 3, pos))  # three engagements share each timestamp
    for e in sorted(events, key=lambda x: x.engagement.ts_ms):  # the step's own order: event time, stable
        if e.engagement.positive:
            seqs[e.engagement.user_id].append(e.cluster)
    triples, _ = run(events, shards=shards, batch_size=batch_size)
    got = {u: [(t.c1, t.c2, t.c_next) for t in triples if t.user_id == u] for u in users}
    assert got == {u: mine_triples(seqs[u]) for u in users}
    assert len(triples) == sum(len(mine_triples(s)) for s in seqs.values()) > 100


def test_a_user_shard_keeps_one_plain_tuple_per_user_and_resumes_from_its_snapshot():
    shard = UserShardTransitions(None)
    out, _ = shard.on_batch([ce("a", 1, 1), ce("b", 4, 1), ce("a", 2, 2)])
    snap = shard.snapshot()
    assert out == [] and snap == {"a": (1, 2, 2), "b": (None, 4, 1)}
    shard.on_batch([ce("b", 5, 3)])
    assert snap == {"a": (1, 2, 2), "b": (None, 4, 1)}  # a snapshot handed out is not changed afterwards
    again = UserShardTransitions(snap)
    out, _ = again.on_batch([ce("a", 3, 5)])
    assert [(t.c1, t.c2, t.c_next, t.user_id, t.ts_ms) for t in out] == [(1, 2, 3, "a", 5)]
