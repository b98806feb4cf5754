"""Ingest benchmark: validated events/s of the dataflow (1 worker) from a file and from Kafka, beside the raw
confluent-kafka consume rate of the same topics, measured in the same run. Prints one JSON object.

    python bench/ingest.py                       # starts its own local broker (driftrag kafka) on a free port
    python bench/ingest.py --bootstrap host:9092 # or uses yours (creates uniquely prefixed topics)

Headline keys: file_events_per_s, kafka_events_per_s, raw_consume_per_s, kafka_vs_raw_ratio (medians).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.contract import Validator
from streams.dataflow import build_flow
from streams.generator import GeneratorConfig, produce_to_kafka, write_files
from streams.settings import BrokerSettings, KafkaSettings, Settings
from streams.sinks import CallbackSink
from streams.sources import JsonlFileSource, KafkaRawSource
from streams.topics import delete_topics, ensure_topics


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_flow(source, validator: Validator) -> tuple[int, float]:
    """Messages through validate -> sinks on one worker; returns (messages, seconds)."""
    n = [0]

    def count(items: list) -> None:
        n[0] += len(items)

    flow = build_flow(source, validator, dead_letter_sink=CallbackSink(count), events_sink=CallbackSink(count))
    t0 = time.perf_counter()
    run_main(flow)
    return n[0], time.perf_counter() - t0


def raw_consume(kafka: KafkaSettings, topics: list[str], expected: int) -> tuple[int, float]:
    """The limit: a bare confluent-kafka consumer reading the same partitions, touching each value."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient(kafka.client()).list_topics(timeout=30)
    tps = [TopicPartition(t, p, 0) for t in topics for p in sorted(md.topics[t].partitions)]
    c = Consumer(kafka.client(**{"group.id": "bench-raw", "enable.auto.commit": False,
                                 "enable.partition.eof": True, "fetch.wait.max.ms": 50}))
    c.assign(tps)
    n, eof, nbytes = 0, 0, 0
    t0 = time.perf_counter()
    while eof < len(tps):
        for m in c.consume(1000, 0.05):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof += 1
                    continue
                raise RuntimeError(str(err))
            v = m.value()
            nbytes += len(v) if v else 0
            n += 1
    dt = time.perf_counter() - t0
    c.close()
    if n != expected:
        raise RuntimeError(f"raw consumer read {n} messages, expected {expected}")
    return n, dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300_000, help="engagement events (plus content events)")
    p.add_argument("--bad-fraction", type=float, default=0.02)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = p.parse_args()

    gen = GeneratorConfig(seed=11, events=args.events, bad_fraction=args.bad_fraction)
    tmp = Path(tempfile.mkdtemp(prefix="driftrag-bench-"))
    log(f"generating {args.events:,} events into {tmp}")
    write_files(gen, tmp)
    validator = Validator()

    file_runs = []
    for i in range(args.repeats):
        src = JsonlFileSource({"engagements": tmp / "engagements.jsonl", "items": tmp / "items.jsonl"})
        n, dt = run_flow(src, validator)
        file_runs.append(n / dt)
        log(f"file run {i + 1}: {n:,} messages in {dt:.2f}s = {n / dt:,.0f}/s")
    total = n

    broker = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from streams.broker import LocalKafka

        port = free_port()
        broker = LocalKafka(BrokerSettings(port=port, controller_port=free_port(), data_dir=tmp / "broker"))
        log(f"starting a local broker on {port}")
        broker.start(progress=log)
        bootstrap = broker.bootstrap
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    try:
        ensure_topics(kafka, ["engagements", "items"])
        topics = [kafka.topic("engagements"), kafka.topic("items")]
        log("producing to Kafka")
        produce_to_kafka(gen, kafka.client(), {"engagements": topics[0], "items": topics[1]})
        validator = Validator.from_settings(Settings(kafka=kafka))
        kafka_runs, raw_runs = [], []
        for i in range(args.repeats):  # interleaved, so both see the same machine load
            _, dt_raw = raw_consume(kafka, topics, total)
            raw_runs.append(total / dt_raw)
            n, dt = run_flow(KafkaRawSource(kafka.client(), topics, tail=False), validator)
            if n != total:
                raise RuntimeError(f"dataflow read {n} messages from Kafka, expected {total}")
            kafka_runs.append(n / dt)
            log(f"kafka run {i + 1}: dataflow {n / dt:,.0f}/s, raw consume {total / dt_raw:,.0f}/s")
        delete_topics(kafka, topics)
    finally:
        if broker is not None:
            broker.stop()

    med = statistics.median
    result = {
        "benchmark": "ingest",
        "messages": total,
        "bad_fraction": args.bad_fraction,
        "workers": 1,
        "repeats": args.repeats,
        "file_events_per_s": round(med(file_runs)),
        "kafka_events_per_s": round(med(kafka_runs)),
        "raw_consume_per_s": round(med(raw_runs)),
        "kafka_vs_raw_ratio": round(med(kafka_runs) / med(raw_runs), 3),
        "runs": {"file": [round(x) for x in file_runs], "kafka": [round(x) for x in kafka_runs],
                 "raw": [round(x) for x in raw_runs]},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
