"""The driftrag dataflow, wired like the brief's diagram.

    source (Kafka | files | embedded generator)          RawMessage
      -> validate                                           Engagement | ContentEvent | DeadLetter
      -> split_dead_letters
           trues  -> encode_dead_letter -> dead-letter sink KeyedValue(key, dead-letter JSON)
           falses -> (valid sink)                           Engagement | ContentEvent
                  -> content stage (when clustering)        see streams/content_stage.py
                       -> items sink                        EmbeddedItem
                       -> events sink                       ClusteredEngagement
                       -> transitions (streams/transitions_stage.py) -> pairs sink   PairState
                       -> index mutations (streams/index_stage.py) -> mutations sink  Mutation
                       -> drift monitor (streams/drift_stage.py) -> alerts sink  Alert; drift status -> mutations
                            + cadence controller                     -> cadence sink CadenceEvent
                  -> events sink (without clustering)       Engagement | ContentEvent

The events sink is where the next stages (transitions, drift, index) attach.
Every step is a named function that can be tested alone.

``count_*`` steps pass batches through unchanged and add their lengths to ``driftrag_step_records_total{step,
direction}`` (one increment per batch and label): records into and out of validate, content (embedding and the
item join), transitions, drift and index (mutations). A stream that leaves one step and enters others is counted
for each in one step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from streams.content_stage import ClusteringConfig, cluster_events, tally_items
from streams.contract import ContentEvent, DeadLetter, Engagement, Validator, dead_letter_key
from streams.drift_stage import drift_alerts_and_status
from streams.errors import guard_batch
from streams.index_stage import index_mutations
from streams.metrics import DEAD_LETTERS, STEP_RECORDS
from streams.sinks import KeyedValue
from streams.transitions_stage import mine_successors


def write(step_id: str, stream: Stream[Any], sink: Sink) -> None:
    """``op.output``, keying the items first where the sink is partitioned (:class:`streams.sinks.ExactlyOnceSink`
    under recovery)."""
    if isinstance(sink, FixedPartitionedSink):
        stream = op.map(f"{step_id}_keyed", stream, _keyed)
    op.output(step_id, stream, sink)


def _keyed(x: Any) -> tuple[str, Any]:
    return "", x


def count(step_id: str, stream: Stream[Any], *labels: tuple[str, str]) -> Stream[Any]:
    """``stream`` unchanged, each batch's length added to ``driftrag_step_records_total`` for every ``(step,
    direction)`` of ``labels`` (none: ``stream`` itself, no step)."""
    if not labels:
        return stream
    counters = [STEP_RECORDS.labels(step, direction) for step, direction in labels]

    def inc(batch: list[Any]) -> list[Any]:
        n = len(batch)
        for c in counters:
            c.inc(n)
        return batch

    return op.flat_map_batch(step_id, stream, inc)


def is_dead_letter(x: Engagement | ContentEvent | DeadLetter) -> bool:
    return type(x) is DeadLetter


def encode_dead_letter(dl: DeadLetter) -> KeyedValue:
    """The dead-letter topic's message: original key, JSON value with reason and source position."""
    DEAD_LETTERS.labels(dl.reason).inc()
    return KeyedValue(dead_letter_key(dl.key), dl.to_json())


def build_flow(
    source: Source,
    validator: Validator,
    *,
    dead_letter_sink: Sink,
    events_sink: Sink,
    valid_sink: Sink | None = None,
    clustering: ClusteringConfig | None = None,
    items_sink: Sink | None = None,
    pairs_sink: Sink | None = None,
    mutations_sink: Sink | None = None,
    drift_monitor: Callable[[], Any] | None = None,
    alerts_sink: Sink | None = None,
    cadence: Callable[[], Any] | None = None,
    cadence_sink: Sink | None = None,
    half_life_ms: int = 2 * 86_400_000,
    trend_window_ms: int = 86_400_000,
    engagement_partitions: int = 1,
    flow_id: str = "driftrag",
) -> Dataflow:
    flow = Dataflow(flow_id)
    raw = count("count_read", op.input("read", flow, source), ("validate", "in"))
    checked = op.flat_map_batch("validate", raw, guard_batch("validate", validator.validate_batch))
    split = op.branch("split_dead_letters", checked, is_dead_letter)
    dead = op.map("encode_dead_letter", split.trues, encode_dead_letter)
    write("write_dead_letters", dead, dead_letter_sink)
    valid = count("count_valid", split.falses, ("validate", "out"), *[("content", "in")] * (clustering is not None))
    if valid_sink is not None:
        write("write_valid", valid, valid_sink)
    if clustering is None:
        write("write_events", valid, events_sink)
        return flow
    items, clustered = cluster_events(valid, clustering)
    later = pairs_sink is not None or mutations_sink is not None or drift_monitor is not None
    drift = [("drift", "in")] * (drift_monitor is not None)
    index = [("index", "in")] * (mutations_sink is not None)
    items = count("count_items", items, ("content", "out"), *drift, *index)
    clustered = count("count_clustered", clustered, ("content", "out"), *[("transitions", "in")] * later, *drift)
    if items_sink is not None:
        write("write_items", items, items_sink)
    write("write_events", clustered, events_sink)
    if pairs_sink is None and mutations_sink is None and drift_monitor is None:
        return flow
    triples, pair_states = mine_successors(clustered, half_life_ms=half_life_ms, trend_window_ms=trend_window_ms)
    pair_states = count("count_pair_states", pair_states, ("transitions", "out"), *index)
    if pairs_sink is not None:
        write("write_pairs", pair_states, pairs_sink)
    drift_status = None
    if drift_monitor is not None:
        triples = count("count_triples", triples, ("drift", "in"))
        alerts, drift_status, cadence_events = drift_alerts_and_status(items, clustered, triples, drift_monitor,
                                                                       cadence, engagement_partitions)
        alerts = count("count_alerts", alerts, ("drift", "out"))
        cadence_events = count("count_cadence", cadence_events, ("drift", "out"))
        drift_status = count("count_drift_status", drift_status, ("drift", "out"), *index)
        if alerts_sink is not None:
            write("write_alerts", alerts, alerts_sink)
        if cadence_sink is not None:
            write("write_cadence", cadence_events, cadence_sink)
    if mutations_sink is not None:
        tallies = count("count_tallies", tally_items(clustered), ("index", "in"))
        mutations = index_mutations(items, tallies, pair_states)
        if drift_status is not None:
            mutations = op.merge("index_and_drift_mutations", mutations, drift_status)
        write("write_index_mutations", count("count_mutations", mutations, ("index", "out")), mutations_sink)
    return flow
