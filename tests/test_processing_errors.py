"""The processing-error policy on a real replay: a record that makes a dataflow step raise is dead-lettered as
processing_error with its step and cause, the job goes on and nothing else changes; past the error budget the
job stops with one line and exit status 4 instead of emptying its output."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

import operators.drift as drift_mod
import streams.transitions_stage as ts
from streams.cli import main
from streams.errors import ERRORS
from streams.generator import GeneratorConfig, write_files

pytestmark = pytest.mark.slow
POISON = "poison-user"


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    """The generator's files, plus a copy whose extra user's engagements are the poisoned records."""
    data = tmp_path_factory.mktemp("data")
    write_files(GeneratorConfig(seed=9, events=6_000), data)
    lines = (data / "engagements.jsonl").read_bytes().splitlines(keepends=True)
    poisoned = []
    for i, line in enumerate(lines):
        poisoned.append(line)
        if i % 50 == 0:
            e = orjson.loads(line)
            poisoned.append(orjson.dumps({**e, "user_id": POISON, "action": "like"}) + b"\n")
    (data / "poisoned.jsonl").write_bytes(b"".join(poisoned))
    return data


def _replay(data: Path, events: str, out: Path, cb: Path) -> tuple[int, dict]:
    rc = main(["replay", "--events", str(data / events), "--items", str(data / "items.jsonl"),
               "--codebook-dir", str(cb), "--out", str(out), "--progress-every", "60"])
    summary = out / "summary.json"
    return rc, json.loads(summary.read_text()) if summary.exists() else {}


def _dead(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "dead_letter.jsonl").read_bytes().splitlines()]


def test_a_record_that_fails_in_a_step_is_dead_lettered_and_the_rest_is_unchanged(workload, tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTRAG_RUN__MAX_PROCESSING_ERRORS", "1000")
    cb = tmp_path / "cb"
    rc, _ = _replay(workload, "engagements.jsonl", tmp_path / "plain", cb)
    assert rc == 0
    real = ts.track_user_clusters

    def failing(state, ce):  # noqa: ANN001, ANN202
        if ce.engagement.user_id == POISON:
            raise KeyError("a bug that only this user's records reach")
        return real(state, ce)

    monkeypatch.setattr(ts, "track_user_clusters", failing)
    rc, summary = _replay(workload, "poisoned.jsonl", tmp_path / "poisoned", cb)
    assert rc == 0
    n = sum(1 for line in (workload / "poisoned.jsonl").read_bytes().splitlines() if POISON.encode() in line)
    assert summary["processing_errors"] == n and summary["processing_errors_by_step"] == {"track_user_clusters": n}
    dead = [d for d in _dead(tmp_path / "poisoned") if d["reason"] == "processing_error"]
    assert len(dead) == n and {d["step"] for d in dead} == {"track_user_clusters"}
    assert all("KeyError" in d["detail"] and orjson.loads(d["value"])["engagement"]["user_id"] == POISON
               for d in dead)
    # the poisoned user mined no transitions; everyone else's are exactly the plain run's
    assert (tmp_path / "plain" / "successors.json").read_bytes() == \
        (tmp_path / "poisoned" / "successors.json").read_bytes()


def test_a_failure_inside_the_drift_monitor_leaves_it_whole(workload, tmp_path, monkeypatch):
    """A drift shard keeps its clusters' state, changed in place. A triple that fails after it changed the shard
    is undone from the step's redo log: the run ends exactly as one whose monitor never saw it."""
    real = drift_mod.ClusterDrift.on_triple
    chosen: list = []

    def fake(fail: bool):  # noqa: ANN202
        def on_triple(self, c1, c2, c_next, ts_ms):  # noqa: ANN001, ANN202
            key = (c1, c2, c_next, ts_ms)
            if not chosen and c1 == 0:
                chosen.append(key)
            if chosen and key == chosen[0]:
                if fail:
                    real(self, c1, c2, c_next, ts_ms)  # the monitor is changed, then the step fails
                    raise RuntimeError("part-way")
                return []  # the reference run: this triple never reaches the monitor
            return real(self, c1, c2, c_next, ts_ms)
        return on_triple

    outs = {}
    for name, fail in (("skipped", False), ("failed", True)):
        chosen.clear()
        monkeypatch.setattr(drift_mod.ClusterDrift, "on_triple", fake(fail))
        rc, summary = _replay(workload, "engagements.jsonl", tmp_path / name, tmp_path / "cb")
        assert rc == 0 and chosen
        outs[name] = summary
    assert outs["failed"]["processing_errors_by_step"] == {"monitor_drift": 1}
    assert outs["skipped"]["processing_errors"] == 0
    (dl,) = [d for d in _dead(tmp_path / "failed") if d["reason"] == "processing_error"]
    assert dl["step"] == "monitor_drift" and "part-way" in dl["detail"]
    for name in ("alerts.jsonl", "cadence.jsonl"):
        assert (tmp_path / "failed" / name).read_bytes() == (tmp_path / "skipped" / name).read_bytes(), name
    assert outs["failed"]["alerts_by_kind"] == outs["skipped"]["alerts_by_kind"]


def test_past_the_error_budget_the_job_stops_with_one_line(workload, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTRAG_RUN__MAX_PROCESSING_ERRORS", "5")

    def broken(self, triple, ts_ms, key=None):  # noqa: ANN001, ANN202
        raise ValueError("broken for every record")

    monkeypatch.setattr(ts.LiveSuccessors, "observe", broken)
    rc, _ = _replay(workload, "engagements.jsonl", tmp_path / "out", tmp_path / "cb")
    assert rc == 4
    err = capsys.readouterr().err
    assert "6 records failed in dataflow steps (budget 5)" in err and "count_successors" in err
    assert "Traceback" not in err.split("stopped:")[-1]
    assert ERRORS.count == 6
