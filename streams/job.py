"""`driftrag run`: build the dataflow for Kafka, files or the embedded generator, and run it.

Bytewax's worker/process/recovery options pass straight through to ``bytewax.run.cli_main``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from streams.contract import ContentEvent, Engagement, Validator
from streams.dataflow import build_flow
from streams.metrics import EVENTS_VALID
from streams.settings import Settings
from streams.sinks import CallbackSink, Counter, CountingSink, JsonlSink, KafkaProducerSink, KeyedValue
from streams.sources import GeneratorSource, JsonlFileSource, KafkaRawSource

log = logging.getLogger(__name__)


def event_to_json(e: Engagement | ContentEvent) -> bytes:
    """One validated event as a JSON line, with its type."""
    kind = "engagement" if type(e) is Engagement else "content"
    return orjson.dumps({"type": kind, **{f: getattr(e, f) for f in e.__slots__}})


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("source (default: Kafka)")
    mode = src.add_mutually_exclusive_group()
    mode.add_argument("--embedded", action="store_true",
                      help="no Kafka: run the workload generator and the dataflow in one process")
    mode.add_argument("--events", type=Path, metavar="FILE.jsonl",
                      help="read engagement events from a JSONL file instead of Kafka")
    src.add_argument("--items", type=Path, metavar="FILE.jsonl", help="with --events: content events file")
    src.add_argument("--bootstrap-servers", help="Kafka brokers (default: settings.kafka.bootstrap_servers)")
    src.add_argument("--topic-prefix", help="prefix of every topic name (default: settings.kafka.topic_prefix)")
    src.add_argument("--no-tail", action="store_true", help="Kafka: stop at the end of the topics")
    emb = p.add_argument_group("embedded generator")
    emb.add_argument("--seed", type=int, default=7)
    emb.add_argument("--max-events", type=int, default=50_000, help="engagement events to generate")
    emb.add_argument("--bad-fraction", type=float, default=0.02, help="share of malformed messages")
    emb.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as possible)")
    emb.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write events.jsonl, dead_letter.jsonl (non-Kafka) and "
                     "summary.json here")
    bw = p.add_argument_group("Bytewax")
    bw.add_argument("-w", "--workers-per-process", type=int, help="worker threads per process")
    bw.add_argument("-i", "--process-id", type=int, help="this process's index (multi-process clusters)")
    bw.add_argument("-a", "--addresses", help="';'-separated host:port of every process (multi-process)")
    bw.add_argument("-r", "--recovery-dir", type=Path, help="recovery store directory (enables recovery)")
    bw.add_argument("-s", "--snapshot-interval", type=float, help="seconds between snapshots (epoch length)")
    bw.add_argument("-b", "--backup-interval", type=float, help="seconds to keep old snapshots")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")


def _apply_overrides(args: argparse.Namespace, settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(update={k: v for k, v in {
        "bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.topic_prefix}.items() if v is not None})
    run = settings.run.model_copy(update={k: v for k, v in {
        "workers_per_process": args.workers_per_process, "recovery_dir": args.recovery_dir,
        "snapshot_interval_s": args.snapshot_interval, "backup_interval_s": args.backup_interval}.items()
        if v is not None})
    return settings.model_copy(update={"kafka": kafka, "run": run})


class Job:
    """One configured run: the source, the sinks, counters for progress, and the Bytewax flow."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.settings = settings = _apply_overrides(args, settings)
        self.args = args
        self.counts = Counter()
        k = settings.kafka
        self.validator = Validator.from_settings(settings)
        batch = settings.run.batch_size
        if args.embedded:
            from streams.generator import GeneratorConfig

            gen = GeneratorConfig(seed=args.seed, events=args.max_events, bad_fraction=args.bad_fraction)
            self.mode = "embedded"
            self.source = GeneratorSource(
                gen, {"engagements": k.topic("engagements"), "items": k.topic("items")},
                batch_size=batch, rate=args.rate, max_seconds=args.duration)
        elif args.events is not None:
            self.mode = "files"
            files = {k.topic("engagements"): args.events}
            if args.items is not None:
                files[k.topic("items")] = args.items
            self.source = JsonlFileSource(files, batch_size=batch)
        else:
            self.mode = "kafka"
            self.source = KafkaRawSource(
                k.client(), [k.topic("engagements"), k.topic("items")], tail=not args.no_tail, batch_size=batch)
        out: Path | None = args.out
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        if self.mode == "kafka":
            self.dead_letter_sink = KafkaProducerSink(k.client(), k.topic("dead_letter"))
        elif out is not None:
            self.dead_letter_sink = JsonlSink(out / "dead_letter.jsonl", encode=lambda kv: kv.value)
        else:
            self.dead_letter_sink = CallbackSink(lambda items: None)
        self._events_file = JsonlSink(out / "events.jsonl", encode=event_to_json) if out is not None else None
        self.flow = build_flow(
            self.source, self.validator,
            dead_letter_sink=CountingSink(self.dead_letter_sink, self._count_dead_letters),
            events_sink=CountingSink(self._events_file, self._count_events),
        )

    def _count_events(self, items: list[Engagement | ContentEvent]) -> None:
        n_eng = sum(1 for e in items if type(e) is Engagement)
        if n_eng:
            self.counts.add("engagements", n_eng)
            EVENTS_VALID.labels("engagement").inc(n_eng)
        if n_eng < len(items):
            self.counts.add("items", len(items) - n_eng)
            EVENTS_VALID.labels("content").inc(len(items) - n_eng)

    def _count_dead_letters(self, items: list[KeyedValue]) -> None:
        for kv in items:
            self.counts.add("dead_letter:" + orjson.loads(kv.value)["reason"])

    def summary(self, seconds: float) -> dict[str, Any]:
        c = self.counts.snapshot()
        dead = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("dead_letter:")}
        valid = c.get("engagements", 0) + c.get("items", 0)
        total = valid + sum(dead.values())
        return {
            "mode": self.mode,
            "messages": total,
            "engagements": c.get("engagements", 0),
            "content_events": c.get("items", 0),
            "dead_letter": sum(dead.values()),
            "dead_letter_by_reason": dead,
            "seconds": round(seconds, 3),
            "messages_per_s": round(total / seconds, 1) if seconds > 0 else None,
        }

    def run(self) -> dict[str, Any]:
        rs = self.settings.run
        recovery = None
        if rs.recovery_dir is not None:
            recovery = _recovery_config(rs.recovery_dir, rs.backup_interval_s, self.args)
        t0 = time.monotonic()
        stop = threading.Event()
        ticker = threading.Thread(target=self._progress, args=(t0, stop), daemon=True)
        ticker.start()
        try:
            cli_main(
                self.flow,
                workers_per_process=rs.workers_per_process,
                process_id=self.args.process_id,
                addresses=self.args.addresses.split(";") if self.args.addresses else None,
                epoch_interval=timedelta(seconds=rs.snapshot_interval_s),
                recovery_config=recovery,
            )
        except KeyboardInterrupt:
            print("[driftrag] interrupted", file=sys.stderr)
        finally:
            stop.set()
        summary = self.summary(time.monotonic() - t0)
        if self.args.out is not None:
            (self.args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _progress(self, t0: float, stop: threading.Event) -> None:
        every = self.args.progress_every
        while not stop.wait(every):
            s = self.summary(time.monotonic() - t0)
            print(
                f"[driftrag] {s['seconds']:.0f}s: {s['messages']:,} messages "
                f"({s['engagements']:,} engagements, {s['content_events']:,} content, "
                f"{s['dead_letter']:,} dead-letter) {s['messages_per_s'] or 0:,.0f} msg/s",
                file=sys.stderr, flush=True,
            )


def _recovery_config(db_dir: Path, backup_interval_s: float, args: argparse.Namespace) -> RecoveryConfig:
    """Recovery store in ``db_dir``, initialised on first use with one partition per worker in the cluster."""
    db_dir.mkdir(parents=True, exist_ok=True)
    if not any(db_dir.glob("part-*.sqlite3")):
        n_proc = len(args.addresses.split(";")) if args.addresses else 1
        count = n_proc * (args.workers_per_process or 1)
        init_db_dir(db_dir, count)
        log.info("initialised recovery store %s with %d partitions", db_dir, count)
    return RecoveryConfig(str(db_dir), backup_interval=timedelta(seconds=backup_interval_s))


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.items is not None and args.events is None:
        print("driftrag run: --items needs --events", file=sys.stderr)
        return 2
    job = Job(args, settings)
    print(f"[driftrag] running the dataflow ({job.mode}); Ctrl-C stops it", file=sys.stderr, flush=True)
    summary = job.run()
    print(json.dumps(summary), flush=True)
    return 0
