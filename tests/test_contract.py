"""The event contract of the brief: every rule, each bad input with its machine-readable reason."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from streams.contract import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_KEY_BYTES,
    REASONS,
    ContentEvent,
    DeadLetter,
    Engagement,
    RawMessage,
    Validator,
    dead_letter_key,
    decode_original,
)

V = Validator()
GOOD = {"user_id": "u1", "item_id": "i1", "action": "like", "ts": 1767225600000}


def eng(value: bytes | None, offset: int = 5) -> Engagement | ContentEvent | DeadLetter:
    return V.validate(RawMessage("engagements", 2, offset, b"u1", value))


def item(obj: object) -> Engagement | ContentEvent | DeadLetter:
    return V.validate(RawMessage("items", 0, 0, b"i1", orjson.dumps(obj)))


def with_(**kw: object) -> bytes:
    d = {**GOOD, **kw}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def test_good_engagement_all_fields():
    e = eng(with_(action="view", dwell_ms=10_000, event_id="e1", text="hello", extra={"ignored": 1}))
    assert e == Engagement("u1", "i1", "view", 1767225600000, True, 10_000, "e1", "hello", partition=e.partition)


@pytest.mark.parametrize(
    ("action", "dwell", "positive"),
    [
        ("like", None, True), ("share", None, True), ("comment", None, True), ("save", None, True),
        ("view", 10_000, True), ("view", 9_999, False), ("view", None, False),
        ("skip", 50_000, False), ("dislike", None, False),
    ],
)
def test_positive_engagement_rule(action, dwell, positive):
    kw = {"action": action} | ({"dwell_ms": dwell} if dwell is not None else {})
    assert eng(with_(**kw)).positive is positive


def test_positive_threshold_is_configurable():
    v = Validator(positive_dwell_ms=3_000)
    e = v.validate(RawMessage("engagements", 0, 0, None, with_(action="view", dwell_ms=3_000)))
    assert e.positive


def test_rfc3339_timestamps():
    assert eng(with_(ts="2026-01-01T00:00:00Z")).ts_ms == 1767225600000
    assert eng(with_(ts="2026-01-01T02:00:00.5+02:00")).ts_ms == 1767225600500


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        (None, "empty_message", None),
        (b"", "empty_message", None),
        (b"\xff\xfe{}", "invalid_utf8", None),
        (b'{"user_id": "u1", "item_id"', "invalid_json", None),
        (b"hello world", "invalid_json", None),
        (b"[1, 2]", "not_an_object", None),
        (b'"a string"', "not_an_object", None),
        (with_(user_id=...), "missing_field", "user_id"),
        (with_(item_id=None), "missing_field", "item_id"),
        (with_(action=...), "missing_field", "action"),
        (with_(ts=...), "missing_field", "ts"),
        (with_(user_id=42), "wrong_type", "user_id"),
        (with_(action=1), "wrong_type", "action"),
        (with_(ts=True), "wrong_type", "ts"),
        (with_(ts=[1]), "wrong_type", "ts"),
        (with_(ts=1.5e12), "wrong_type", "ts"),
        (with_(dwell_ms="100"), "wrong_type", "dwell_ms"),
        (with_(dwell_ms=False), "wrong_type", "dwell_ms"),
        (with_(text=5), "wrong_type", "text"),
        (with_(event_id=7), "wrong_type", "event_id"),
        (with_(user_id=""), "invalid_value", "user_id"),
        (with_(action="purchase"), "invalid_value", "action"),
        (with_(dwell_ms=-1), "invalid_value", "dwell_ms"),
        (with_(ts="yesterday"), "invalid_value", "ts"),
        (with_(ts="2026-01-01T00:00:00"), "invalid_value", "ts"),
        (with_(ts=-5), "invalid_value", "ts"),
        (with_(ts=10**17), "invalid_value", "ts"),
        (with_(user_id="u" * 129), "oversize_field", "user_id"),
        (with_(text="x" * (8 * 1024 + 1)), "oversize_field", "text"),
        (with_(text="é" * 4097), "oversize_field", "text"),  # 8194 bytes in UTF-8
        (b" " * (64 * 1024 + 1), "oversize_message", None),
    ],
)
def test_bad_engagements_are_dead_letters(value, reason, field):
    d = eng(value, offset=77)
    assert isinstance(d, DeadLetter)
    assert (d.reason, d.field) == (reason, field)
    assert reason in REASONS
    assert (d.topic, d.partition, d.offset, d.key, d.value) == ("engagements", 2, 77, b"u1", value)
    assert d.detail


def test_limits_at_the_boundary_are_valid():
    assert isinstance(eng(with_(user_id="u" * 128, text="x" * 8192)), Engagement)
    assert isinstance(eng(with_(text="é" * 4096)), Engagement)


def test_content_events():
    assert item({"item_id": "i1", "text": "t", "ts": 5, "tags": ["a", "b"]}) == ContentEvent("i1", "t", 5, ("a", "b"))
    assert item({"item_id": "i1", "text": "t", "ts": 5}).tags == ()
    assert item({"item_id": "i1", "ts": 5}).reason == "missing_field"
    assert item({"item_id": "i1", "text": "t", "ts": 5, "tags": "a"}).reason == "wrong_type"
    assert item({"item_id": "i1", "text": "t", "ts": 5, "tags": ["a", 1]}).field == "tags"
    assert item({"item_id": "i1", "text": "x" * 9000, "ts": 5}).reason == "oversize_field"


def test_unknown_topic_is_a_dead_letter():
    d = V.validate(RawMessage("other", 0, 3, None, with_()))
    assert d.reason == "unknown_topic"


def test_prefixed_topics_from_settings():
    from streams.settings import Settings

    v = Validator.from_settings(Settings(kafka={"topic_prefix": "p."}))
    assert isinstance(v.validate(RawMessage("p.engagements", 0, 0, None, with_())), Engagement)
    assert v.validate(RawMessage("engagements", 0, 0, None, with_())).reason == "unknown_topic"


@pytest.mark.parametrize("value", [b"\xff\xfe not utf8", b'{"ok": "text"}', None])
def test_dead_letter_json_round_trips_original_bytes(value):
    dl = DeadLetter("invalid_json", "d", None, "engagements", 1, 9, b"\xff", value)
    doc = orjson.loads(dl.to_json(now_ms=1))
    assert doc["source"] == {"topic": "engagements", "partition": 1, "offset": 9}
    assert doc["reason"] == "invalid_json"
    assert doc["key_encoding"] == "base64"
    assert decode_original(doc) == value


def test_validator_checks_arguments():
    with pytest.raises(ValueError, match="positive_dwell_ms"):
        Validator(positive_dwell_ms=-1)


@pytest.mark.parametrize("size", [0, 1, 1000, 150_000, 200_000, 999_999])
@pytest.mark.parametrize("fill", [b"\x01", b'"', b"\xff", b"a"])
def test_a_dead_letter_always_fits_the_topic(size, fill):
    """A 200 KB engagement of control bytes escaped to a 1.2 MB dead letter: the producer refused it
    (MSG_SIZE_TOO_LARGE), the job exited, and every restart crashed on the same message."""
    value = (fill * size)[:size]
    v = Validator()
    dl = v.validate(RawMessage("engagements", 2, 99, fill * 5000, value))
    assert isinstance(dl, DeadLetter)
    out = dl.to_json(0)
    assert len(out) <= DEAD_LETTER_MAX_BYTES
    rec = orjson.loads(out)
    assert rec["source"] == {"topic": "engagements", "partition": 2, "offset": 99}
    assert rec["value_bytes"] == size
    if rec["value_truncated"]:
        assert rec["value_sha256"] == hashlib.sha256(value).hexdigest()
        assert value.startswith(decode_original(rec))
    else:
        assert decode_original(rec) == value and "value_sha256" not in rec
    assert len(dead_letter_key(fill * 5000)) <= DEAD_LETTER_MAX_KEY_BYTES
    assert rec["key_truncated"] is True and rec["key_bytes"] == 5000
