"""Robustness benchmark: what bad input, crashes and a broker outage cost, measured on the real job. Prints one
JSON object. Its default run takes about 5 minutes on 2 cores (it starts a Kafka broker of its own for the outage).

    python bench/robustness.py [--events 30000] [--kills 5] [--outage-s 30] [--skip-outage]

- ``scenarios.<default|retail>``: a replay of the generator's drifting scenario and of its real-log-shaped one
  (1% malformed messages): records in, processed (valid engagements and content), dead-lettered by reason,
  engagements clustered, given up waiting for content, still waiting at the end, ``processing_errors``.
- ``future_record_context_changed_pairs``: pairs whose successors differ after one item and one engagement dated
  2100 are added to the default scenario (0: the event-time guard dead-letters both).
- ``kill9_runs``, ``kill9_pairs_differing``, ``duplicate_alerts_after_restart``: a file-mode job with
  ``--recovery-dir`` killed with SIGKILL ``--kills`` times at different points, then run to the end, against an
  uninterrupted run (pairs whose successors differ; alert records beyond one per alert id and severity).
- ``broker_outage_s``, ``events_lost``, ``events_double_counted``: a Kafka job reading a backlog while its broker
  is stopped for ``--outage-s`` seconds and restarted with more to read.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from streams.generator import GeneratorConfig, WorkloadGenerator, produce_to_kafka, write_files

PY = [sys.executable, "-m", "streams.cli"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def replay(data: Path, out: Path, cb: Path) -> dict:
    subprocess.run([*PY, "replay", "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
                    "--codebook-dir", str(cb), "--out", str(out), "--progress-every", "600"], check=True,
                   capture_output=True)
    return json.loads((out / "summary.json").read_text())


def successors(out: Path) -> dict[tuple, dict]:
    return {tuple(p["pair"]): {s["cluster"]: s["count"] for s in p["successors"]}
            for p in json.loads((out / "successors.json").read_text())}


def pairs_differing(a: dict, b: dict, tol: float = 0.011) -> int:
    return sum(1 for p in set(a) | set(b)
               if set(a.get(p, {})) != set(b.get(p, {}))
               or any(abs(v - b[p][c]) > tol for c, v in a.get(p, {}).items()))


def scenario(tmp: Path, name: str, config: GeneratorConfig) -> dict:
    data = tmp / name
    gt = write_files(config, data)
    s = replay(data, tmp / f"{name}-out", tmp / "cb")
    log(f"{name}: {s['messages']:,} messages, {s['dead_letter']:,} dead letters")
    given_up = s.get("engagements_unresolved", 0)
    return {"records_in": gt["messages"], "processed": s["engagements"] + s["content_events"],
            "dead_lettered": s["dead_letter_by_reason"], "clustered": s["engagements_clustered"],
            "given_up": given_up, "waiting": s["engagements"] - s["engagements_clustered"] - given_up,
            "processing_errors": s.get("processing_errors", 0)}


def future_record(tmp: Path) -> int:
    plain, poisoned = tmp / "default", tmp / "future"
    poisoned.mkdir()
    for name in ("engagements.jsonl", "items.jsonl"):
        lines = (plain / name).read_bytes().splitlines(keepends=True)
        bad = {**orjson.loads(lines[len(lines) // 2]), "ts": "2100-01-01T00:00:00Z"}
        if name == "items.jsonl":
            bad["item_id"] = "from-the-future"
        lines.insert(len(lines) // 2, orjson.dumps(bad) + b"\n")
        (poisoned / name).write_bytes(b"".join(lines))
    replay(poisoned, tmp / "future-out", tmp / "cb")
    return pairs_differing(successors(tmp / "default-out"), successors(tmp / "future-out"))


def kill9(tmp: Path, kills: int) -> dict:
    data = tmp / "default"
    cmd = [*PY, "run", "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
           "--warm-cache", str(data / "items.jsonl"), "--codebook-dir", str(tmp / "cb"), "--no-api",
           "--progress-every", "600"]
    subprocess.run([*cmd, "--out", str(tmp / "k-plain")], check=True, capture_output=True)
    total = len((tmp / "k-plain" / "events.jsonl").read_bytes().splitlines())
    out, rec = tmp / "k-crashed", tmp / "k-recovery"
    done = 0
    for k in range(kills):
        job = subprocess.Popen([*cmd, "--out", str(out), "-r", str(rec), "-s", "0.2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        target = total * (k + 1) // (kills + 1)
        while job.poll() is None:
            ev = out / "events.jsonl"
            if ev.exists() and len(ev.read_bytes().splitlines()) >= target:
                job.send_signal(signal.SIGKILL)
                done += 1
                break
            time.sleep(0.05)
        job.wait()
    subprocess.run([*cmd, "--out", str(out), "-r", str(rec), "-s", "0.2"], check=True, capture_output=True)
    alerts = [orjson.loads(x) for x in (out / "alerts.jsonl").read_bytes().splitlines()]
    log(f"kill -9: {done} kills, {len(alerts)} alert records")
    return {"kill9_runs": done,
            "kill9_pairs_differing": pairs_differing(successors(tmp / "k-plain"), successors(out)),
            "duplicate_alerts_after_restart": len(alerts) - len({(a["alert_id"], a["severity"]) for a in alerts})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outage(tmp: Path, seconds: float, events: int) -> dict:
    from streams.broker import LocalKafka
    from streams.settings import BrokerSettings, KafkaSettings, Settings
    from streams.topics import ensure_topics

    broker = LocalKafka(BrokerSettings(port=free_port(), controller_port=free_port(), data_dir=tmp / "kafka",
                                       cache_dir=Settings().broker.cache_dir, heap="512m"))
    broker.start(progress=lambda m: None)
    job = None
    try:
        k = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench.")
        ensure_topics(k)
        topics = {"engagements": k.topic("engagements"), "items": k.topic("items")}
        first, second = GeneratorConfig(seed=8, events=events), GeneratorConfig(seed=9, events=events // 3)
        produce_to_kafka(first, k.client(), topics)
        out = tmp / "o-out"
        env = {**os.environ, "DRIFTRAG_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
               "DRIFTRAG_KAFKA__TOPIC_PREFIX": k.topic_prefix}
        with (tmp / "o-job.log").open("wb") as f:
            job = subprocess.Popen([*PY, "run", "--no-clusters", "--out", str(out), "--progress-every", "600"],
                                   env=env, stdout=f, stderr=f)
        ev = out / "events.jsonl"
        while not (ev.exists() and len(ev.read_bytes().splitlines()) > 0):
            time.sleep(0.05)
        t0 = time.monotonic()
        broker.stop()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        broker.start(progress=lambda m: None)
        down = time.monotonic() - t0
        produce_to_kafka(second, k.client(), topics)
        want = collections.Counter(m.value for c in (first, second) for m in WorkloadGenerator(c).messages())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(ev.read_bytes().splitlines()) < sum(want.values()):
            time.sleep(0.5)
        time.sleep(2)
    finally:
        if job is not None and job.poll() is None:
            job.send_signal(signal.SIGTERM)
            job.wait(60)
        broker.stop()
    got = collections.Counter()
    for line in ev.read_bytes().splitlines():
        e = orjson.loads(line)
        got[e.get("event_id") or f"item:{e['item_id']}:{e['ts_ms']}"] += 1
    want_ids = collections.Counter()
    for c in (first, second):
        for m in WorkloadGenerator(c).messages():
            v = orjson.loads(m.value)
            want_ids[v.get("event_id") or f"item:{v['item_id']}:{_ts_ms(v['ts'])}"] += 1
    lost = sum((want_ids - got).values())
    doubled = sum((got - want_ids).values())
    log(f"outage: broker down {down:.1f} s, lost {lost}, doubled {doubled}")
    return {"broker_outage_s": round(down, 1), "events_lost": lost, "events_double_counted": doubled}


def _ts_ms(ts) -> int:  # noqa: ANN001
    from streams.contract import parse_ts

    return parse_ts(ts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--skip-outage", action="store_true", help="no Kafka broker (no Java needed)")
    args = p.parse_args()
    t0 = time.monotonic()
    result: dict = {"benchmark": "robustness"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["scenarios"] = {
            "default": scenario(tmp, "default", GeneratorConfig(seed=3, events=args.events, bad_fraction=0.01)),
            "retail": scenario(tmp, "retail", GeneratorConfig(seed=4, scenario="retail", events=args.events, days=45,
                                                              bad_fraction=0.01)),
        }
        result["future_record_context_changed_pairs"] = future_record(tmp)
        result.update(kill9(tmp, args.kills))
        if not args.skip_outage:
            result.update(outage(tmp, args.outage_s, args.events // 2))
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
