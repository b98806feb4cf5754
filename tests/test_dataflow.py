"""The dataflow without a broker: Bytewax TestingSource / JsonlFileSource -> validate -> sinks."""

from __future__ import annotations

import gc
import json

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.cli import main
from streams.contract import ContentEvent, Engagement, RawMessage, Validator, decode_original
from streams.dataflow import build_flow, encode_dead_letter, is_dead_letter
from streams.sources import JsonlFileSource

GOOD = b'{"user_id":"u1","item_id":"i1","action":"like","ts":1767225600000,"event_id":"e1"}'
ITEM = b'{"item_id":"i1","text":"sourdough bread","ts":1767225600000}'


def test_flow_routes_each_message_once():
    msgs = [
        RawMessage("items", 0, 0, b"i1", ITEM),
        RawMessage("engagements", 0, 0, b"u1", GOOD),
        RawMessage("engagements", 0, 1, b"u1", b"\xff"),
        RawMessage("engagements", 0, 2, b"u1", b"[]"),
        RawMessage("engagements", 0, 3, b"u1", GOOD.replace(b"e1", b"e2")),
    ]
    events, dead = [], []
    flow = build_flow(TestingSource(msgs, batch_size=2), Validator(),
                      dead_letter_sink=TestingSink(dead), events_sink=TestingSink(events))
    run_main(flow)
    assert [type(e) for e in events] == [ContentEvent, Engagement, Engagement]
    assert [e.event_id for e in events[1:]] == ["e1", "e2"]
    docs = [orjson.loads(kv.value) for kv in dead]
    assert [(d["reason"], d["source"]["offset"]) for d in docs] == [("invalid_utf8", 1), ("not_an_object", 2)]
    assert [decode_original(d) for d in docs] == [b"\xff", b"[]"]
    assert [kv.key for kv in dead] == [b"u1", b"u1"]


def test_named_steps_work_alone():
    dl = Validator().validate(RawMessage("engagements", 0, 9, None, b"nope"))
    assert is_dead_letter(dl)
    assert orjson.loads(encode_dead_letter(dl).value)["reason"] == "invalid_json"


def test_jsonl_source_offsets_are_line_numbers(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_bytes(GOOD + b"\n\n" + b"\xff\n" + GOOD.replace(b"e1", b"e3") + b"\n")
    events, dead = [], []
    flow = build_flow(JsonlFileSource({"engagements": f}, batch_size=2), Validator(),
                      dead_letter_sink=TestingSink(dead), events_sink=TestingSink(events))
    run_main(flow)
    assert [e.event_id for e in events] == ["e1", "e3"]
    docs = [orjson.loads(kv.value) for kv in dead]
    assert [(d["reason"], d["source"]["offset"]) for d in docs] == [("empty_message", 1), ("invalid_utf8", 2)]


def test_file_source_reads_the_content_file_first_when_asked(tmp_path):
    """With ``first``, the other files wait (an empty batch, a wake-up time) until the first is read to its end:
    what several workers reading the files in parallel need so that engagements do not overtake their content."""
    items, events = tmp_path / "i.jsonl", tmp_path / "e.jsonl"
    items.write_bytes(ITEM + b"\n" + ITEM.replace(b"i1", b"i2") + b"\n")
    events.write_bytes(GOOD + b"\n")
    src = JsonlFileSource({"items": items, "engagements": events}, batch_size=1, first="items")
    ev, it = src.build_part("read", "engagements", None), src.build_part("read", "items", None)
    assert ev.next_batch() == [] and ev.next_awake() is not None  # items not read yet
    assert len(it.next_batch()) == 1 and ev.next_batch() == []
    assert len(it.next_batch()) == 1 and ev.next_batch() == []  # read, but its end not seen yet
    with pytest.raises(StopIteration):
        it.next_batch()
    assert [m.offset for m in ev.next_batch()] == [0] and ev.next_awake() is None
    with pytest.raises(ValueError, match="not one of the files"):
        JsonlFileSource({"engagements": events}, first="items")
    plain = JsonlFileSource({"items": items, "engagements": events}, batch_size=1)  # default: no waiting
    assert len(plain.build_part("read", "engagements", None).next_batch()) == 1


def test_run_command_over_files(tmp_path, capsys):
    ev, it = tmp_path / "e.jsonl", tmp_path / "i.jsonl"
    ev.write_bytes(GOOD + b"\n" + b"oops\n")
    it.write_bytes(ITEM + b"\n")
    out = tmp_path / "out"
    gc_before = gc.get_threshold()
    assert main(["run", "--events", str(ev), "--items", str(it), "--out", str(out), "--no-clusters"]) == 0
    assert gc.get_threshold() == gc_before and gc.get_freeze_count() == 0  # the job's GC tuning is undone
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["engagements"] == 1 and summary["content_events"] == 1
    assert summary["dead_letter_by_reason"] == {"invalid_json": 1}
    assert json.loads((out / "summary.json").read_text()) == summary
    lines = (out / "events.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(x)["type"] for x in lines) == ["content", "engagement"]
    [dl] = (out / "dead_letter.jsonl").read_bytes().splitlines()
    assert orjson.loads(dl)["source"] == {"topic": "engagements", "partition": 0, "offset": 1}


def test_run_command_rejects_missing_file(tmp_path, capsys):
    assert main(["run", "--events", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_embedded_run_needs_no_kafka(capsys):
    from streams.generator import GeneratorConfig, WorkloadGenerator

    assert main(["run", "--embedded", "--max-events", "3000", "--bad-fraction", "0.05", "--seed", "3",
                 "--no-clusters"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = list(WorkloadGenerator(GeneratorConfig(seed=3, events=3000, bad_fraction=0.05)).messages())
    assert summary["mode"] == "embedded"
    assert summary["messages"] == len(expected)
    assert summary["dead_letter"] == sum(m.bad_kind is not None for m in expected)
    assert summary["engagements"] == sum(m.bad_kind is None and m.topic == "engagements" for m in expected)


def test_embedded_run_clusters_every_engagement(tmp_path, capsys):
    """The main job as the README runs it: no codebook yet, so it bootstraps one from the generator's items."""
    out = tmp_path / "out"
    assert main(["run", "--embedded", "--max-events", "4000", "--seed", "2", "--codebook-dir", str(tmp_path / "cb"),
                 "--backend", "onnx", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["engagements_clustered"] == summary["engagements"] > 3500
    assert summary["engagements_unresolved"] == 0
    assert summary["items_assigned"] >= summary["content_events"]
    assert len(summary["top_clusters"]) == 5 and all(c["label"] for c in summary["top_clusters"])
    events = [orjson.loads(x) for x in (out / "events.jsonl").read_bytes().splitlines()]
    items = {i["item_id"]: i["cluster"] for i in map(orjson.loads, (out / "items.jsonl").read_bytes().splitlines())}
    assert all(e["cluster"] == items[e["item_id"]] for e in events)
    # The transition rule ran on the clustered engagements: per-pair successor state, written as successors.json.
    assert summary["triples"] > 0 and summary["pairs"] > 0
    pairs = json.loads((out / "successors.json").read_text())
    assert len(pairs) == summary["pairs"]
    assert all(s["cluster"] not in p["pair"] for p in pairs for s in p["successors"])


def test_files_run_without_codebook_or_items_says_what_to_do(tmp_path, capsys):
    ev = tmp_path / "e.jsonl"
    ev.write_bytes(GOOD + b"\n")
    assert main(["run", "--events", str(ev), "--codebook-dir", str(tmp_path / "none")]) == 2
    assert "driftrag clusters build" in capsys.readouterr().err
