"""The local broker: config, errors, and a real start/produce/consume/stop/restart cycle."""

from __future__ import annotations

import json
import time

import pytest

from streams.broker import LocalKafka, server_properties
from streams.cli import main
from streams.settings import BrokerSettings
from tests.conftest import free_port


def test_server_properties_kraft_single_node(tmp_path):
    props = dict(line.split("=", 1) for line in server_properties("127.0.0.1", 19092, 19093, tmp_path).splitlines()
                 if line)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path)
    assert props["auto.create.topics.enable"] == "false"


def test_missing_mvn_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    broker = LocalKafka(BrokerSettings(cache_dir=tmp_path, port=free_port()))
    with pytest.raises(RuntimeError, match="apt-get install maven"):
        broker.fetch(progress=lambda m: None)


def test_status_of_a_stopped_broker(tmp_path, capsys):
    port = free_port()
    assert main(["kafka", "status", "--port", str(port), "--data-dir", str(tmp_path)]) == 3
    st = json.loads(capsys.readouterr().out)
    assert st == {"running": False, "pid": None, "bootstrap": f"127.0.0.1:{port}", "answers": False,
                  "data_dir": str(tmp_path), "version": BrokerSettings().version}


@pytest.mark.kafka
def test_start_produce_consume_stop_restart(tmp_path):
    from confluent_kafka import Consumer, Producer

    from streams.settings import KafkaSettings
    from streams.topics import ensure_topics

    broker = LocalKafka(BrokerSettings(port=free_port(), controller_port=free_port(), data_dir=tmp_path / "b"))
    try:
        broker.start(progress=lambda m: None)
        st = broker.status()
        assert st["running"] and st["answers"]
        broker.start(progress=lambda m: None)  # second start: a no-op on the running broker
        assert broker.status()["pid"] == st["pid"]

        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(kafka, ["engagements"])
        p = Producer({"bootstrap.servers": broker.bootstrap})
        p.produce("engagements", key=b"u1", value=b"hello")
        assert p.flush(10) == 0
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t", "auto.offset.reset": "earliest"})
        c.subscribe(["engagements"])
        deadline, got = time.monotonic() + 20, None
        while got is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got = (m.key(), m.value())
        c.close()
        assert got == (b"u1", b"hello")

        assert broker.stop() is True
        assert broker.status()["running"] is False
        assert broker.stop() is False

        # Restart: jars come from the cache (no mvn), data survives.
        marker = broker.libs / ".complete"
        before = marker.stat().st_mtime_ns
        broker.start(progress=lambda m: None)
        assert marker.stat().st_mtime_ns == before
        from confluent_kafka.admin import AdminClient

        assert "engagements" in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
    finally:
        broker.stop()
    assert main(["kafka", "stop", "--port", str(broker.settings.port), "--data-dir", str(tmp_path / "b"),
                 "--clean"]) == 0
    assert not (tmp_path / "b").exists()
