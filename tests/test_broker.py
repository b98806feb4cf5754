"""The local broker: config, errors, and a real start/produce/consume/stop/restart cycle."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from streams.broker import LocalKafka, server_properties
from streams.cli import main
from streams.settings import BrokerSettings
from tests.conftest import free_port, free_ports


def test_server_properties_kraft_single_node(tmp_path):
    props = dict(line.split("=", 1) for line in server_properties("127.0.0.1", 19092, 19093, tmp_path).splitlines()
                 if line)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path)
    assert props["auto.create.topics.enable"] == "false"


def test_server_properties_with_a_scram_listener():
    props = dict(line.split("=", 1) for line in server_properties(
        "127.0.0.1", 9092, 9093, Path("/d"), sasl_port=9094).splitlines() if line)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,SASL_PLAINTEXT://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert "ScramLoginModule" in props["listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config"]


@pytest.mark.parametrize("argv, message", [
    (["--scram-user", "alice:pw"], "--scram-user needs a SASL listener"),
    (["--sasl-port", "{free}", "--scram-user", "alice"], "NAME:PASSWORD"),
])
def test_scram_user_flags_are_checked_before_anything_starts(tmp_path, capsys, argv, message):
    argv = [a.replace("{free}", str(free_port())) for a in argv]
    assert main(["kafka", "start", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d" / "broker.pid").exists()


def test_only_commands_that_talk_to_kafka_have_their_credentials_checked():
    from streams.cli import build_parser, uses_kafka

    parse = build_parser().parse_args
    assert uses_kafka(parse(["run"])) and uses_kafka(parse(["serve"])) and uses_kafka(parse(["topics", "list"]))
    assert uses_kafka(parse(["generate", "--kafka"])) and not uses_kafka(parse(["generate", "--out", "x"]))
    assert not uses_kafka(parse(["run", "--embedded"])) and not uses_kafka(parse(["run", "--events", "e.jsonl"]))
    assert not uses_kafka(parse(["kafka", "status"]))
    from streams.settings import KafkaSettings

    args = parse(["serve", "--bootstrap-servers", "b:1"])
    assert KafkaSettings(topic_prefix="p.").with_args(args).model_dump(include={"bootstrap_servers", "topic_prefix"}) \
        == {"bootstrap_servers": "b:1", "topic_prefix": "p."}


def test_missing_mvn_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    broker = LocalKafka(BrokerSettings(cache_dir=tmp_path, port=free_port()))
    with pytest.raises(RuntimeError, match="apt-get install maven"):
        broker.fetch(progress=lambda m: None)


def test_status_of_a_stopped_broker(tmp_path, capsys):
    port = free_port()
    assert main(["kafka", "status", "--port", str(port), "--data-dir", str(tmp_path)]) == 3
    out, err = capsys.readouterr()
    assert "not running" in err
    st = json.loads(out)
    assert st == {"running": False, "pid": None, "bootstrap": f"127.0.0.1:{port}", "answers": False,
                  "data_dir": str(tmp_path), "version": BrokerSettings().version}


def test_port_used_by_another_program_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # listens, but is no Kafka broker
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = LocalKafka(BrokerSettings(port=port, controller_port=free_port(), data_dir=tmp_path))
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is already in use"):
            broker.start(progress=lambda m: None)


def test_clean_refuses_a_directory_that_is_no_broker_data_dir(tmp_path, capsys):
    keep = tmp_path / "precious.txt"
    keep.write_text("not Kafka's")
    assert main(["kafka", "stop", "--port", str(free_port()), "--data-dir", str(tmp_path), "--clean"]) == 1
    assert "not deleting" in capsys.readouterr().err
    assert keep.exists()


def _leftover_brokers(data_dir) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args and str(data_dir / "server.properties").encode() in args:
            found.append(cmdline.parent.name)
    return found


@pytest.mark.kafka
def test_a_start_that_times_out_leaves_no_broker_running(tmp_path):
    port, cport = free_ports(2)
    broker = LocalKafka(BrokerSettings(port=port, controller_port=cport, data_dir=tmp_path / "b",
                                       start_timeout_s=0.5))
    with pytest.raises(RuntimeError, match="did not answer"):
        broker.start(progress=lambda m: None)
    assert not broker.pid_file.exists()
    assert _leftover_brokers(tmp_path / "b") == [], f"pid {os.getpid()} left a broker running"


@pytest.mark.kafka
def test_start_produce_consume_stop_restart(tmp_path):
    from confluent_kafka import Consumer, Producer

    from streams.settings import KafkaSettings
    from streams.topics import ensure_topics

    port, cport = free_ports(2)
    broker = LocalKafka(BrokerSettings(port=port, controller_port=cport, data_dir=tmp_path / "b"))
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
