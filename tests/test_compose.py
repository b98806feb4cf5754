"""docker-compose.yml cannot run here (no Docker engine), so check it agrees with the code it deploys: the
services, ports, volumes and settings, the image (Dockerfile), Prometheus' targets and Grafana's provisioning,
and that every metric the dashboard and the alert rules use is one the code exports."""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from streams.cli import build_parser
from streams.settings import BrokerSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GPU_OVERRIDE = ROOT / "deploy" / "docker-compose.gpu.yml"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
ALERTS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "driftrag.json").read_text())
DRIFTRAG_SERVICES = ("topics", "job", "query")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with an empty environment (what a fresh checkout gets)."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", str(value))


def env(service: str) -> dict[str, str]:
    return {k: interpolate(v) for k, v in (COMPOSE["services"][service].get("environment") or {}).items()}


def volume_mounts(service: str) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's volumes."""
    out = {}
    for v in COMPOSE["services"][service].get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def on_named_volume(service: str, path: str | Path) -> bool:
    path = Path(path)
    return any(path == Path(t) or Path(t) in path.parents
               for t, src in volume_mounts(service).items() if src in COMPOSE["volumes"])


def published(service: str) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's published ports."""
    out = []
    for p in COMPOSE["services"][service].get("ports", []):
        parts = str(p).split(":")
        assert len(parts) == 3, f"{service}: {p!r} publishes on every interface; bind it to 127.0.0.1"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def settings_field_exists(var: str) -> bool:
    """Whether DRIFTRAG_A__B names a field path of streams.settings.Settings (dict-valued fields end the path)."""
    model: type[BaseModel] = Settings
    for part in var.removeprefix("DRIFTRAG_").lower().split("__"):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return True
    return True


# --------------------------------------------------------------------------------------------- services, broker


def test_services_present():
    assert {"kafka", "topics", "job", "query", "prometheus", "grafana"} <= set(COMPOSE["services"])
    for name, svc in COMPOSE["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            assert src.startswith("./") or src in COMPOSE["volumes"], f"{name}: volume {src} is not declared"
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: bind mount {src} does not exist in the repository"


def test_every_published_port_is_loopback_only():
    for name in COMPOSE["services"]:
        for ip, _, _ in published(name):
            assert ip == "127.0.0.1", f"{name} publishes on {ip}"


def test_broker_matches_local_broker_version_and_port():
    kafka = COMPOSE["services"]["kafka"]
    image, tag = kafka["image"].split(":")
    assert image == "apache/kafka"
    assert tag == BrokerSettings().version
    host_port = int(Settings().kafka.bootstrap_servers.rsplit(":", 1)[1])
    assert ("127.0.0.1", host_port, host_port) in published("kafka")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, single node, like `driftrag kafka`
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from `driftrag topics create`


def test_broker_log_dirs_are_the_mounted_volume():
    # The apache/kafka image writes its logs to /tmp/kraft-combined-logs unless told otherwise: the volume must be
    # where the broker writes, or a recreated container loses the compacted changelog.
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    log_dirs = kafka_env["KAFKA_LOG_DIRS"].split(",")
    assert "/tmp/kraft-combined-logs" not in log_dirs
    for d in log_dirs:
        assert on_named_volume("kafka", d), f"log dir {d} is not on a named volume"
    # A fixed cluster id: the formatted volume matches the config of every recreated container.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka_env["CLUSTER_ID"])


def test_driftrag_services_reach_the_internal_listener_and_parse():
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    internal = next(a for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("INTERNAL://"))
    parser = build_parser()
    for name in DRIFTRAG_SERVICES:
        svc = COMPOSE["services"][name]
        assert svc["image"].startswith("driftrag:")
        assert internal.removeprefix("INTERNAL://") == env(name)["DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS"]
        parser.parse_args(svc["command"])  # the command line is one the CLI accepts


def test_environment_names_are_settings_fields_and_validate(monkeypatch):
    for name in DRIFTRAG_SERVICES:
        values = env(name)
        for var in values:
            if var == "DRIFTRAG_CACHE_DIR":  # read by operators.embedding, not a settings field
                continue
            assert settings_field_exists(var), f"{name}: {var} is not a field of streams.settings.Settings"
        with monkeypatch.context() as m:
            for var, value in values.items():
                m.setenv(var, value)
            Settings()  # every value as compose sets it (unset variables interpolated empty) validates


def test_env_override_reaches_settings(monkeypatch):
    monkeypatch.setenv("DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS", "kafka:19092")
    assert Settings().kafka.bootstrap_servers == "kafka:19092"


def test_changelog_topic_is_compacted():
    spec = Settings().kafka.topics["index_mutations"]
    assert spec.cleanup_policy == "compact" and spec.retention_ms == -1


# ------------------------------------------------------------------------------------------------ job and query


def test_job_waits_for_topics_and_keeps_recovery_state():
    job = COMPOSE["services"]["job"]
    assert job["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    cmd = job["command"]
    assert on_named_volume("job", cmd[cmd.index("--recovery-dir") + 1])


def test_codebooks_and_stored_embeddings_live_on_the_job_volume(monkeypatch):
    e = env("job")
    codebooks, embeddings = e["DRIFTRAG_CLUSTERS__CODEBOOK_DIR"], e["DRIFTRAG_EMBEDDING__STORE_DIR"]
    assert on_named_volume("job", codebooks) and on_named_volume("job", embeddings)
    monkeypatch.setenv("DRIFTRAG_CLUSTERS__CODEBOOK_DIR", codebooks)
    monkeypatch.setenv("DRIFTRAG_EMBEDDING__STORE_DIR", embeddings)
    s = Settings()
    assert str(s.clusters.codebook_dir) == codebooks and str(s.embedding.store_dir) == embeddings


def test_onnx_export_cache_is_a_shared_volume(monkeypatch):
    from operators.embedding import default_cache_dir

    for name in ("job", "query"):
        monkeypatch.setenv("DRIFTRAG_CACHE_DIR", env(name)["DRIFTRAG_CACHE_DIR"])
        assert on_named_volume(name, default_cache_dir()), f"{name}: the ONNX export cache is not on a volume"
    # one volume for both: the model is exported once, not once per service or container
    job_src = {src for t, src in volume_mounts("job").items() if Path(t) in default_cache_dir().parents}
    query_src = {src for t, src in volume_mounts("query").items() if Path(t) in default_cache_dir().parents}
    assert job_src == query_src and len(job_src) == 1
    # and the image defaults to the same place, so a plain `docker run -v ...:/cache` works too
    assert "DRIFTRAG_CACHE_DIR=" + env("job")["DRIFTRAG_CACHE_DIR"] in DOCKERFILE.replace(" ", "")


def test_job_metrics_endpoint_and_health():
    e = env("job")
    default_port = Settings().run.metrics_port
    assert int(e["DRIFTRAG_RUN__METRICS_PORT"]) == default_port == 9108
    assert e["DRIFTRAG_RUN__METRICS_HOST"] == "0.0.0.0"  # reachable by Prometheus on the compose network
    job = COMPOSE["services"]["job"]
    assert str(default_port) in [str(p) for p in job.get("expose", [])]
    assert not job.get("ports"), "the job's endpoint is for Prometheus; it needs no host port"
    assert f"127.0.0.1:{default_port}/healthz" in " ".join(job["healthcheck"]["test"])


def test_query_service_port_snapshots_health_and_tokens(monkeypatch):
    q = COMPOSE["services"]["query"]
    args = build_parser().parse_args(q["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert published("query") == [("127.0.0.1", args.port, args.port)]
    assert args.port == Settings().index.port  # the documented default
    assert on_named_volume("query", args.snapshot_dir)
    assert f"127.0.0.1:{args.port}/readyz" in " ".join(q["healthcheck"]["test"])
    assert q["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    # Tokens come from the operator's environment / .env; without them the API is anonymous, on purpose.
    from index.access import TokenTable, check_exposure, load_tokens

    raw = q["environment"]
    assert raw["DRIFTRAG_INDEX__TOKENS"].startswith("${DRIFTRAG_QUERY_TOKENS")
    for var, value in env("query").items():
        monkeypatch.setenv(var, value)
    s = Settings().index
    assert s.allow_anonymous and not s.tokens
    check_exposure(args.host, TokenTable(load_tokens(s.tokens, s.token_file)), s.allow_anonymous)  # it starts
    # the documented format (README): space-separated name:scope:token entries
    monkeypatch.setenv("DRIFTRAG_INDEX__TOKENS", "reader:read:0123456789abcdefXYZ ops:admin:fedcba9876543210xyz")
    tokens = load_tokens(Settings().index.tokens)
    assert [(t.name, t.scope) for t in tokens] == [("reader", "read"), ("ops", "admin")]


def test_services_run_as_non_root():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users, "the Dockerfile sets no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    for name, svc in COMPOSE["services"].items():
        assert str(svc.get("user", "")).split(":")[0] not in ("root", "0"), f"{name} runs as root"
    # The volumes' mount points belong to that user in the image (a new named volume copies their ownership).
    chown = re.search(r"chown -R (\S+) ([^\\\n]+)", DOCKERFILE)
    assert chown and chown.group(1).split(":")[0] == users[-1].split(":")[0]
    owned = chown.group(2).split()
    for name in ("job", "query"):
        for target, src in volume_mounts(name).items():
            assert target in owned, f"{name}: {target} ({src}) is not owned by the image's user"


def test_image_is_cpu_only_by_default_with_a_gpu_variant():
    assert re.search(r"^ARG VARIANT=cpu$", DOCKERFILE, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", DOCKERFILE, re.M)
    assert "pip install --index-url \"$TORCH_INDEX_URL\" torch" in DOCKERFILE
    assert "optional-dependencies\"][\"gpu\"]" in DOCKERFILE  # the GPU builds come from pyproject's gpu extra
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text())["services"]
    assert gpu["topics"]["build"]["args"]["VARIANT"] == "gpu"
    assert gpu["job"]["image"] == gpu["query"]["image"] == gpu["topics"]["image"]
    for name in ("job", "query"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_healthcheck_and_build_context():
    hc = re.search(r"^HEALTHCHECK .* CMD \[(.*)\]$", DOCKERFILE, re.M)
    assert hc and "/usr/local/bin/driftrag-healthcheck" in hc.group(1)
    assert "COPY deploy/docker/healthcheck.py /usr/local/bin/driftrag-healthcheck" in DOCKERFILE
    assert re.search(r"DRIFTRAG_RUN__METRICS_PORT=9108", DOCKERFILE)
    # every COPY source survives .dockerignore (an allowlist)
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for p in patterns:
            neg = p.startswith("!")
            pat = p.lstrip("!")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/"):
                keep = neg
        return keep

    sources = [s for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", DOCKERFILE, re.M) for s in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert included(src), f"COPY {src} is excluded by .dockerignore"
    assert not included(".venv") and not included(".git") and not included("tests")


def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("driftrag_healthcheck", ROOT / "deploy/docker/healthcheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_image_healthcheck_script(monkeypatch):
    from tests.conftest import free_ports

    hc = _healthcheck_module()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    closed_port, other_closed = free_ports(2)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        monkeypatch.delenv("DRIFTRAG_HEALTHCHECK_URL", raising=False)
        monkeypatch.setenv("DRIFTRAG_RUN__METRICS_PORT", str(closed_port))
        monkeypatch.setenv("DRIFTRAG_INDEX__PORT", str(port))  # a query-service container
        assert hc.main() == 0
        monkeypatch.setenv("DRIFTRAG_RUN__METRICS_PORT", str(port))  # a job container
        monkeypatch.setenv("DRIFTRAG_INDEX__PORT", str(closed_port))
        assert hc.main() == 0
        monkeypatch.setenv("DRIFTRAG_RUN__METRICS_PORT", str(other_closed))  # nothing answers
        assert hc.main() == 1
        monkeypatch.setenv("DRIFTRAG_HEALTHCHECK_URL", f"http://127.0.0.1:{port}/nope")  # 404
        assert hc.main() == 1
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------ Prometheus, Grafana


def test_prometheus_scrapes_the_job_and_the_query_service():
    targets = {c["job_name"]: [t for sc in c["static_configs"] for t in sc["targets"]]
               for c in PROMETHEUS["scrape_configs"]}
    job_port = env("job")["DRIFTRAG_RUN__METRICS_PORT"]
    query_port = build_parser().parse_args(COMPOSE["services"]["query"]["command"]).port
    assert targets["driftrag-job"] == [f"job:{job_port}"]
    assert targets["driftrag-query"] == [f"query:{query_port}"]
    for job, ts in targets.items():
        for t in ts:
            host = t.split(":")[0]
            assert host == "localhost" or host in COMPOSE["services"], f"{job}: {t} is not a compose service"
    # the query service's /metrics is public by default: no credentials needed in the scrape config
    assert Settings().index.metrics_require_token is False


def test_prometheus_service_mounts_its_config_and_rules():
    p = COMPOSE["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in p["command"] if a.startswith("--config.file="))
    mounts = volume_mounts("prometheus")
    conf_dir = str(Path(config).parent)
    assert mounts[conf_dir] == "./deploy/prometheus"
    for rules in PROMETHEUS["rule_files"]:
        assert (ROOT / "deploy" / "prometheus" / rules).is_file()
    data = next(a.split("=", 1)[1] for a in p["command"] if a.startswith("--storage.tsdb.path="))
    assert on_named_volume("prometheus", data)
    assert ("127.0.0.1", 9090, 9090) in published("prometheus")


def test_grafana_provisioning_matches_the_stack():
    mounts = volume_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert on_named_volume("grafana", "/var/lib/grafana")
    assert ("127.0.0.1", 3000, 3000) in published("grafana")
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    (ds,) = datasources
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/driftrag.yml").read_text())["providers"]
    dash_dir = providers[0]["options"]["path"]
    assert mounts[dash_dir] == "./deploy/grafana/dashboards"
    assert env("grafana")["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # the documented default login
    home = env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dash_dir) and (GRAFANA / "dashboards" / Path(home).name).is_file()
    # every panel queries the provisioned datasource
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
            assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"]), panel["title"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def test_dashboard_has_the_panels_operators_need():
    exprs = "\n".join(dashboard_exprs())
    for needed in ("driftrag_step_records_total", "driftrag_consumer_lag_messages", "driftrag_event_time_lag_seconds",
                   "driftrag_index_freshness_seconds_bucket", "driftrag_dead_letter_total", "driftrag_drift_score_max",
                   "driftrag_drift_alerts_total", "driftrag_cadence_events_total", "driftrag_http_requests_total",
                   "driftrag_http_request_seconds_bucket", "driftrag_changelog_lag_messages",
                   "driftrag_index_changelog_delay_seconds_bucket"):
        assert needed in exprs, needed
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs  # freshness p50/p95
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"] == "driftrag"


METRIC = re.compile(r"\bdriftrag_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported_metric_names() -> set[str]:
    names = set()
    for pkg in ("streams", "operators", "index"):
        for path in (ROOT / pkg).rglob("*.py"):
            names.update(re.findall(r"[\"'](driftrag_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def exported(name: str, names: set[str]) -> bool:
    """``name`` as queried is a series of a metric the code defines (histograms' _bucket/_sum/_count; a counter
    declared with or without _total, which prometheus_client adds)."""
    if name in names:
        return True
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            base = name.removesuffix(suffix)
            if base in names or base + "_total" in names:
                return True
    return False


def test_every_metric_in_the_dashboard_and_alert_rules_is_exported_by_the_code():
    names = exported_metric_names()
    assert "driftrag_dead_letter_total" in names  # the scan sees the code
    used = {n for e in dashboard_exprs() for n in METRIC.findall(e)}
    used |= {n for g in ALERTS["groups"] for r in g["rules"] for n in METRIC.findall(r["expr"])}
    assert len(used) > 15
    missing = sorted(n for n in used if not exported(n, names))
    assert not missing, f"used in deploy/ but defined nowhere in streams/, operators/, index/: {missing}"


# ------------------------------------------------------------------------------------------------ docker compose


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "deploy/docker-compose.gpu.yml"]])
def test_docker_compose_config_is_valid(files):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("the Docker Compose v2 CLI (`docker compose`) is not installed here; the file is checked by the "
                    "other tests in this module only")
    args = [a for f in files for a in ("-f", f)]
    r = subprocess.run([*cli, *args, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
