"""Drift sharded by cluster (issue #16): the ordering step, N shards and the combiner give what one monitor with
every cluster gives, alert for alert and status for status, on streams we did not write (hypothesis, with
collisions on every key and fine-tunes that move the reference), and on a real replay."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.adaptive_successors import AdaptiveSuccessorTable, LiveSuccessors
from operators.alerts import Alert
from operators.cadence import CadenceBook, CadenceClock, CadenceController, CadenceEvent
from operators.drift import ClusterDrift, DriftCombiner, DriftConfig, DriftMonitor
from streams.cadence_stage import cadence_step
from streams.cli import main
from streams.drift_stage import DriftOrder, Hold, _combine_step, _order_step, _shard_step, feed_monitor
from streams.errors import ERRORS, ProcessingErrors, _Redo, guard_redo
from streams.generator import GeneratorConfig, write_files
from streams.transitions_stage import CadenceFlush, CountSuccessors, ScoredTriple, SourceRecords, Triple
from tests.test_properties import sensitive_cadence, sensitive_drift

HOUR = 3_600_000
T0 = 1_700_000_000_000 // HOUR * HOUR
VECTORS = [v / np.linalg.norm(v) for v in np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)]


def sensitive() -> DriftConfig:
    """Floors and thresholds low enough for a few hundred events to be scored and alerted."""
    return sensitive_drift()


def cadence() -> CadenceController:
    return CadenceController(sensitive_cadence())


class Sharded:
    """The drift and cadence steps of the dataflow (streams/drift_stage.py, streams/cadence_stage.py) called in
    process: the order step's scored triples and cadence flushes go to one successor state per source cluster
    (streams/transitions_stage.py), its bundles and their records to the cadence step, the decided ops to each
    shard, the shards' reports to the combiner. ``lag``: the successor step's records reach the cadence step one
    call late (the bundles wait for them). ``errors``: wrap the steps in their error guards (as the dataflow
    does), dead-lettering into it."""

    def __init__(self, config: DriftConfig, shards: int, order_state: Any = None,
                 errors: ProcessingErrors | None = None, lag: bool = False) -> None:
        cadence_config = sensitive_cadence()
        self.order = _order_step(config.bucket_ms, shards, lambda: CadenceClock(cadence_config.check_every_ms), 1)
        self.decide = cadence_step(cadence_config, errors or ERRORS)
        self.shard = _shard_step(lambda: ClusterDrift(config), errors or ERRORS)
        self.combine = _combine_step(lambda: DriftCombiner(config), errors or ERRORS)
        if errors is not None:
            self.order = guard_redo("order_drift", self.order, errors=errors)
            self.decide = guard_redo("decide_cadence", self.decide, errors=errors)
            self.shard = guard_redo("monitor_drift", self.shard, errors=errors)
            self.combine = guard_redo("combine_drift", self.combine, errors=errors)
        half_lives = cadence_config.half_lives()
        self.make_successors = lambda: CountSuccessors(lambda: LiveSuccessors(half_lives), None, True)
        self.order_state, self.decide_state, self.shard_states, self.combine_state = order_state, None, {}, None
        self.successors: dict[int, CountSuccessors] = {}
        self.lag, self.late = lag, []
        self.alerts: list[Alert] = []
        self.status: dict[int, Any] = {}  # cluster -> the last drift mutation's value
        self.cadence: list[CadenceEvent] = []
        self.scored: list[Any] = []

    def feed(self, obs: list[tuple]) -> None:
        self.order_state, out = self.order(self.order_state, obs)
        to_shards, to_decide, records = [], [], []
        for x in out:
            if type(x) is tuple:
                (to_decide if x[0] == "cadence" else to_shards).append(x)
            elif type(x) is ScoredTriple or type(x) is CadenceFlush:
                if type(x) is ScoredTriple:
                    self.scored.append(x)
                records += self._successors(x)
            else:
                raise AssertionError(f"unexpected output of the order step: {x!r}")
        if self.lag:
            records, self.late = self.late, records
        self._decide(to_shards, [v for _, v in to_decide] + records)

    def learned(self, scored: list[ScoredTriple]) -> Sharded:
        """Successor states that learned ``scored`` (a job resumed from a store: that step's state is resumed too)."""
        for x in scored:
            self._successors(x)
        return self

    def _successors(self, x: ScoredTriple | CadenceFlush) -> list[SourceRecords]:
        logic = self.successors.get(x.c2)
        if logic is None:
            logic = self.successors[x.c2] = self.make_successors()
        # (the successor step observed each triple when it was mined, and scores it now)
        batch = [Triple(x.c1, x.c2, x.c_next, x.ts_ms, x.user_id), x] if type(x) is ScoredTriple else [x]
        return [r for r in logic.on_batch(batch)[0] if type(r) is SourceRecords]

    def finish(self) -> None:
        """Deliver the records held back by ``lag``."""
        late, self.late = self.late, []
        self._decide([], late)

    def _decide(self, to_shards: list[tuple], inputs: list[Any]) -> None:
        if inputs:
            self.decide_state, out = self.decide(self.decide_state, inputs)
            for y in out:
                (to_shards if type(y) is tuple else self.cadence).append(y)
        reports = []
        for key, ops in to_shards:
            self.shard_states[key], reps = self.shard(self.shard_states.get(key), ops)
            reports += reps
        if reports:
            self.combine_state, out = self.combine(self.combine_state, reports)
            for x in out:
                if type(x) is Alert:
                    self.alerts.append(x)
                else:
                    self.status[x.value["cluster"]] = x.value

    def statuses(self) -> dict[int, dict[str, Any]]:
        if self.combine_state is None:  # no boundary evaluated yet
            return {}
        state = self.combine_state
        comb = (state.state if isinstance(state, _Redo) else state).combiner
        return {c: _stable(comb.status(c)) for c in comb.changed_clusters()}


class Single:
    """One DriftMonitor with every cluster, fed by the same ordering (streams.drift_stage.feed_monitor)."""

    def __init__(self, config: DriftConfig) -> None:
        self.monitor = DriftMonitor(config)
        self.state = DriftOrder(Hold(1), cadence())
        self.alerts: list[Alert] = []
        self.cadence: list[CadenceEvent] = []
        self.scored: list[Any] = []

    def feed(self, obs: list[tuple]) -> None:
        out, _ = feed_monitor(self.monitor, obs, self.state)
        for x in out:
            (self.alerts if type(x) is Alert else self.cadence if type(x) is CadenceEvent else self.scored).append(x)

    def statuses(self) -> dict[int, dict[str, Any]]:
        return {c: _stable(self.monitor.combiner.status(c)) for c in self.monitor.changed_clusters()}


def _stable(status: dict[str, Any]) -> dict[str, Any]:
    """A status without what depends on the caller's clock (``reference`` at the caller's now)."""
    return {k: v for k, v in status.items() if k != "reference"}


def _alerts(alerts: list[Alert]) -> list[dict]:
    return [a.to_dict() for a in alerts]


def _stream(rng: np.random.Generator, hours: int, clusters: int, per_hour: int) -> list[tuple]:
    """Observations as drift_observations makes them: ("e", cluster, ts, positive, partition), ("t", c1, c2,
    c_next, ts, partition, user), ("i", cluster, ts, vector, novel, item). Few clusters, few users, whole-minute
    times: collisions on every sort key. Cluster 1's successors and positive rate change half-way."""
    obs: list[tuple] = []
    for h in range(hours):
        late = h >= hours // 2
        for _ in range(per_hour):
            ts = T0 + h * HOUR + int(rng.integers(4)) * 60_000
            c = int(rng.integers(clusters))
            pos = bool(rng.random() < (0.2 if late and c == 1 else 0.6))
            obs.append(("e", c, ts, pos, 0))
            if clusters >= 3 and rng.random() < 0.7:  # a transition triple: three distinct clusters
                c1 = (c + 1 + int(rng.integers(clusters - 1))) % clusters
                rest = [x for x in range(clusters) if x not in (c1, c)]
                nxt = rest[0] if late and c == 1 else rest[int(rng.integers(len(rest)))]
                obs.append(("t", c1, c, nxt, ts, 0, f"u{int(rng.integers(5))}"))
            if rng.random() < 0.1:
                obs.append(("i", c, ts, VECTORS[int(rng.integers(len(VECTORS)))], bool(rng.random() < 0.3),
                            f"it{int(rng.integers(20))}"))
    return obs


def _batches(obs: list[tuple], sizes: list[int]) -> list[list[tuple]]:
    out, i, k = [], 0, 0
    while i < len(obs):
        n = sizes[k % len(sizes)]
        out.append(obs[i:i + n])
        i, k = i + n, k + 1
    return out


def _run(runner: Any, batches: list[list[tuple]]) -> Any:
    for b in batches:
        runner.feed(b)
    if hasattr(runner, "finish"):
        runner.finish()
    return runner


def _same(a: Any, b: Any) -> None:
    assert _alerts(a.alerts) == _alerts(b.alerts)
    assert [(e.kind, e.ts_ms) for e in a.cadence] == [(e.kind, e.ts_ms) for e in b.cadence]
    assert a.scored == b.scored
    assert a.statuses() == b.statuses()


def test_shards_give_what_one_monitor_gives_with_alerts_and_fine_tunes():
    rng = np.random.default_rng(3)
    batches = _batches(_stream(rng, hours=200, clusters=6, per_hour=12), [97, 13, 400, 1])
    one = _run(Single(sensitive()), batches)
    # not vacuous: every kind alerts, and fine-tunes move the reference (marks reach every shard)
    assert {a.kind for a in one.alerts} == {"transition", "engagement", "content", "volume"}
    assert any(e.kind == "fine_tune" for e in one.cadence)
    assert any(s["reference_at_change"]["transition"]["policy"] == "fine-tune" for s in one.statuses().values())
    for shards in (1, 2, 3, 7):
        sharded = _run(Sharded(sensitive(), shards), batches)
        _same(sharded, one)
        assert len(sharded.shard_states) == shards
        # the shards hold disjoint clusters: each cluster's state lives on cluster % shards
        for key, state in sharded.shard_states.items():  # (unguarded: the plain state)
            shard, (index, of) = state.shard, state.place
            assert int(key) == index and of == shards
            assert all(c % shards == index for c in shard._engagement)
            assert all(c2 % shards == index for _, c2 in shard._pairs)
        # the last status each cluster published is its status now
        final = sharded.statuses()
        assert {c: v["scores"] for c, v in sharded.status.items()} == \
            {c: s["scores_at_change"] for c, s in final.items()}


def test_default_thresholds_on_a_drifting_stream_alert_the_same():
    rng = np.random.default_rng(5)
    batches = _batches(_stream(rng, hours=240, clusters=5, per_hour=60), [500, 37])
    one = _run(Single(DriftConfig()), batches)
    assert one.alerts  # the planted change on cluster 1 alerts at the calibrated thresholds
    _same(_run(Sharded(DriftConfig(), 4), batches), one)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), hours=st.integers(1, 150), clusters=st.integers(1, 7),
       shards=st.integers(1, 6), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4))
def test_any_stream_any_shard_count_any_batching(seed, hours, clusters, shards, sizes):
    rng = np.random.default_rng(seed)
    obs = _stream(rng, hours, clusters, per_hour=int(rng.integers(1, 10)))
    rng.shuffle(obs[: len(obs) // 3])  # arrivals out of order within the hold's reach
    batches = _batches(obs, sizes)
    _same(_run(Sharded(sensitive(), shards), batches), _run(Single(sensitive()), batches))


def test_a_recovered_single_monitor_is_handed_over_to_the_shards():
    """The state of the one drift step of earlier versions, (monitor, sent_at, cadence, hold), recovered under
    the same step id: the order step splits the monitor over the shards and the combiner, and the run goes on as
    the monitor would have."""
    rng = np.random.default_rng(8)
    batches = _batches(_stream(rng, hours=160, clusters=6, per_hour=12), [120])
    half = len(batches) // 2
    one = _run(Single(sensitive()), batches[:half])
    legacy = pickle.loads(pickle.dumps((one.monitor, {}, one.state.cadence, one.state.hold)))
    alerts_before, cadence_before, learned = len(one.alerts), len(one.cadence), list(one.scored)
    _run(one, batches[half:])
    # (the successor step's state of the same store: what it learned before)
    resumed = _run(Sharded(sensitive(), 3, order_state=legacy).learned(learned), batches[half:])
    assert [e.to_dict() for e in resumed.cadence] == [e.to_dict() for e in one.cadence[cadence_before:]]
    assert any(e.kind == "fine_tune" for e in resumed.cadence)
    assert _alerts(resumed.alerts) == _alerts(one.alerts[alerts_before:]) and resumed.alerts
    assert resumed.statuses() == one.statuses()


def test_step_states_kept_as_lists_by_the_first_sharded_version_continue_identically():
    """The first sharded version kept each shard step's state as [shard, relay, (index, shards)] and the
    combiner's as [combiner, waiting, sent_at, latest]; recovered from such a store, the steps go on as if nothing
    had happened."""
    rng = np.random.default_rng(12)
    batches = _batches(_stream(rng, hours=160, clusters=6, per_hour=12), [90, 7])
    half = len(batches) // 2
    whole = _run(Sharded(sensitive(), 3), batches)
    first = _run(Sharded(sensitive(), 3), batches[:half])
    old = pickle.loads(pickle.dumps((
        {k: [st.shard, st.relay, st.place] for k, st in first.shard_states.items()},
        [first.combine_state.combiner, first.combine_state.waiting, first.combine_state.sent_at,
         first.combine_state.latest])))
    first.shard_states, first.combine_state = old
    assert type(first.combine_state) is list
    _run(first, batches[half:])
    _same(first, whole)
    assert type(first.combine_state).__name__ == "CombineState"


def test_an_old_monitor_pickle_loads_as_shard_and_combiner():
    """A DriftMonitor pickled before the split (one object with every signal) unpickles into the two parts and
    goes on identically."""
    rng = np.random.default_rng(4)
    batches = _batches(_stream(rng, hours=120, clusters=5, per_hour=10), [80])
    one = _run(Single(sensitive()), batches[: len(batches) // 2])
    m = one.monitor
    old = {"config": m.config, "_keep": m.shard._keep, "_engagement": m.shard._engagement,
           "_content": m.shard._content, "_pairs": m.shard._pairs, "_pooled": m.shard._pooled,
           "_volume": m.combiner._volume, "_gates": {**m.shard._gates, **m.combiner._gates},
           "_open": dict(m.combiner._open), "_scores": m.combiner._scores, "_last": dict(m.combiner._last),
           "_changed": m.combiner._changed, "_signature": m.combiner._signature, "_eval_slots": m.shard._eval_slots,
           "_now": m.shard._now, "_evaluated": m.shard._evaluated, "_mark": m.shard._mark, "updates": m.updates}
    if m.combiner._pooled.keys() - m.shard._pooled.keys():
        pytest.skip("the combiner holds CUSUMs of clusters whose windows emptied: not a one-object state")
    for c, p in m.shard._pooled.items():  # one object per cluster then: its windows and its CUSUM
        q = m.combiner._pooled[c]
        p._cusum, p._run_pairs = q._cusum, q._run_pairs
    legacy = DriftMonitor.__new__(DriftMonitor)
    legacy.__setstate__(pickle.loads(pickle.dumps(old)))
    state = pickle.loads(pickle.dumps(one.state))
    rest = batches[len(batches) // 2:]
    out_a, _ = zip(*[feed_monitor(m, b, one.state) for b in rest], strict=True)
    out_b, _ = zip(*[feed_monitor(legacy, b, state) for b in rest], strict=True)
    assert [_alerts([x for x in o if type(x) is Alert]) for o in out_a] == \
        [_alerts([x for x in o if type(x) is Alert]) for o in out_b]
    assert {c: _stable(legacy.status(c)) for c in legacy.changed_clusters()} == \
        {c: _stable(m.status(c)) for c in m.changed_clusters()}


@pytest.mark.slow
def test_a_replay_over_three_drift_shards_writes_what_one_writes(tmp_path: Path, monkeypatch) -> None:
    """The real dataflow (Bytewax, the embedding model, the codebook): alerts, cadence signals and successor
    tables byte for byte, with a fine-tune cost low enough that fine-tunes move the reference."""
    data = tmp_path / "data"
    write_files(GeneratorConfig(seed=5, events=30_000, n_users=3_000, scenario="drifting"), data)
    summaries = {}
    for shards in (1, 3):
        monkeypatch.setenv("DRIFTRAG_DRIFT__SHARDS", str(shards))
        out = tmp_path / f"s{shards}"
        rc = main(["replay", "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
                   "--codebook-dir", str(tmp_path / "cb"), "--out", str(out), "--finetune-cost", "1",
                   "--progress-every", "60"])
        assert rc == 0
        summaries[shards] = json.loads((out / "summary.json").read_text())
    assert summaries[1]["alerts"] > 0 and summaries[1]["cadence"]["fine_tune"] > 0
    for name in ("alerts.jsonl", "cadence.jsonl", "successors.json", "events.jsonl"):
        assert (tmp_path / "s1" / name).read_bytes() == (tmp_path / "s3" / name).read_bytes(), name
    keep = ("alerts", "alerts_by_kind", "cadence", "triples", "pairs")
    assert {k: summaries[1][k] for k in keep} == {k: summaries[3][k] for k in keep}
    for k in ("version", "items", "pairs", "watermark_ts", "rejected_mutations"):
        assert summaries[1]["index"][k] == summaries[3]["index"][k], k


def test_a_store_keeps_its_shard_count_when_the_workers_change(caplog):
    """The clusters' state lives on the shards it was spread over: a job resumed from a store with another
    number of workers keeps the store's shard count (and says so), and goes on as before."""
    rng = np.random.default_rng(6)
    batches = _batches(_stream(rng, hours=150, clusters=6, per_hour=12), [150])
    one = _run(Single(sensitive()), batches)
    before = _run(Sharded(sensitive(), 3), batches[:10])
    after = Sharded(sensitive(), 2)  # restarted with two workers
    after.order_state, after.decide_state, after.shard_states, after.combine_state = pickle.loads(pickle.dumps(
        (before.order_state, before.decide_state, before.shard_states, before.combine_state)))
    after.successors = {c2: CountSuccessors(lambda: None, pickle.loads(pickle.dumps(logic.snapshot())), True)
                        for c2, logic in before.successors.items()}
    after.alerts, after.cadence, after.scored = before.alerts, before.cadence, before.scored
    with caplog.at_level("WARNING"):
        _run(after, batches[10:])
    assert "keeping 3, not the 2 configured" in caplog.text
    assert len(after.shard_states) == 3
    _same(after, one)


@pytest.mark.parametrize("where", ["shard", "combiner"])
def test_a_failing_boundary_is_dead_lettered_and_drift_goes_on(where, monkeypatch):
    """A shard's evaluation, or the combiner's, that raises at one boundary: the step's guard dead-letters the
    record, that boundary goes without it, and every later boundary is evaluated as before (no stall waiting for
    a report that will never come)."""
    rng = np.random.default_rng(3)
    batches = _batches(_stream(rng, hours=200, clusters=6, per_hour=12), [97, 13, 400, 1])
    clean = _run(Sharded(sensitive(), 3), batches)
    bad = T0 + 120 * HOUR
    cls, name = (ClusterDrift, "_evaluate") if where == "shard" else (DriftCombiner, "evaluate")
    real = getattr(cls, name)

    def failing(self, arg):  # noqa: ANN001, ANN202
        now = arg if where == "shard" else arg[0]["now"]
        if now == bad and (where == "combiner" or 1 in self._engagement):
            raise RuntimeError("boom")
        return real(self, arg)

    monkeypatch.setattr(cls, name, failing)
    dead: list = []
    errors = ProcessingErrors(budget=1_000, write=dead.append)
    hit = _run(Sharded(sensitive(), 3, errors=errors), batches)
    step = "monitor_drift" if where == "shard" else "combine_drift"
    assert errors.by_step == {step: 1}  # one dead letter, naming the boundary
    assert orjson.loads(dead[0].value)["boundary"] == bad and dead[0].step == step
    late = [a.to_dict() for a in clean.alerts if a.ts_ms > bad + 200 * HOUR]
    assert _alerts(hit.alerts)  # drift went on
    comb = hit.combine_state.state.combiner
    assert comb._evaluated == clean.combine_state.combiner._evaluated  # to the last boundary
    assert not hit.combine_state.state.waiting  # nothing left waiting
    assert late == [a.to_dict() for a in hit.alerts if a.ts_ms > bad + 200 * HOUR]


def test_a_failing_cadence_check_is_dead_lettered_and_drift_and_cadence_go_on(monkeypatch):
    """A cadence decision that raises at one check: the step's guard dead-letters it once (naming the check),
    that check is passed without a decision, and every bundle still reaches the drift shards: drift goes on
    boundary for boundary, and later checks are decided."""
    rng = np.random.default_rng(3)
    batches = _batches(_stream(rng, hours=200, clusters=6, per_hour=12), [97, 13, 400, 1])
    clean = _run(Sharded(sensitive(), 3), batches)
    bad = next(e.ts_ms for e in clean.cadence if e.ts_ms >= T0 + 100 * HOUR)  # a check that decided something
    real = CadenceBook.check

    def failing(self, ts_ms, *args):  # noqa: ANN001, ANN002, ANN202
        if ts_ms == bad:
            raise RuntimeError("boom")
        return real(self, ts_ms, *args)

    monkeypatch.setattr(CadenceBook, "check", failing)
    dead: list = []
    errors = ProcessingErrors(budget=1_000, write=dead.append)
    hit = _run(Sharded(sensitive(), 3, errors=errors), batches)
    assert errors.by_step == {"decide_cadence": 1}
    assert orjson.loads(dead[0].value) == {"cadence_check": bad} and dead[0].step == "decide_cadence"
    assert not hit.decide_state.state.waiting and not hit.decide_state.state.records  # nothing left waiting
    assert hit.combine_state.state.combiner._evaluated == clean.combine_state.combiner._evaluated
    assert [e.ts_ms for e in hit.cadence if e.ts_ms > bad]  # later checks decided
    assert bad not in {e.ts_ms for e in hit.cadence}


def test_a_failing_export_sends_empty_records_and_the_check_is_decided(monkeypatch):
    """The successor step's export for a check that raises: dead-lettered, and the source sends empty records so
    the cadence step does not wait for it forever."""
    rng = np.random.default_rng(3)
    batches = _batches(_stream(rng, hours=60, clusters=6, per_hour=12), [97])
    calls = []
    real = AdaptiveSuccessorTable.export

    def failing(self, pairs):  # noqa: ANN001, ANN202
        calls.append(pairs)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return real(self, pairs)

    monkeypatch.setattr(AdaptiveSuccessorTable, "export", failing)
    dead: list = []
    errors = ProcessingErrors(budget=1_000, write=dead.append)
    runner = Sharded(sensitive(), 2)
    runner.make_successors = lambda: CountSuccessors(lambda: LiveSuccessors(sensitive_cadence().half_lives()), None,
                                                     True, errors)
    _run(runner, batches)
    assert errors.by_step == {"count_successors": 1} and "cadence_check" in orjson.loads(dead[0].value)
    assert not runner.decide_state.waiting and not runner.decide_state.records and runner.cadence


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), hours=st.integers(1, 120), clusters=st.integers(3, 7),
       shards=st.integers(1, 4), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4))
def test_cadence_decisions_wait_for_late_records(seed, hours, clusters, shards, sizes):
    """The successor step's records reach the cadence step a call after the bundles that need them (another
    batch, another epoch): the bundles wait, and cadence events, alerts and statuses are the controller's."""
    rng = np.random.default_rng(seed)
    obs = _stream(rng, hours, clusters, per_hour=int(rng.integers(1, 10)))
    rng.shuffle(obs[: len(obs) // 3])
    batches = _batches(obs, sizes)
    one = _run(Single(sensitive()), batches)
    late = _run(Sharded(sensitive(), shards, lag=True), batches)
    _same(late, one)
    assert [e.to_dict() for e in late.cadence] == [e.to_dict() for e in one.cadence]


@pytest.mark.parametrize("first_on", [True, False])
def test_a_store_resumed_with_the_cadence_turned_off_or_on_goes_on(first_on):
    """`DRIFTRAG_CADENCE__ENABLED` changed between runs on one recovery store: the ordering step drops the clock
    (off: no check's placeholder reaches the shards, which would reject it, and no bundle waits for a cadence step
    that is not there) or starts one (on)."""
    rng = np.random.default_rng(9)
    batches = _batches(_stream(rng, hours=150, clusters=6, per_hour=12), [150])
    half = len(batches) // 2
    config = sensitive()
    clock = lambda: CadenceClock(sensitive_cadence().check_every_ms)  # noqa: E731
    with_cadence = _order_step(config.bucket_ms, 3, clock, 1)
    without = _order_step(config.bucket_ms, 3, None, 1)
    state = None
    for i, b in enumerate(batches):
        step = with_cadence if (i < half) == first_on else without
        state, out = step(state, b)
        if step is without:  # no placeholder of a check reaches the shards, no bundle goes to a cadence step
            assert not [x for x in out if type(x) is tuple and x[0] == "cadence"]
            assert not [o for x in out if type(x) is tuple for o in x[1] if o[0] == "c"]
        else:
            assert type(state.cadence) is CadenceClock
    assert (state.cadence is None) == first_on
