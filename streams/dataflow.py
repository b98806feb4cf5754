"""The driftrag dataflow, wired like the brief's diagram.

    source (Kafka | files | embedded generator)          RawMessage
      -> validate                                           Engagement | ContentEvent | DeadLetter
           -> dead_letters -> dead-letter sink              KeyedValue(key, dead-letter JSON)
           -> valid_events -> (valid sink)                  Engagement | ContentEvent
                  -> content stage (when clustering)        see streams/content_stage.py
                       -> items sink                        EmbeddedItem
                       -> events sink                       ClusteredEngagement
                       -> transitions (streams/transitions_stage.py) -> pairs sink   PairState
                       -> index mutations (streams/index_stage.py) -> mutations sink  Mutation
                       -> drift monitor (streams/drift_stage.py) -> alerts sink  Alert; drift status -> mutations
                            + its triples again, in event-time order -> transitions (each pair's time scale)
                            + cadence checks: the transitions export C_p's records to the cadence step
                              (streams/cadence_stage.py)             -> cadence sink CadenceEvent
                  -> events sink (without clustering)       Engagement | ContentEvent

The events sink is where the next stages (transitions, drift, index) attach.
Every step is a named function that can be tested alone.

``driftrag_step_records_total{step, direction}`` counts records into and out of validate, content (embedding and
the item join), transitions, drift and index (mutations), one increment per batch and label. The step that
produces a stream counts it (:class:`streams.metrics.StepCounts`), for every step it leaves and enters: no step
exists only to count, since each Bytewax step costs the runtime a hop per batch for every record in it. The drift
step's outputs are still counted by ``count_*`` steps of their own (few records: alerts, cadence, drift status),
and so are the index mutations (see ``count_mutations``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS
from streams.content_stage import ClusteringConfig, cluster_events, tally_items
from streams.contract import ContentEvent, DeadLetter, Engagement, Validator, dead_letter_key
from streams.drift_stage import drift_alerts_and_status, order_drift
from streams.errors import guard_batch
from streams.index_stage import index_mutations
from streams.metrics import DEAD_LETTERS, STEP_RECORDS, StepCounts
from streams.sinks import KeyedValue
from streams.transitions_stage import count_successors, mine_triples


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


def dead_letters(batch: list[Engagement | ContentEvent | DeadLetter]) -> list[KeyedValue]:
    """The batch's dead letters, encoded for the dead-letter topic (one step for the split and the encoding,
    instead of a predicate and a map called per record)."""
    return [encode_dead_letter(x) for x in batch if type(x) is DeadLetter]


def valid_events(batch: list[Engagement | ContentEvent | DeadLetter]) -> list[Engagement | ContentEvent]:
    """The batch's valid events, in order."""
    return [x for x in batch if type(x) is not DeadLetter]


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
    half_lives_ms: tuple[float, ...] = DEFAULT_HALF_LIVES_MS,
    trend_window_ms: int = 86_400_000,
    engagement_partitions: int = 1,
    drift_shards: int | None = None,
    flow_id: str = "driftrag",
) -> Dataflow:
    flow = Dataflow(flow_id)
    later = pairs_sink is not None or mutations_sink is not None or drift_monitor is not None
    drift = [("drift", "in")] * (drift_monitor is not None)
    index = [("index", "in")] * (mutations_sink is not None)
    counts = StepCounts({
        "read": [("validate", "in")],
        "valid": [("validate", "out"), *[("content", "in")] * (clustering is not None)],
        "items": [("content", "out"), *drift, *index],
        "clustered": [("content", "out"), *[("transitions", "in")] * later, *drift],
        "triples": drift,
        "pair_states": [("transitions", "out"), *index],
        "tallies": index,
    })
    validate = guard_batch("validate", validator.validate_batch)

    def counted_validate(batch: list[Any]) -> list[Any]:
        counts.add("read", len(batch))
        return validate(batch)

    checked = op.flat_map_batch("validate", op.input("read", flow, source), counted_validate)
    write("write_dead_letters", op.flat_map_batch("dead_letters", checked, dead_letters), dead_letter_sink)
    valid = op.flat_map_batch("valid_events", checked, counts.counting("valid", valid_events))
    if valid_sink is not None:
        write("write_valid", valid, valid_sink)
    if clustering is None:
        write("write_events", valid, events_sink)
        return flow
    items, clustered = cluster_events(valid, clustering, counts)
    if items_sink is not None:
        write("write_items", items, items_sink)
    write("write_events", clustered, events_sink)
    if not later:
        return flow
    triples = mine_triples(clustered, counts, clustering.shards)
    drift_status = scored = ordering = None
    if drift_monitor is not None:
        cadence_config = cadence().config if cadence is not None else None
        if cadence_config is not None and tuple(cadence_config.half_lives()) != tuple(half_lives_ms):
            raise ValueError(f"the cadence controller's C_p is the successor estimate: its half-lives "
                             f"{cadence_config.half_lives()} must be the successor step's {tuple(half_lives_ms)}")
        ordering = order_drift(items, clustered, triples, drift_monitor, cadence_config, engagement_partitions,
                               clustering.shards if drift_shards is None else drift_shards, clustering.shards)
        scored = ordering.scored
    pair_states, records = count_successors(triples, scored, half_lives_ms=half_lives_ms,
                                            trend_window_ms=trend_window_ms, counts=counts)
    if ordering is not None:
        alerts, drift_status, cadence_events = drift_alerts_and_status(ordering, records)
        alerts = count("count_alerts", alerts, ("drift", "out"))
        cadence_events = count("count_cadence", cadence_events, ("drift", "out"))
        drift_status = count("count_drift_status", drift_status, ("drift", "out"), *index)
        if alerts_sink is not None:
            write("write_alerts", alerts, alerts_sink)
        if cadence_sink is not None:
            write("write_cadence", cadence_events, cadence_sink)
    if pairs_sink is not None:
        write("write_pairs", pair_states, pairs_sink)
    if mutations_sink is not None:
        mutations = index_mutations(items, tally_items(clustered, counts, clustering.shards), pair_states)
        if drift_status is not None:
            mutations = op.merge("index_and_drift_mutations", mutations, drift_status)
        # This step also hands the sink one batch of the merged streams per activation: straight after the merge,
        # the index would apply (and publish a version for) each input's batch apart, ~4x the applies.
        write("write_index_mutations", count("count_mutations", mutations, ("index", "out")), mutations_sink)
    return flow
