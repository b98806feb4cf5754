"""The event-time guard: one record dated far ahead changes nothing a user sees but its own dead letter and a
metric. Before the guard, one item or one engagement dated 2100 (valid under the 1970..2200 rule) aged every
decayed count to nothing: the busiest pairs fell back from `exact` answers to `global` with support 0."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.contract import DeadLetter, Engagement, RawMessage, Validator
from streams.generator import GeneratorConfig, write_files

NOW_MS = 1_780_000_000_000  # 2026-05-28
Y2100 = 4_102_444_800_000


def _eng(ts) -> RawMessage:  # noqa: ANN001
    return RawMessage("engagements", 0, 1, b"u", orjson.dumps({"user_id": "u", "item_id": "i", "action": "like",
                                                               "ts": ts}))


def test_an_event_far_ahead_of_the_wall_clock_is_dead_lettered():
    v = Validator(clock=lambda: NOW_MS / 1000)
    dl = v.validate(_eng(Y2100))
    assert isinstance(dl, DeadLetter) and dl.reason == "future_event_time" and dl.field == "ts"
    assert isinstance(v.validate(_eng("2100-01-01T00:00:00Z")), DeadLetter)
    assert isinstance(v.validate(_eng(NOW_MS + 86_400_000)), Engagement)  # at the limit: accepted
    assert isinstance(v.validate(_eng(NOW_MS + 86_400_001)), DeadLetter)
    assert isinstance(Validator(max_future_ms=None, clock=lambda: NOW_MS / 1000).validate(_eng(Y2100)), Engagement)
    with pytest.raises(ValueError, match="max_future_ms"):
        Validator(max_future_ms=-1)


def _replay(data: Path, out: Path, cb: Path) -> dict:
    assert main(["replay", "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
                 "--codebook-dir", str(cb), "--out", str(out), "--progress-every", "60"]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_one_record_dated_2100_changes_nothing_but_its_dead_letters(tmp_path: Path):
    plain, poisoned = tmp_path / "plain", tmp_path / "poisoned"
    write_files(GeneratorConfig(seed=5, events=8_000), plain)
    poisoned.mkdir()
    for name in ("engagements.jsonl", "items.jsonl"):
        lines = (plain / name).read_bytes().splitlines(keepends=True)
        first = orjson.loads(lines[len(lines) // 2])
        bad = {**first, "ts": "2100-01-01T00:00:00Z"}
        if name == "items.jsonl":
            bad["item_id"] = "from-the-future"
        lines.insert(len(lines) // 2, orjson.dumps(bad) + b"\n")
        (poisoned / name).write_bytes(b"".join(lines))
    cb = tmp_path / "cb"
    a = _replay(plain, tmp_path / "out-plain", cb)
    b = _replay(poisoned, tmp_path / "out-poisoned", cb)
    for name in ("successors.json", "alerts.jsonl", "events.jsonl"):
        assert (tmp_path / "out-plain" / name).read_bytes() == (tmp_path / "out-poisoned" / name).read_bytes(), name
    dead = [orjson.loads(x) for x in (tmp_path / "out-poisoned" / "dead_letter.jsonl").read_bytes().splitlines()]
    assert sorted(d["source"]["topic"] for d in dead if d["reason"] == "future_event_time") == ["engagements",
                                                                                                "items"]
    assert b["dead_letter"] == a["dead_letter"] + 2


DAY = 86_400_000
T2011 = 1_291_161_600_000  # 2010-12-01, as the public retail log


def _merge(tmp_path: Path, stamps: list[int]) -> list:
    from streams.sources import EventTimeFileSource

    f = tmp_path / "events.jsonl"
    f.write_bytes(b"".join(orjson.dumps({"user_id": "u", "item_id": f"i{n}", "action": "like", "ts": ts}) + b"\n"
                           for n, ts in enumerate(stamps)))
    part = EventTimeFileSource({"engagements": f}, max_future_ms=DAY).build_part("read", "event-time", None)
    out = []
    try:
        while True:
            out += part.next_batch()
    except StopIteration:
        pass
    return out


def test_a_replay_refuses_a_stray_record_dated_ahead_of_the_stream_but_follows_a_real_gap(tmp_path: Path):
    """In a replay of old data the wall clock is no guard: one record dated 2025 in a 2010 log (valid, and before
    now) would age every count. Ahead of the replay's time by more than the guard, alone: dead-lettered. A real gap
    in the data (more records follow at the new time): followed."""
    stray = [T2011, T2011 + 1, 1_750_000_000_000, T2011 + 2, T2011 + 3, T2011 + 4]
    msgs = _merge(tmp_path, stray)
    assert [m.ref_ms for m in msgs] == [None, None, T2011 + 1, None, None, None]
    v = Validator()
    out = [v.validate(m) for m in msgs]
    assert [type(x).__name__ for x in out] == ["Engagement"] * 2 + ["DeadLetter"] + ["Engagement"] * 3
    assert out[2].reason == "future_event_time" and "ahead of the replay" in out[2].detail
    gap = [T2011, T2011 + 1, T2011 + 5 * DAY, T2011 + 5 * DAY + 1, T2011 + 5 * DAY + 2, T2011 + 5 * DAY + 3]
    msgs = _merge(tmp_path, gap)
    assert [m.ref_ms for m in msgs] == [None] * 6
    assert all(type(v.validate(m)).__name__ == "Engagement" for m in msgs)


@pytest.mark.slow
def test_one_record_dated_ahead_of_an_old_log_changes_nothing_but_its_dead_letter(tmp_path: Path):
    plain, poisoned = tmp_path / "plain", tmp_path / "poisoned"
    write_files(GeneratorConfig(seed=5, events=8_000, start_ms=T2011), plain)
    poisoned.mkdir()
    (poisoned / "items.jsonl").write_bytes((plain / "items.jsonl").read_bytes())
    lines = (plain / "engagements.jsonl").read_bytes().splitlines(keepends=True)
    bad = {**orjson.loads(lines[len(lines) // 2]), "ts": "2025-06-01T00:00:00Z"}  # before now: the wall clock passes it
    lines.insert(len(lines) // 2, orjson.dumps(bad) + b"\n")
    (poisoned / "engagements.jsonl").write_bytes(b"".join(lines))
    cb = tmp_path / "cb"
    _replay(plain, tmp_path / "out-plain", cb)
    _replay(poisoned, tmp_path / "out-poisoned", cb)
    for name in ("successors.json", "alerts.jsonl", "events.jsonl"):
        assert (tmp_path / "out-plain" / name).read_bytes() == (tmp_path / "out-poisoned" / name).read_bytes(), name
    dead = [orjson.loads(x) for x in (tmp_path / "out-poisoned" / "dead_letter.jsonl").read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["future_event_time"]
