"""A secured broker: the project's real Kafka broker with a SASL/SCRAM listener over TLS (SASL_SSL).

With the right credentials and CA in ``DRIFTRAG_KAFKA__CLIENT_CONFIG``, `topics create`, `generate --kafka`, the
stream job and `serve` work end to end over that listener; with a wrong password, or without the CA, each exits
non-zero with one clear error line (no password in it), instead of a client retrying for ever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from index.client import DriftragClient
from streams.broker import LocalKafka
from streams.settings import BrokerSettings, KafkaSettings, Settings
from tests.conftest import free_port, free_ports, read_topic, stop_process
from tests.test_index_e2e import _spawn, _wait

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USER, PASSWORD = "driftrag-job", "correct-horse-battery"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    port, controller, sasl = free_ports(3)
    broker = LocalKafka(BrokerSettings(port=port, controller_port=controller, sasl_port=sasl, sasl_tls=True,
                                       cache_dir=Settings().broker.cache_dir,
                                       data_dir=tmp_path_factory.mktemp("sasl-kafka"), heap="384m"))
    try:
        broker.start(progress=lambda m: print(f"[sasl broker] {m}"))
        broker.add_scram_user(USER, PASSWORD)
        yield broker
    finally:
        broker.stop()


def _env(broker: LocalKafka, prefix: str, password: str, tmp: Path, trust: bool = True) -> dict[str, str]:
    client = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-256",
              "sasl.username": USER, "sasl.password": password}
    if trust:
        client["ssl.ca.location"] = str(broker.tls_dir / "ca.pem")
    return {**os.environ, "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": broker.sasl_bootstrap,
            "DRIFTRAG_KAFKA__TOPIC_PREFIX": prefix, "DRIFTRAG_KAFKA__CLIENT_CONFIG": json.dumps(client),
            "DRIFTRAG_CLUSTERS__CODEBOOK_DIR": str(tmp / "codebooks"), "DRIFTRAG_CLUSTERS__K": "8"}


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_job_serve_and_generate_work_over_sasl_scram(sasl_broker, tmp_path):
    prefix = f"s{uuid.uuid4().hex[:6]}."
    env = _env(sasl_broker, prefix, PASSWORD, tmp_path)
    r = _cli(["topics", "create"], env)
    assert r.returncode == 0, r.stderr
    r = _cli(["generate", "--kafka", "--events", "4000", "--seed", "5", "--bad-fraction", "0.01"], env)
    assert r.returncode == 0, r.stderr
    r = _cli(["run", "--no-tail", "--progress-every", "30"], env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    # What the job wrote is on the broker: read it back through the plaintext admin listener.
    plain = KafkaSettings(bootstrap_servers=sasl_broker.bootstrap, topic_prefix=prefix)
    mutations = read_topic(plain, plain.topic("index_mutations"))
    assert any(k == b"codebook" for k, _ in mutations) and len(mutations) > 100
    dead = [orjson.loads(v) for _, v in read_topic(plain, plain.topic("dead_letter"))]
    assert dead and all("reason" in d for d in dead)  # the 1% bad messages, dead-lettered over SASL

    port, log = free_port(), tmp_path / "serve.log"
    serve = _spawn(["serve", "--port", str(port), "--snapshot-dir", str(tmp_path / "snap"), "--no-text-search"],
                   env, log)
    try:
        client = DriftragClient(f"http://127.0.0.1:{port}", timeout=10)
        _wait(lambda: client.ready() is True, 120, "serve to catch up over SASL", [serve], [log])
        ctx = client.context(clusters=[0, 1], k=3)
        assert ctx["successors"] and ctx["freshness"]["watermark_ts"] is not None
    finally:
        stop_process(serve)
    assert serve.returncode == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("command", [["topics", "create"], ["generate", "--kafka", "--events", "100"],
                                     ["run"], ["serve", "--no-text-search"]], ids=lambda c: c[0])
def test_wrong_credentials_are_one_clear_line_and_a_nonzero_exit(sasl_broker, tmp_path, command):
    env = _env(sasl_broker, "wrong.", "not-the-password", tmp_path)
    if command[0] == "serve":
        command = [*command, "--port", str(free_port()), "--snapshot-dir", str(tmp_path / "snap")]
    r = _cli(command, env, timeout=120)  # a hang fails here
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"driftrag {command[0]}: error: Kafka at {sasl_broker.sasl_bootstrap} refused")
    assert f"user {USER!r} (SCRAM-SHA-256)" in lines[0] and "Authentication failed" in lines[0]
    assert "not-the-password" not in r.stderr + r.stdout


def test_an_untrusted_broker_certificate_is_one_clear_line(sasl_broker, tmp_path):
    r = _cli(["run"], _env(sasl_broker, "untrusted.", PASSWORD, tmp_path, trust=False), timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SSL handshake failed" in lines[0] and "certificate verify failed" in lines[0], lines
