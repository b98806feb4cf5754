"""Replaying files and streaming the same events through a real Kafka broker give the same successors and the
same drift alerts (issue: offline replay). The Kafka job is the real `driftrag run` process reading one-partition
topics (a Kafka topic orders only within a partition; the files' order is the event-time order) and starting
with its embedding cache warm for the catalogue (`--warm-cache`), as a restarted deployment would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from streams.cli import main
from streams.generator import GeneratorConfig, write_files
from streams.settings import KafkaSettings, TopicSpec
from streams.topics import ensure_topics
from tests.conftest import free_ports, read_topic, stop_process

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PROGRESS = re.compile(r"\] \d+s: ([\d,]+) messages")


def _key(line: bytes, field: str) -> bytes | None:
    """The contract's message key (user_id / item_id) where the line has one: a user's events share a partition."""
    try:
        v = orjson.loads(line).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return v.encode() if isinstance(v, str) else None


def _produce(kafka: KafkaSettings, topic: str, path: Path) -> int:
    p = Producer(kafka.client(**{"enable.idempotence": True, "linger.ms": 20}))
    field = "user_id" if topic == "engagements" else "item_id"
    n = 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        while True:
            try:
                p.produce(kafka.topic(topic), key=_key(line, field), value=line)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    assert p.flush(60) == 0
    return n


def _messages_seen(log: Path) -> int:
    found = PROGRESS.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1].replace(",", "")) if found else 0


def _alive(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    for proc, log in zip(procs, logs, strict=True):
        if proc.poll() is not None:
            raise AssertionError(f"a job exited ({proc.returncode}):\n{log.read_text()[-3000:]}")


def _wait_for(procs: list[subprocess.Popen], logs: list[Path], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _alive(procs, logs)
        if sum(map(_messages_seen, logs)) >= n:
            return
        time.sleep(0.5)
    tails = "\n".join(log.read_text()[-2000:] for log in logs)
    raise AssertionError(f"the job did not read {n:,} messages in {timeout}s:\n{tails}")


def _end_offsets(kafka: KafkaSettings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    parts = AdminClient(kafka.client()).list_topics(topic, timeout=10).topics[topic].partitions
    c = Consumer(kafka.client(**{"group.id": "test-offsets"}))
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _wait_until_quiet(kafka: KafkaSettings, procs: list[subprocess.Popen], logs: list[Path], quiet_s: float = 3.0,
                      timeout: float = 180) -> None:
    """Until the job's changelog stops growing for ``quiet_s``: every message read has been through the flow."""
    topic = kafka.topic("index_mutations")
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        _alive(procs, logs)
        n = _end_offsets(kafka, topic)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError(f"{topic} kept growing for {timeout}s")


def _successors(out: Path) -> dict[tuple[int, int], dict[int, float]]:
    return {tuple(p["pair"]): {s["cluster"]: s["count"] for s in p["successors"]}
            for p in json.loads((out / "successors.json").read_text())}


def _topics(bootstrap: str, prefix: str, partitions: int) -> tuple[KafkaSettings, dict[str, str]]:
    """Topics of their own (a fresh prefix) with ``partitions`` for engagements and items, and the job's env."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"{prefix}{uuid.uuid4().hex[:8]}.")
    kafka = kafka.model_copy(update={"topics": {
        **kafka.topics, "engagements": TopicSpec(name="engagements", partitions=partitions),
        "items": TopicSpec(name="items", partitions=partitions)}})
    ensure_topics(kafka)
    return kafka, {**os.environ, "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                   "DRIFTRAG_KAFKA__TOPIC_PREFIX": kafka.topic_prefix}


def _supports(out: Path) -> dict[tuple[int, int], dict[str, float]]:
    return {tuple(p["pair"]): p["support_by_half_life"] for p in json.loads((out / "successors.json").read_text())}


def assert_same_successors(ours: dict, theirs: dict) -> None:
    """The same pairs and successors, counts within their rounding (0.01)."""
    assert set(ours) == set(theirs)
    for pair, counts in ours.items():
        assert set(counts) == set(theirs[pair]), pair
        for c, v in counts.items():
            assert abs(v - theirs[pair][c]) <= 0.011, (pair, c, v, theirs[pair][c])


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replayed")
    data, codebooks = tmp / "data", tmp / "codebooks"
    write_files(GeneratorConfig(seed=7, events=60_000, bad_fraction=0.01), data)
    events, items = data / "engagements.jsonl", data / "items.jsonl"
    assert main(["clusters", "build", "--items", str(items), "--out", str(codebooks)]) == 0
    replay_out = tmp / "replay"
    assert main(["replay", "--events", str(events), "--items", str(items), "--out", str(replay_out),
                 "--codebook-dir", str(codebooks), "--progress-every", "60"]) == 0
    return events, items, codebooks, replay_out


@pytest.mark.parametrize(("partitions", "processes", "workers"), [(1, 1, 1), (3, 1, 1), (3, 1, 2), (3, 2, 1)])
def test_replay_and_kafka_give_the_same_successors_and_alerts(kafka_bootstrap, tmp_path, replayed, partitions,
                                                              processes, workers):
    """One partition per topic, and three (the default; each user's events in one partition, in order; the
    consumer reads them in turns, so on this backlog one is often most of a day of event time ahead of another):
    the same successors and the same alerts, because the drift step feeds an hour only once every partition is
    past it. Scaled out (two workers in one process, or two processes of one worker each, the partitions spread
    over them): still the same pairs, successors and support at every half-life, because the item join keeps each
    user's engagements in order; the weights of the half-lives and the alerts are not compared there (triples from
    different workers reach the drift step out of step, and it scores them in the order they reach it)."""
    events, items, codebooks, replay_out = replayed
    kafka, env = _topics(kafka_bootstrap, "r", partitions)
    # The catalogue first, as a platform publishes it; the job takes it in before the engagements arrive.
    n_items = _produce(kafka, "items", items)
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    jobs, logs, outs = [], [], []
    for i in range(processes):
        outs.append(tmp_path / f"kafka{i}")
        logs.append(tmp_path / f"job{i}.log")
        scale = ["-w", str(workers)] + (["-i", str(i), "-a", addresses] if processes > 1 else [])
        with logs[i].open("ab") as f:
            jobs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "run", "--codebook-dir", str(codebooks), "--out", str(outs[i]),
                 "--no-api", "--warm-cache", str(items), "--warm-cache", str(events), "--progress-every", "0.5",
                 *scale], env=env, stdout=f, stderr=f))
    try:
        # each process reports what it read; together they read everything
        _wait_for(jobs, logs, n_items, timeout=240)
        n_events = _produce(kafka, "engagements", events)
        _wait_for(jobs, logs, n_items + n_events, timeout=240)
        _wait_until_quiet(kafka, jobs, logs)  # what was read has left the flow; then a clean Ctrl-C stop
    finally:
        stop_process(jobs)
    for job, log in zip(jobs, logs, strict=True):
        assert job.returncode == 0, log.read_text()[-3000:]

    ours = _successors(replay_out)
    theirs = {}
    for out in outs:  # each process keeps the pairs its workers counted: together, every pair once
        part = _successors(out)
        assert not set(part) & set(theirs)
        theirs.update(part)
    assert len(ours) > 100
    if processes > 1 or workers > 1:
        # Each user's order holds, but triples reach the drift step out of step, so the order in which each pair's
        # transitions are scored, and with it the weights of its half-lives, can differ: the same pairs, the same
        # successors, and the same order-free support at every half-life.
        assert {p: set(c) for p, c in ours.items()} == {p: set(c) for p, c in theirs.items()}
        ours_h, theirs_h = _supports(replay_out), {}
        for out in outs:
            theirs_h.update(_supports(out))
        assert ours_h.keys() == theirs_h.keys()
        for pair, by_h in ours_h.items():
            assert by_h.keys() == theirs_h[pair].keys(), pair
            assert all(abs(v - theirs_h[pair][h]) <= 0.011 for h, v in by_h.items()), (pair, by_h, theirs_h[pair])
        return
    assert_same_successors(ours, theirs)

    replayed_alerts = [orjson.loads(x) for x in (replay_out / "alerts.jsonl").read_bytes().splitlines()]
    streamed = [orjson.loads(v) for _, v in read_topic(kafka, kafka.topic("drift_alerts"))]
    assert len(replayed_alerts) >= 5, "the scenario plants drifts: the replay must alert"

    def key(a: dict) -> tuple:
        return a["alert_id"], a["severity"], a["kind"], a["cluster"], round(a["score"], 6), a["window"]["end"]

    assert sorted(map(key, streamed)) == sorted(map(key, replayed_alerts))


def test_a_lost_peer_process_is_a_clear_error_not_a_hang(kafka_bootstrap, tmp_path, replayed):
    """Two processes of one Bytewax cluster; one is killed. The other must not hang or die with a Rust panic's
    traceback: it stops with one clear line (restart every process; recovery resumes) and exit status 3."""
    events, _, codebooks, _ = replayed
    prefix = f"p{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "DRIFTRAG_KAFKA__TOPIC_PREFIX": prefix}
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(kafka)
    head = tmp_path / "head.jsonl"  # a few engagements on every partition: both processes have work
    head.write_bytes(b"\n".join(events.read_bytes().split(b"\n")[:600]) + b"\n")
    _produce(kafka, "engagements", head)
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    logs = [tmp_path / f"job{i}.log" for i in range(2)]
    jobs = []
    for i, log in enumerate(logs):
        with log.open("ab") as f:
            jobs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "run", "--codebook-dir", str(codebooks), "--no-api",
                 "--progress-every", "0.5", "-i", str(i), "-a", addresses], env=env, stdout=f, stderr=f))
    try:
        _wait_for(jobs, logs, 0, timeout=120)
        deadline = time.monotonic() + 120
        # Messages read: the cluster has formed (workers start only once every process is connected; a process
        # waiting for a peer that never connects waits on, as Bytewax does).
        while sum(map(_messages_seen, logs)) == 0:
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            _alive(jobs, logs)
            time.sleep(0.5)
        jobs[1].kill()
        rc = jobs[0].wait(90)
    finally:
        stop_process(jobs)
    text = logs[0].read_text()
    assert rc == 3, text[-3000:]
    assert "lost a peer process" in text and "PanicException" not in text


KILL9_RUNS = 5


def test_kill_9_five_times_then_the_replays_successors_and_no_new_alert_ids(kafka_bootstrap, tmp_path, replayed):
    """`driftrag run -r DIR` on a Kafka backlog, killed with SIGKILL five times at different points and restarted
    each time, then run to the end: the successor state equals the replay's, every alert on the topic is one of the
    replay's (same alert_id and severity; a restart may send one again, never a new id), and the summary covers
    the whole job (every message once). Before, one run in three lost a triple on a few pairs, alerts came twice
    and the summary counted the last process only."""
    events, items, codebooks, replay_out = replayed
    kafka, env = _topics(kafka_bootstrap, "k", 1)
    total = _produce(kafka, "items", items) + _produce(kafka, "engagements", events)
    out, rec = tmp_path / "out", tmp_path / "recovery"
    cmd = [sys.executable, "-m", "streams.cli", "run", "--codebook-dir", str(codebooks), "--out", str(out),
           "--no-api", "--no-tail", "--warm-cache", str(items), "--warm-cache", str(events), "--progress-every",
           "0.3", "-r", str(rec), "-s", "0.5"]
    chunk = total // (KILL9_RUNS + 2)  # each run reads about this much past its last snapshot, then dies
    kills = 0
    for k in range(KILL9_RUNS):
        log = tmp_path / f"job{k}.log"
        with log.open("ab") as f:
            job = subprocess.Popen(cmd, env=env, stdout=f, stderr=f)
        deadline = time.monotonic() + 240
        try:
            while job.poll() is None and time.monotonic() < deadline and _messages_seen(log) < chunk:
                time.sleep(0.1)
            if job.poll() is None:
                job.kill()
                kills += 1
            job.wait(60)
        finally:
            if job.poll() is None:
                job.kill()
    assert kills == KILL9_RUNS
    final = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    summary = json.loads(final.stdout.decode().strip().splitlines()[-1])
    assert summary["messages"] == total

    ours = _successors(replay_out)
    theirs = _successors(out)
    assert_same_successors(ours, theirs)
    replayed_ids = {(a["alert_id"], a["severity"]) for a in
                    (orjson.loads(x) for x in (replay_out / "alerts.jsonl").read_bytes().splitlines())}
    streamed_ids = {(a["alert_id"], a["severity"]) for a in
                    (orjson.loads(v) for _, v in read_topic(kafka, kafka.topic("drift_alerts")))}
    assert streamed_ids == replayed_ids


def test_kafka_gives_the_replays_successors_on_a_retail_shaped_log(kafka_bootstrap, tmp_path):
    """The real-log-shaped scenario (minute-resolution baskets, items published at their first purchase) through a
    one-partition broker: the same successors as its replay."""
    data, codebooks, replay_out = tmp_path / "data", tmp_path / "codebooks", tmp_path / "replay"
    write_files(GeneratorConfig(seed=4, scenario="retail", events=15_000, days=45, bad_fraction=0.01), data)
    events, items = data / "engagements.jsonl", data / "items.jsonl"
    assert main(["clusters", "build", "--items", str(items), "--out", str(codebooks)]) == 0
    assert main(["replay", "--events", str(events), "--items", str(items), "--out", str(replay_out),
                 "--codebook-dir", str(codebooks), "--progress-every", "60"]) == 0
    kafka, env = _topics(kafka_bootstrap, "rt", 1)
    n = _produce(kafka, "items", items)
    log, out = tmp_path / "job.log", tmp_path / "kafka"
    with log.open("ab") as f:
        job = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "--codebook-dir", str(codebooks), "--out", str(out),
             "--no-api", "--warm-cache", str(items), "--warm-cache", str(events), "--progress-every", "0.5"],
            env=env, stdout=f, stderr=f)
    try:
        _wait_for([job], [log], n, timeout=240)
        n += _produce(kafka, "engagements", events)
        _wait_for([job], [log], n, timeout=240)
        _wait_until_quiet(kafka, [job], [log])
    finally:
        stop_process(job)
    assert job.returncode == 0, log.read_text()[-3000:]
    ours, theirs = _successors(replay_out), _successors(out)
    assert len(ours) > 20
    assert_same_successors(ours, theirs)
