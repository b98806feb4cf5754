"""Exact recovery without Kafka: a file-mode job killed with SIGKILL several times and restarted from its recovery
directory ends with the `--out` files and summary of an uninterrupted run, every record once. Before, the files
were appended to on every restart (alerts written twice) and the summary and successors.json covered only the
last process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.generator import GeneratorConfig, write_files

pytestmark = pytest.mark.slow
KILLS = 3
WALL_CLOCK_FIELDS = {"ingest_ms", "dead_lettered_at_ms"}


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    # --warm-cache: every text is embedded up front in fixed batches. The int8 backend's vectors depend slightly
    # on the batch a text is embedded in, and a restart batches the texts it re-embeds differently.
    return [sys.executable, "-m", "streams.cli", "run", "--events", str(data / "engagements.jsonl"), "--items",
            str(data / "items.jsonl"), "--warm-cache", str(data / "items.jsonl"), "--codebook-dir",
            str(data.parent / "cb"), "--out", str(out), "--no-api", "--progress-every", "60", *extra]


def _lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in WALL_CLOCK_FIELDS}
            for x in path.read_text().splitlines()]


def test_kill_9_and_restart_gives_the_uninterrupted_runs_outputs(tmp_path: Path):
    data = tmp_path / "data"
    write_files(GeneratorConfig(seed=3, events=40_000, bad_fraction=0.01), data)
    plain, crashed, rec = tmp_path / "plain", tmp_path / "crashed", tmp_path / "recovery"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cmd(data, plain), check=True, env=env, capture_output=True, timeout=600)
    total = len((plain / "events.jsonl").read_text().splitlines())
    kills = 0
    for k in range(KILLS):
        proc = subprocess.Popen(_cmd(data, crashed, "-r", str(rec), "-s", "0.2"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = total * (k + 1) // (KILLS + 1)  # kill at a different point of the stream each time
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            events = crashed / "events.jsonl"
            if events.exists() and events.stat().st_size and len(events.read_bytes().splitlines()) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        proc.wait(60)
    assert kills >= 2, "the job finished before it could be killed: give it more events"
    subprocess.run(_cmd(data, crashed, "-r", str(rec), "-s", "0.2"), check=True, env=env, capture_output=True,
                   timeout=600)
    for name in ("events.jsonl", "items.jsonl", "alerts.jsonl", "cadence.jsonl", "dead_letter.jsonl"):
        assert _lines(crashed / name) == _lines(plain / name), name
    assert (crashed / "successors.json").read_text() == (plain / "successors.json").read_text()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (plain, crashed))
    for key in ("messages", "engagements", "content_events", "dead_letter", "dead_letter_by_reason", "triples",
                "pairs", "alerts", "alerts_by_kind", "engagements_clustered", "items_assigned", "cadence"):
        assert b[key] == a[key], key
