"""The generator's "slow" scenario (streams/generator.py): one slow successor drift of 30% of the pairs."""

from __future__ import annotations

from collections import Counter, defaultdict

from operators.transitions import TransitionTracker
from streams.contract import Engagement, RawMessage, Validator
from streams.generator import SLOW_RAMP, SLOW_SHARE, SLOW_START, GeneratorConfig, WorkloadGenerator


def test_slow_scenario_moves_30_percent_of_the_pairs_over_60_percent_of_the_span():
    cfg = GeneratorConfig(seed=5, events=40_000, n_users=600, scenario="slow", days=30.0)
    gen = WorkloadGenerator(cfg)
    msgs = list(gen.messages())
    gt = gen.ground_truth()
    (d,) = gt["drifts"]
    k = cfg.n_clusters
    assert (d["id"], d["kind"], d["mode"]) == ("s1-transition-slow", "transition", "gradual")
    assert d["start_ms"] == cfg.start_ms + int(SLOW_START * cfg.span_ms)
    assert d["end_ms"] - d["start_ms"] == int(SLOW_RAMP * cfg.span_ms)
    changes = [c for c in gt["successors"]["changes"] if c["drift"] == d["id"]]
    assert len(changes) == d["after"]["pairs"] == int(SLOW_SHARE * k * (k - 1))
    # The data follow: over the moved pairs, the successors' share that goes to each pair's new top successor
    # rises from before the drift to after its ramp.
    new_top = {tuple(c["pair"]): int(max(c["dist"], key=c["dist"].get)) for c in changes}
    v, trackers = Validator(), defaultdict(TransitionTracker)
    early, late = Counter(), Counter()
    for n, m in enumerate(msgs):
        e = v.validate(RawMessage(m.topic, 0, n, m.key, m.value))
        if isinstance(e, Engagement) and e.positive:
            t = trackers[e.user_id].update(gt["items"][e.item_id])
            if t is not None and (t[0], t[1]) in new_top:
                side = early if e.ts_ms < d["start_ms"] else late if e.ts_ms >= d["end_ms"] else None
                if side is not None:
                    side[t[2] == new_top[(t[0], t[1])]] += 1
    assert early.total() > 500 and late.total() > 200  # the last 10% of the span is after the ramp
    assert late[True] / late.total() > early[True] / early.total() + 0.2
