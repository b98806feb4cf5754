"""Malformed messages for the workload generator's ``--bad-fraction``: many kinds, each with the contract
reason :class:`streams.contract.Validator` (default limits) must give it.

Every payload is built from a plausible event (``template``) so bad messages look like real bugs upstream,
not random noise. No payload contains a newline or carriage return: JSONL files are split on newlines (an
empty line is an empty message), so a payload must stay on its line.

>>> from streams.contract import RawMessage, Validator
>>> t = {"user_id": "u1", "item_id": "it000001", "action": "view", "ts": 1767225600000, "dwell_ms": 1200,
...      "event_id": "e00000001"}
>>> v = bad_engagement("ts_bool", t)
>>> v
b'{"user_id":"u1","item_id":"it000001","action":"view","ts":true,"dwell_ms":1200,"event_id":"e00000001"}'
>>> Validator().validate(RawMessage("engagements", 0, 0, b"u1", v)).reason == BAD_KINDS["ts_bool"]
True
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Any

import orjson

_Builder = Callable[[dict[str, Any]], bytes]


def _with(**changes: Any) -> _Builder:
    """The template with fields replaced; a value of ``...`` removes the field."""

    def build(t: dict[str, Any]) -> bytes:
        obj = dict(t)
        for k, v in changes.items():
            if v is ...:
                obj.pop(k, None)
            else:
                obj[k] = v(t) if callable(v) else v
        return orjson.dumps(obj)

    return build


def _invalid_utf8(t: dict[str, Any]) -> bytes:
    # A Latin-1 encoder upstream: the bytes of "Zoë" in ISO-8859-1 inside otherwise valid JSON.
    uid = t["user_id"].encode()
    return orjson.dumps(t).replace(b'"' + uid + b'"', b'"' + uid + b'-Zo\xeb"', 1)


def _truncated(t: dict[str, Any]) -> bytes:
    v = orjson.dumps(t)
    return v[: max(2, len(v) // 2)]  # an object's opening half is never valid JSON


def _with_nan(t: dict[str, Any]) -> bytes:
    # A serializer that writes NaN (Python's json module does): not JSON.
    return orjson.dumps(t)[:-1] + b',"score":NaN}'


def _plain_text(t: dict[str, Any]) -> bytes:
    return f"user {t['user_id']} did {t['action']} on {t['item_id']} at {t['ts']}".encode()


def _no_offset(t: dict[str, Any]) -> bytes:
    # A local time without its UTC offset (RFC 3339 requires one), as a naive datetime.isoformat() writes it.
    naive = datetime(1970, 1, 1) + timedelta(milliseconds=int(t["ts"]))
    return _with(ts=naive.isoformat(timespec="seconds"))(t)


# kind -> (builder, expected reason, relative weight). Oversize kinds are rarer: they are big.
_ENGAGEMENT: dict[str, tuple[_Builder, str, float]] = {
    "empty_value": (lambda t: b"", "empty_message", 1.0),
    "invalid_utf8": (_invalid_utf8, "invalid_utf8", 1.0),
    "truncated_json": (_truncated, "invalid_json", 1.0),
    "json_nan": (_with_nan, "invalid_json", 1.0),
    "plain_text": (_plain_text, "invalid_json", 1.0),
    "json_array": (lambda t: orjson.dumps([t["user_id"], t["item_id"], t["action"], t["ts"]]), "not_an_object",
                   1.0),
    "json_number": (lambda t: orjson.dumps(t["ts"]), "not_an_object", 1.0),
    "json_string": (lambda t: orjson.dumps(f"{t['user_id']} {t['action']} {t['item_id']}"), "not_an_object",
                    1.0),
    "json_null": (lambda t: b"null", "not_an_object", 0.5),
    "missing_user_id": (_with(user_id=...), "missing_field", 1.0),
    "missing_item_id": (_with(item_id=...), "missing_field", 1.0),
    "missing_action": (_with(action=...), "missing_field", 1.0),
    "missing_ts": (_with(ts=...), "missing_field", 1.0),
    "null_user_id": (_with(user_id=None), "missing_field", 1.0),
    "user_id_int": (_with(user_id=lambda t: int("".join(ch for ch in t["user_id"] if ch.isdigit()) or 0)),
                    "wrong_type", 1.0),
    "action_int": (_with(action=3), "wrong_type", 1.0),
    "ts_bool": (_with(ts=True), "wrong_type", 1.0),
    "ts_float_seconds": (_with(ts=lambda t: t["ts"] / 1000 + 0.5), "wrong_type", 1.0),
    "dwell_string": (_with(action="view", dwell_ms=lambda t: str(t.get("dwell_ms") or 12000)), "wrong_type",
                     1.0),
    "event_id_int": (_with(event_id=lambda t: int(t["event_id"].lstrip("e") or 0)), "wrong_type", 1.0),
    "text_not_string": (_with(text=lambda t: ["tags", "not", "text"]), "wrong_type", 1.0),
    "unknown_action": (_with(action="purchase"), "invalid_value", 1.0),
    "empty_item_id": (_with(item_id=""), "invalid_value", 1.0),
    "negative_dwell": (_with(action="view", dwell_ms=-250), "invalid_value", 1.0),
    "ts_unparseable": (_with(ts="last tuesday around noon"), "invalid_value", 1.0),
    "ts_no_offset": (_no_offset, "invalid_value", 1.0),
    "ts_microseconds": (_with(ts=lambda t: int(t["ts"]) * 1000), "invalid_value", 1.0),  # wrong units
    "oversize_id": (_with(item_id=lambda t: (t["item_id"] * 40)[:200]), "oversize_field", 1.0),
    "oversize_text": (_with(text=lambda t: ("lorem ipsum " * 800)[:9000]), "oversize_field", 0.5),
    "oversize_message": (_with(blob=lambda t: "x" * 70_000), "oversize_message", 0.2),
}

_CONTENT: dict[str, tuple[_Builder, str, float]] = {
    "item_missing_text": (_with(text=...), "missing_field", 1.0),
    "item_text_not_string": (_with(text=42), "wrong_type", 1.0),
    "item_tags_not_list": (_with(tags=lambda t: ",".join(t.get("tags") or ["misc"])), "wrong_type", 1.0),
    "item_missing_ts": (_with(ts=...), "missing_field", 1.0),
    "item_truncated_json": (_truncated, "invalid_json", 1.0),
}

ENGAGEMENT_BAD_KINDS: dict[str, str] = {k: v[1] for k, v in _ENGAGEMENT.items()}
CONTENT_BAD_KINDS: dict[str, str] = {k: v[1] for k, v in _CONTENT.items()}
# kind -> the dead-letter reason the validator gives it (with the contract's default size limits).
BAD_KINDS: dict[str, str] = {**ENGAGEMENT_BAD_KINDS, **CONTENT_BAD_KINDS}

_ENGAGEMENT_KINDS = tuple(_ENGAGEMENT)
_ENGAGEMENT_CUM = list(accumulate(v[2] for v in _ENGAGEMENT.values()))
_CONTENT_KINDS = tuple(_CONTENT)
_CONTENT_CUM = list(accumulate(v[2] for v in _CONTENT.values()))


def engagement_kind(u: float) -> str:
    """The bad engagement kind for a uniform draw ``u`` in [0, 1) (weighted).

    >>> engagement_kind(0.0)
    'empty_value'
    """
    return _ENGAGEMENT_KINDS[bisect_right(_ENGAGEMENT_CUM, u * _ENGAGEMENT_CUM[-1])]


def content_kind(u: float) -> str:
    """The bad content-event kind for a uniform draw ``u`` in [0, 1)."""
    return _CONTENT_KINDS[bisect_right(_CONTENT_CUM, u * _CONTENT_CUM[-1])]


def bad_engagement(kind: str, template: dict[str, Any]) -> bytes:
    """Payload of a malformed engagement of ``kind``, made from a valid engagement ``template``."""
    if kind not in _ENGAGEMENT:
        raise ValueError(f"unknown bad engagement kind {kind!r}; one of {sorted(_ENGAGEMENT)}")
    return _ENGAGEMENT[kind][0](template)


def bad_content(kind: str, template: dict[str, Any]) -> bytes:
    """Payload of a malformed content event of ``kind``, made from a valid content event ``template``."""
    if kind not in _CONTENT:
        raise ValueError(f"unknown bad content kind {kind!r}; one of {sorted(_CONTENT)}")
    return _CONTENT[kind][0](template)
