"""`driftrag run`: build the dataflow for Kafka, files or the embedded generator, and run it.

Bytewax's worker/process/recovery options pass straight through to ``bytewax.run.cli_main``. The job's HTTP
endpoints (/metrics, /healthz, /readyz) are ``streams/observability.py``; its summary and progress lines
``streams/report.py``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import operator
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Producer

from operators.content import EmbeddedItem
from operators.embedding import make_embedder
from streams.cluster_setup import ClusterSetup
from streams.content_stage import ClusteredEngagement
from streams.contract import ContentEvent, DeadLetter, Engagement, Validator, dead_letter_key
from streams.dataflow import build_flow
from streams.errors import ERRORS, ErrorBudgetExceeded
from streams.metrics import CONSUMER_LAGS, EVENT_TIME, EVENTS_VALID, MUTATIONS_PRODUCED
from streams.observability import JobEndpoints, JobStatus
from streams.report import JobReport, say
from streams.settings import Settings
from streams.sinks import (
    AlertSink,
    CallbackSink,
    CountingSink,
    ExactlyOnceSink,
    JsonlSink,
    KafkaMutationSink,
    KafkaProducerSink,
    KeyedValue,
    LiveIndexSink,
    Tallies,
)
from streams.sources import EventTimeFileSource, GeneratorSource, JsonlFileSource, KafkaRawSource, SourceGone
from streams.transitions_stage import PairState

log = logging.getLogger(__name__)


# Pipeline bookkeeping, not the event: left out of the events files (so a replay and a Kafka run write the same).
_NOT_IN_JSON = frozenset({"ingest_ms", "partition"})


def event_to_json(e: Engagement | ContentEvent) -> bytes:
    """One validated event as a JSON line, with its type."""
    kind = "engagement" if type(e) is Engagement else "content"
    return orjson.dumps({"type": kind, **{f: getattr(e, f) for f in e.__slots__ if f not in _NOT_IN_JSON}})


def clustered_to_json(ce: ClusteredEngagement) -> bytes:
    e = ce.engagement
    fields = {f: getattr(e, f) for f in e.__slots__ if f not in _NOT_IN_JSON}
    return orjson.dumps({"type": "engagement", **fields, "cluster": ce.cluster})


def item_to_json(i: EmbeddedItem) -> bytes:
    return orjson.dumps({"item_id": i.item_id, "ts_ms": i.ts_ms, "cluster": i.cluster,
                         "distance": round(i.distance, 5), "novel": i.novel})


_cluster_of = operator.attrgetter("cluster")


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
    clu = p.add_argument_group("embedding and interest clusters")
    clu.add_argument("--no-clusters", action="store_true", help="validate only: no embedding, no clusters")
    clu.add_argument("--backend", help="embedding backend: auto, onnx, onnx-int8, torch (default: settings)")
    clu.add_argument("--model", help="sentence-transformers model name or path (default: all-MiniLM-L6-v2)")
    clu.add_argument("--codebook-dir", type=Path, help="codebook store (default: settings.clusters.codebook_dir)")
    clu.add_argument("--warm-cache", type=Path, action="append", metavar="FILE.jsonl",
                     help="embed the content texts of this JSONL file (content events or engagements with text) "
                     "before the stream starts: a restart onto a known catalogue does not wait on the model "
                     "(repeatable)")
    dr = p.add_argument_group("drift alerts")
    dr.add_argument("--no-drift", action="store_true", help="no drift detection")
    dr.add_argument("--webhook", metavar="URL", help="also POST each alert here (default: settings.drift.webhook_url)")
    api = p.add_argument_group("live index and query API (embedded and file modes; with Kafka: `driftrag serve`)")
    api.add_argument("--port", type=int, help="query API port (default: settings.index.port; 0: any free port)")
    api.add_argument("--host", help="query API host (default: settings.index.host)")
    api.add_argument("--no-api", action="store_true", help="keep the live index in process but serve no HTTP API")
    api.add_argument("--keep-serving", action="store_true",
                     help="after the input ends, keep serving the API until Ctrl-C")
    obs = p.add_argument_group("job endpoints (/metrics, /healthz, /readyz; every mode)")
    obs.add_argument("--metrics-port", type=int,
                     help="port of the job's endpoints (default: settings.run.metrics_port, 9108; 0: any free port; "
                     "-1: none; a multi-process job adds its process id)")
    obs.add_argument("--metrics-host", help="address of the job's endpoints (default: settings.run.metrics_host)")
    obs.add_argument("--no-metrics", action="store_true", help="serve no job endpoints (as --metrics-port -1)")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")


def _apply_overrides(args: argparse.Namespace, settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(update={k: v for k, v in {
        "bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.topic_prefix}.items() if v is not None})
    run = settings.run.model_copy(update={k: v for k, v in {
        "workers_per_process": args.workers_per_process, "recovery_dir": args.recovery_dir,
        "snapshot_interval_s": args.snapshot_interval, "backup_interval_s": args.backup_interval,
        "metrics_port": -1 if getattr(args, "no_metrics", False) else getattr(args, "metrics_port", None),
        "metrics_host": getattr(args, "metrics_host", None)}.items()
        if v is not None})
    embedding = settings.embedding.model_validate({**settings.embedding.model_dump(), **{
        k: v for k, v in {"backend": args.backend, "model": args.model}.items() if v is not None}})
    clusters = settings.clusters.model_copy(update={k: v for k, v in {
        "codebook_dir": args.codebook_dir}.items() if v is not None})
    index = settings.index.model_copy(update={k: v for k, v in {
        "port": getattr(args, "port", None), "host": getattr(args, "host", None)}.items() if v is not None})
    return settings.model_copy(update={"kafka": kafka, "run": run, "embedding": embedding, "clusters": clusters,
                                       "index": index})


class Job:
    """One configured run: the source, the sinks, counters for progress, and the Bytewax flow."""

    def __init__(self, args: argparse.Namespace, settings: Settings, *, status: JobStatus | None = None,
                 endpoints: JobEndpoints | None = None) -> None:
        """``status`` and ``endpoints``: the job's endpoints, where the caller started them before building the
        job (``run`` does, so /healthz answers while the model and codebook load); otherwise :meth:`run` starts
        them."""
        self.settings = settings = _apply_overrides(args, settings)
        self.args = args
        # `driftrag replay`: files merged in event-time order, every text embedded before the stream starts
        # (so no engagement waits on a model call), one worker: the result depends on the events alone.
        self.replay = bool(getattr(args, "replay", False))
        self.status = status if status is not None else JobStatus(job_mode(args))
        self.endpoints = endpoints
        self.counts = Tallies()  # one part per output: under recovery each is snapshotted with its output
        k = settings.kafka
        self.validator = Validator.from_settings(settings)
        batch = settings.run.batch_size
        if args.embedded:
            from streams.generator import GeneratorConfig

            gen = self.generator_config = GeneratorConfig(seed=args.seed, events=args.max_events,
                                                          bad_fraction=args.bad_fraction)
            self.mode = "embedded"
            self.source = GeneratorSource(
                gen, {"engagements": k.topic("engagements"), "items": k.topic("items")},
                batch_size=batch, rate=args.rate, max_seconds=args.duration)
        elif args.events is not None:
            self.mode = "files"
            files = {k.topic("items"): args.items} if args.items is not None else {}
            files[k.topic("engagements")] = args.events  # after content: ties in event time go to content
            if self.replay:
                self.source = EventTimeFileSource(files, batch_size=batch,
                                                  max_future_ms=self.settings.contract.max_future_ms)
            else:
                # The catalogue before the engagements, also where several workers read the files in parallel.
                self.source = JsonlFileSource(files, batch_size=batch,
                                              first=k.topic("items") if args.items is not None else None)
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
        ERRORS.configure(settings.run.max_processing_errors, self._processing_error_writer(out))
        self.report = JobReport(self)  # summary and progress (streams/report.py)
        self.pairs: dict[tuple[int, int], PairState] = {}
        self._pairs_lock = threading.Lock()
        # the model, the embedding store, the texts embedded up front and the codebook (streams/cluster_setup.py)
        self.clusters = ClusterSetup(settings, args, self.mode, self.validator,
                                     getattr(self, "generator_config", None))
        self.clustering = None if args.no_clusters else self.clusters.config()
        self.live = None
        self.server = None
        mutations_sink = None
        if self.clustering is not None:
            mutations_sink = self._mutations_sink()
        self.webhook = None
        self.alerts: list[Any] = []
        self.finetunes: list[int] = []
        drift_monitor, alerts_sink = self._drift(out)
        cadence, cadence_sink = self._cadence(out) if drift_monitor is not None else (None, None)
        encode = event_to_json if self.clustering is None else clustered_to_json
        self._events_file = JsonlSink(out / "events.jsonl", encode=encode) if out is not None else None
        items_file = JsonlSink(out / "items.jsonl", encode=item_to_json) if out is not None else None
        file_mode = self.mode != "kafka" and out is not None
        exact = self._exactly_once
        self.flow = build_flow(
            self.source, self.validator,
            dead_letter_sink=exact("dead_letter", CountingSink(self.dead_letter_sink, self._count_dead_letters),
                                   [out / "dead_letter.jsonl"] if file_mode else []),
            valid_sink=exact("valid", CountingSink(None, self._count_events)),
            events_sink=exact("events", CountingSink(self._events_file, self._count_clustered),
                              [out / "events.jsonl"] if out is not None else []),
            clustering=self.clustering,
            items_sink=exact("items", CountingSink(items_file, self._count_items),
                             [out / "items.jsonl"] if out is not None else []),
            pairs_sink=exact("pairs", CallbackSink(self._keep_pairs), keep=[_PairTable(self)]),
            mutations_sink=mutations_sink,
            drift_monitor=drift_monitor,
            alerts_sink=exact("alerts", alerts_sink, [out / "alerts.jsonl"] if file_mode else [])
            if alerts_sink is not None else None,
            cadence=cadence,
            cadence_sink=exact("cadence", cadence_sink, [out / "cadence.jsonl"] if file_mode else [],
                               keep=[_ListKept(self.finetunes)]) if cadence_sink is not None else None,
            engagement_partitions=self._engagement_partitions(),
            drift_shards=settings.drift.shards,
            half_lives_ms=settings.transitions.half_lives(),
            trend_window_ms=settings.transitions.trend_window_ms,
        )

    @property
    def codebook(self) -> Any:
        """The codebook this run clusters with (None with ``--no-clusters``)."""
        return self.clusters.codebook

    @property
    def warm_cache(self) -> dict[str, int] | None:
        """Texts embedded up front (replay, ``--warm-cache``): texts, from the store, embedded; else None."""
        return self.clusters.warm_cache

    def _exactly_once(self, name: str, sink: Any, files: list[Path] = (), keep: list[Any] = ()) -> Any:
        """Under recovery (``-r``), ``sink`` as an :class:`ExactlyOnceSink` that snapshots ``files``' lengths and
        this output's tally (and ``keep``) with Bytewax's state, so a restart neither writes nor counts an item
        twice; otherwise ``sink`` as it is."""
        if self.settings.run.recovery_dir is None:
            return sink
        return ExactlyOnceSink(name, sink, files, [self.counts.part(name), *keep])

    # -- drift -----------------------------------------------------------------------------------------------

    def _drift(self, out: Path | None):  # noqa: ANN202
        """(monitor factory, alerts sink), or (None, None) without clusters or with drift detection off."""
        ds = self.settings.drift
        if self.clustering is None or not ds.enabled or self.args.no_drift:
            return None, None
        from operators.drift import DriftMonitor

        url = self.args.webhook or ds.webhook_url
        if url:
            from streams.webhook import WebhookNotifier

            self.webhook = WebhookNotifier(url, timeout_s=ds.webhook_timeout_s, max_attempts=ds.webhook_max_attempts,
                                           secret=ds.signing_secret())
        k = self.settings.kafka
        if self.mode == "kafka":
            sink = AlertSink(kafka_config=k.client(), topic=k.topic("drift_alerts"), webhook=self.webhook,
                             on_alerts=self._on_alerts)
        else:
            sink = AlertSink(path=out / "alerts.jsonl" if out is not None else None, webhook=self.webhook,
                             on_alerts=self._on_alerts)
        config = ds.config()  # invalid overrides fail here, before the dataflow starts
        return (lambda: DriftMonitor(config)), sink

    def _cadence(self, out: Path | None):  # noqa: ANN202
        """(controller factory, sink) of the hybrid update cadence, or (None, None) when it is off."""
        cs = self.settings.cadence
        if not cs.enabled:
            return None, None
        from operators.cadence import CadenceController

        config = cs.config(self.settings.transitions.half_lives())  # bad settings fail here, before the flow
        k = self.settings.kafka
        if self.mode == "kafka":
            sink = AlertSink(kafka_config=k.client(), topic=k.topic("cadence"), on_alerts=self._on_cadence)
        else:
            sink = AlertSink(path=out / "cadence.jsonl" if out is not None else None, on_alerts=self._on_cadence)
        return (lambda: CadenceController(config)), sink

    def _on_cadence(self, events: list[Any]) -> None:
        for ev in events:
            self.counts.add(f"cadence:{ev.kind}", part="cadence")
            if ev.kind == "fine_tune":
                self.finetunes.append(ev.ts_ms)
                say(f"FINE-TUNE due at event time {ev.ts_ms}: {ev.reason}")
            else:
                self.counts.add("cadence_pairs_refreshed", len(ev.pairs), part="cadence")
                log.info("RAG refresh at %d: %s", ev.ts_ms, ev.reason)

    def _on_alerts(self, alerts: list[Any]) -> None:
        label = self.codebook.label
        for a in alerts:
            self.alerts.append(a)
            self.counts.add(f"alert:{a.kind}:{a.severity}", part="alerts")
            say(f"ALERT {a.severity} {a.kind} drift in cluster {a.cluster} \"{label(a.cluster)}\": score "
                f"{a.score:.3g} (threshold {a.threshold:.3g}), event time {a.window_end_ms}")

    # -- live index ----------------------------------------------------------------------------------------

    def _mutations_sink(self):  # noqa: ANN202
        """Kafka: the compacted changelog that `driftrag serve` replicas follow. Otherwise: an in-process index."""
        from index.mutations import codebook_fields, codebook_mutation

        cb_mutation = codebook_mutation(**codebook_fields(self.codebook))
        if self.mode == "kafka":
            k = self.settings.kafka
            sink = KafkaMutationSink(k.client(), k.topic("index_mutations"))
            part = sink.build("publish_codebook", 0, 1)
            part.write_batch([cb_mutation])  # replicas need the clusters before the first pair; idempotent
            part.close()
            MUTATIONS_PRODUCED.labels("codebook").inc()
            return CountingSink(sink, _count_mutations)
        from index.live import LiveIndex
        from index.service import LazyEncoder

        ix, es = self.settings.index, self.settings.embedding
        encoder = LazyEncoder(lambda: make_embedder(es.backend, es.model, batch_size=es.batch_size))
        self.live = LiveIndex(backend=ix.backend, approx_threshold=ix.approx_threshold, min_support=ix.min_support,
                              encoder=encoder if ix.text_search else None)
        self.live.apply([cb_mutation])
        MUTATIONS_PRODUCED.labels("codebook").inc()
        return CountingSink(LiveIndexSink(self.live), _count_mutations)

    def _start_api(self) -> None:
        from index.http import create_app, serve_in_thread

        ix = self.settings.index
        app = create_app(self.live, settings=ix)  # tokens and limits; an exposed host without tokens: ValueError
        try:
            self.server = serve_in_thread(app, host=ix.host, port=ix.port)
        except OSError as e:
            if self.args.port is not None:
                raise OSError(f"cannot serve the query API on {ix.host}:{ix.port}: {e}") from None
            say(f"port {ix.port} is busy ({e}); serving the query API on a free port instead")
            self.server = serve_in_thread(app, host=ix.host, port=0)
        say(f"query API at {self.server.url}  (POST /v1/context, POST /v1/search, GET /v1/clusters/{{id}}, "
            "/healthz, /readyz, /metrics)")

    def _show_context(self, final: bool = False) -> None:
        """Ask the live API what it would tell an LLM about the busiest pair: the whole path, end to end."""
        busiest = self.report.busiest_pairs(1)
        if self.live is None or not busiest:
            return
        pair = list(busiest[0].pair)
        try:
            if self.server is not None:
                from index.client import DriftragClient

                with DriftragClient(self.server.url, token=self.server.token) as client:
                    ctx = client.context(clusters=pair, k=3)
            else:
                ctx = self.live.context(clusters=pair, k=3)
        except Exception as e:  # noqa: BLE001 - a progress line must never stop the job
            say(f"context query failed: {e}")
            return
        f = ctx["freshness"]
        lag = "n/a" if f["lag_ms"] is None else f"{f['lag_ms'] / 1000:.2f} s"
        if final:
            say("context for the busiest pair, as an LLM would get it:\n" + ctx["prompt"])
            return
        succ = ", ".join(f'{s["cluster"]} "{s["label"]}" {s["score"]:.0%}' for s in ctx["successors"])
        say(f"context {ctx['pair']} ({ctx['source']}) -> {succ}; freshness: version {f['index_version']}, "
            f"watermark {f['watermark_ts']}, lag {lag}")

    def _keep_pairs(self, states: list[PairState]) -> None:
        """Each PairState is its pair's full state: keeping the latest per pair is the whole table."""
        with self._pairs_lock:
            for st in states:
                self.pairs[st.pair] = st
            self.counts.add("triples", sum(st.observed for st in states), part="pairs")

    def _engagement_partitions(self) -> int:
        """Partitions of the engagements source: the drift step's event-time hold waits for each of them."""
        if self.mode != "kafka":
            return 1  # files, replay and the embedded generator: one ordered stream of engagements
        topic = self.settings.kafka.topic("engagements")
        return max(1, sum(1 for part in self.source.list_parts() if part.split("-", 1)[1] == topic))

    def _count_events(self, items: list[Engagement | ContentEvent]) -> None:
        if items:
            EVENT_TIME.observe(max(e.ts_ms for e in items))  # the event-time watermark (streams/metrics.py)
        n_eng = sum(1 for e in items if type(e) is Engagement)
        if n_eng:
            self.counts.add("engagements", n_eng, part="valid")
            EVENTS_VALID.labels("engagement").inc(n_eng)
        if n_eng < len(items):
            self.counts.add("items", len(items) - n_eng, part="valid")
            EVENTS_VALID.labels("content").inc(len(items) - n_eng)

    def _count_clustered(self, items: list) -> None:
        if self.clustering is None:
            return
        self.counts.add("clustered_engagements", len(items), part="events")
        for cluster, n in collections.Counter(map(_cluster_of, items)).items():  # per batch, counted in C
            self.counts.add(f"cluster_engagements:{cluster}", n, part="events")

    def _count_items(self, items: list[EmbeddedItem]) -> None:
        self.counts.add("items_assigned", len(items), part="items")
        novel = sum(1 for i in items if i.novel)
        if novel:
            self.counts.add("novel_items", novel, part="items")
        for i in items:
            self.counts.add(f"cluster_items:{i.cluster}", part="items")

    def _count_dead_letters(self, items: list[KeyedValue]) -> None:
        for kv in items:
            self.counts.add("dead_letter:" + orjson.loads(kv.value)["reason"], part="dead_letter")

    def _processing_error_writer(self, out: Path | None) -> Any:
        """Where processing_error dead letters go as they happen: the dead-letter topic or file (see streams.errors)."""
        if self.mode == "kafka":
            k = self.settings.kafka
            producer, topic = Producer(k.client()), k.topic("dead_letter")

            def to_kafka(dl: DeadLetter) -> None:
                producer.produce(topic, key=dead_letter_key(dl.key), value=dl.to_json())
                producer.flush(30)
            return to_kafka
        if out is None:
            return None
        lock, path = threading.Lock(), out / "dead_letter.jsonl"

        def to_file(dl: DeadLetter) -> None:
            with lock, path.open("ab") as f:
                f.write(dl.to_json() + b"\n")
        return to_file

    def summary(self, seconds: float) -> dict[str, Any]:
        """The run's summary so far (streams/report.py)."""
        return self.report.summary(seconds)

    def run(self) -> dict[str, Any]:
        """Run the dataflow to its end (or Ctrl-C); returns the summary. Starts the job's endpoints unless the
        caller did, and stops those it started."""
        own = self.endpoints is None
        if own:
            self.endpoints = start_endpoints(self.args, self.settings, self.status)
            if self.endpoints is not None:
                say(f"job endpoints at {self.endpoints.url} (/metrics, /healthz, /readyz)")
        try:
            return self._run()
        finally:
            if own and self.endpoints is not None:
                self.endpoints.stop()

    def _run(self) -> dict[str, Any]:
        rs = self.settings.run
        recovery = None
        if rs.recovery_dir is not None:
            recovery = _recovery_config(rs.recovery_dir, rs.backup_interval_s, self.args)
        if self.live is not None and not self.args.no_api:
            self._start_api()
        gc_before = gc.get_threshold()
        if rs.gc_threshold:
            gc.collect()
            gc.freeze()  # start-up objects (model, codebook, index) leave the collector's scans for good
            gc.set_threshold(rs.gc_threshold, *gc_before[1:])
        t0 = time.monotonic()
        stop = threading.Event()
        ticker = threading.Thread(target=self.report.progress, args=(t0, stop), daemon=True)
        ticker.start()
        CONSUMER_LAGS.reset()  # this run's partitions register as they are built
        EVENT_TIME.reset()
        try:
            self.status.running()
            cli_main(
                self.flow,
                workers_per_process=rs.workers_per_process,
                process_id=self.args.process_id,
                addresses=self.args.addresses.split(";") if self.args.addresses else None,
                epoch_interval=timedelta(seconds=epoch_seconds(rs.snapshot_interval_s, recovery is not None)),
                recovery_config=recovery,
            )
        except KeyboardInterrupt:
            print("[driftrag] interrupted", file=sys.stderr)
        except BytewaxRuntimeError as e:
            reason = _cause(e, (ErrorBudgetExceeded, SourceGone))
            if reason is not None:  # raised in a step or source, wrapped by Bytewax: the clean error, not the wrap
                raise reason from None
            if not interrupted(e):
                raise
            print("[driftrag] interrupted", file=sys.stderr)
        except BaseException as e:
            reason = _cause(e, (ErrorBudgetExceeded, SourceGone))
            if reason is not None:  # raised in a step or source, wrapped by Bytewax: the clean error, not the wrap
                raise reason from None
            # A multi-process cluster whose peer stopped or died: Bytewax's Rust side panics in its network
            # threads (pyo3's PanicException, a BaseException). Say what happened instead of a Rust traceback.
            if type(e).__name__ != "PanicException" or not self.args.addresses:
                raise
            raise PeerLost(
                f"the Bytewax cluster lost a peer process ({e}): a multi-process job stops when any process stops; "
                "restart every process (with --recovery-dir they resume from the last snapshot)") from e
        finally:
            stop.set()
            gc.set_threshold(*gc_before)
            gc.unfreeze()
            failure = sys.exc_info()[1]  # the exception leaving this block, if any
            if failure is None:
                self.status.stopped("the dataflow ended (input done or interrupted)")
            else:
                self.status.failed(f"{type(failure).__name__}: {failure}")
        summary = self.summary(time.monotonic() - t0)
        self._show_context(final=True)
        if self.server is not None:
            if self.args.keep_serving:
                say(f"input done; still serving {self.server.url} (Ctrl-C stops)")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            self.server.stop()
        if self.webhook is not None:
            self.webhook.close()
        if self.args.out is not None:
            self.report.write(self.args.out, summary)
        return summary

def job_mode(args: argparse.Namespace) -> str:
    """The mode ``args`` run in: ``embedded``, ``replay``, ``files`` or ``kafka``."""
    if args.embedded:
        return "embedded"
    if args.events is not None:
        return "replay" if getattr(args, "replay", False) else "files"
    return "kafka"


def start_endpoints(args: argparse.Namespace, settings: Settings, status: JobStatus) -> JobEndpoints | None:
    """The job's endpoints (streams/observability.py) as its settings and flags say; None where turned off. A port
    given with ``--metrics-port`` must be free; the configured one falls back to a free port when busy."""
    rs = settings.run
    return JobEndpoints.start(status, host=rs.metrics_host, metrics_port=rs.metrics_port,
                              process_id=args.process_id, max_lag=rs.ready_max_lag,
                              strict=getattr(args, "metrics_port", None) is not None)


def _count_mutations(mutations: list[Any]) -> None:
    """``driftrag_index_mutations_produced_total{kind}``: one increment per kind and batch."""
    kinds = collections.Counter(m.key.partition(":")[0] for m in mutations)
    for kind, n in kinds.items():
        MUTATIONS_PRODUCED.labels(kind).inc(n)


# Epoch length of a job without a recovery store: its epochs only pace snapshots nobody keeps.
UNRECOVERED_EPOCH_S = 3600.0


def epoch_seconds(snapshot_interval_s: float, recovery: bool) -> float:
    """Bytewax's epoch length. Bytewax asks every stateful step for a snapshot at each epoch's end whether or not
    a recovery store keeps it; the drift monitor's is a deep copy of every cluster's and pair's windows (2.6 s at
    256 clusters, a third of that run), so a job without a store runs hour-long epochs: nothing else it does
    depends on them (outputs leave per batch).

    >>> epoch_seconds(10.0, True), epoch_seconds(10.0, False), epoch_seconds(7200.0, False)
    (10.0, 3600.0, 7200.0)
    """
    return snapshot_interval_s if recovery else max(snapshot_interval_s, UNRECOVERED_EPOCH_S)


def _recovery_config(db_dir: Path, backup_interval_s: float, args: argparse.Namespace) -> RecoveryConfig:
    """Recovery store in ``db_dir``, initialised on first use with one partition per worker in the cluster."""
    db_dir.mkdir(parents=True, exist_ok=True)
    if not any(db_dir.glob("part-*.sqlite3")):
        n_proc = len(args.addresses.split(";")) if args.addresses else 1
        count = n_proc * (args.workers_per_process or 1)
        init_db_dir(db_dir, count)
        log.info("initialised recovery store %s with %d partitions", db_dir, count)
    return RecoveryConfig(str(db_dir), backup_interval=timedelta(seconds=backup_interval_s))


class _PairTable:
    """The job's pair table (latest state per pair) as an object an :class:`ExactlyOnceSink` keeps."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def snapshot(self) -> dict:
        with self.job._pairs_lock:
            return dict(self.job.pairs)

    def restore(self, pairs: dict) -> None:
        with self.job._pairs_lock:
            self.job.pairs.clear()
            self.job.pairs.update(pairs)


class _ListKept:
    """A list an :class:`ExactlyOnceSink` keeps (the fine-tune times)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def snapshot(self) -> list:
        return list(self.items)

    def restore(self, items: list) -> None:
        self.items[:] = items


def interrupted(e: BaseException) -> bool:
    """Whether a Bytewax error is Ctrl-C or SIGTERM: Bytewax reports a signal between steps as "signal
    received"; one that lands while Python code of a step or source runs is that code's KeyboardInterrupt,
    wrapped ("error calling `StatefulSourcePartition.next_batch` ..."). Either is a clean stop."""
    return "signal received" in str(e) or _cause(e, KeyboardInterrupt) is not None


def _cause(e: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
           ) -> BaseException | None:
    """``e`` or the first exception of ``kind`` among its causes and contexts."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class PeerLost(RuntimeError):
    """Another process of this multi-process job stopped or died (exit status 3)."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.items is not None and args.events is None:
        print("driftrag run: --items needs --events", file=sys.stderr)
        return 2
    # The endpoints first: /healthz answers while the model loads and the codebook bootstraps.
    status = JobStatus(job_mode(args))
    try:
        endpoints = start_endpoints(args, _apply_overrides(args, settings), status)
    except OSError as e:
        print(f"driftrag run: error: {e}", file=sys.stderr)
        return 2
    try:
        job = Job(args, settings, status=status, endpoints=endpoints)
        where = f"; endpoints {endpoints.url} (/metrics, /healthz, /readyz)" if endpoints is not None else ""
        print(f"[driftrag] running the dataflow ({job.mode}){where}; Ctrl-C stops it", file=sys.stderr, flush=True)
        summary = job.run()
    except JOB_STOPS as e:
        return stopped("driftrag run", e)
    except BaseException as e:
        status.failed(f"{type(e).__name__}: {e}")
        raise
    finally:
        if endpoints is not None:
            endpoints.stop()
    print(json.dumps(summary), flush=True)
    return 0


JOB_STOPS = (PeerLost, ErrorBudgetExceeded, SourceGone)


def stopped(prog: str, e: BaseException) -> int:
    """One line for a job that stopped on purpose, and its exit status: 3 a lost peer, 4 the error budget, 5 a
    source topic deleted under the job."""
    if isinstance(e, ErrorBudgetExceeded):
        print(f"{prog}: stopped: {e} (DRIFTRAG_RUN__MAX_PROCESSING_ERRORS; the failed records are in the dead "
              "letters, reason processing_error)", file=sys.stderr, flush=True)
        return 4
    print(f"{prog}: stopped: {e}", file=sys.stderr, flush=True)
    return 5 if isinstance(e, SourceGone) else 3
