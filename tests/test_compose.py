"""docker-compose.yml cannot run here (no Docker engine), so check it agrees with the code it deploys."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.cli import build_parser
from streams.settings import BrokerSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present():
    assert {"kafka", "topics", "job", "query"} <= set(COMPOSE["services"])


def test_broker_matches_local_broker_version_and_port():
    kafka = COMPOSE["services"]["kafka"]
    image, tag = kafka["image"].split(":")
    assert image == "apache/kafka"
    assert tag == BrokerSettings().version
    host_port = Settings().kafka.bootstrap_servers.rsplit(":", 1)[1]
    assert f"{host_port}:{host_port}" in kafka["ports"]
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, single node, like `driftrag kafka`
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from `driftrag topics create`


def test_driftrag_services_reach_the_internal_listener_and_parse():
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    internal = next(a for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("INTERNAL://"))
    parser = build_parser()
    for name in ("topics", "job", "query"):
        svc = COMPOSE["services"][name]
        env = svc["environment"]
        settings = Settings.model_validate({})  # the env names must be real settings fields:
        assert "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS" in env
        assert internal.removeprefix("INTERNAL://") == env["DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS"]
        assert settings.kafka.bootstrap_servers  # default exists; compose overrides it
        parser.parse_args(svc["command"])  # the command line is one the CLI accepts


def test_job_waits_for_topics_and_keeps_recovery_state():
    job = COMPOSE["services"]["job"]
    assert job["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    cmd = job["command"]
    recovery = cmd[cmd.index("--recovery-dir") + 1]
    assert any(recovery.startswith(v.split(":")[1]) for v in job["volumes"])


def test_env_override_reaches_settings(monkeypatch):
    monkeypatch.setenv("DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS", "kafka:19092")
    assert Settings().kafka.bootstrap_servers == "kafka:19092"


def test_codebooks_and_stored_embeddings_live_on_the_job_volume(monkeypatch):
    job = COMPOSE["services"]["job"]
    codebooks = job["environment"]["DRIFTRAG_CLUSTERS__CODEBOOK_DIR"]
    embeddings = job["environment"]["DRIFTRAG_EMBEDDING__STORE_DIR"]
    for path in (codebooks, embeddings):
        assert any(path.startswith(v.split(":")[1]) for v in job["volumes"])
    monkeypatch.setenv("DRIFTRAG_CLUSTERS__CODEBOOK_DIR", codebooks)
    monkeypatch.setenv("DRIFTRAG_EMBEDDING__STORE_DIR", embeddings)
    s = Settings()
    assert str(s.clusters.codebook_dir) == codebooks and str(s.embedding.store_dir) == embeddings


def test_query_service_port_snapshots_and_health():
    q = COMPOSE["services"]["query"]
    args = build_parser().parse_args(q["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert f"{args.port}:{args.port}" in q["ports"]
    assert args.port == Settings().index.port  # the documented default
    assert any(str(args.snapshot_dir).startswith(v.split(":")[1]) for v in q["volumes"])
    assert f"127.0.0.1:{args.port}/readyz" in " ".join(q["healthcheck"]["test"])
    assert q["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_changelog_topic_is_compacted():
    spec = Settings().kafka.topics["index_mutations"]
    assert spec.cleanup_policy == "compact" and spec.retention_ms == -1
