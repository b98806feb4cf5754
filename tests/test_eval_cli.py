"""`driftrag eval`'s pieces that need no model: the warm-up's content (no future content in the codebook)."""

from __future__ import annotations

import json

import pytest

from operators.evaluation import DAY_MS, PERIODS, EvalConfig
from streams.contract import Validator
from streams.eval_cli import warmup_items

T0 = 1_767_225_600_000


def test_warmup_items_keeps_only_content_dated_before_the_warmup_ends(tmp_path):
    events = tmp_path / "e.jsonl"
    items = tmp_path / "i.jsonl"
    lines = [json.dumps({"user_id": "u", "item_id": f"i{k}", "action": "like", "ts": T0 + 5_000 + k * DAY_MS})
             for k in range(4)]
    events.write_text("not json\n" + "\n".join(lines) + "\n")
    items.write_text("\n".join(json.dumps({"item_id": f"i{k}", "text": f"text {k}", "ts": T0 + k * DAY_MS // 2})
                               for k in range(8)) + "\n{broken\n")
    out = tmp_path / "w.jsonl"
    kept = warmup_items(events, items, DAY_MS, out, Validator())
    # first valid engagement at T0 + 5 s: items dated before T0 + 5 s + 1 day -> i0 (T0), i1 (T0 + 12 h), i2 (T0 + 1 d)
    assert kept == {"items_before_ms": T0 + 5_000 + DAY_MS, "items": 3}
    assert [json.loads(line)["item_id"] for line in out.read_text().splitlines()] == ["i0", "i1", "i2"]
    events.write_text("not json\n")
    with pytest.raises(ValueError, match="no valid engagement"):
        warmup_items(events, items, DAY_MS, out, Validator())


@pytest.mark.parametrize("period, floor", [("day", 20.0), ("week", 20 * 7 ** 0.5), ("month", 20 * 30 ** 0.5)])
def test_jaccard_floor_scales_with_the_period(period, floor):
    assert EvalConfig(period_ms=PERIODS[period]).jaccard_floor == pytest.approx(floor)
