"""The event contract of the brief, enforced at the door.

Every message read from a source becomes exactly one of: a valid :class:`Engagement`, a valid
:class:`ContentEvent`, or a :class:`DeadLetter` that carries the original bytes, where they came from and a
machine-readable reason. Nothing raises: a message that cannot be understood is a dead letter, never a crash.

>>> v = Validator()
>>> e = v.validate(RawMessage("engagements", 0, 41, b"u1",
...     b'{"user_id":"u1","item_id":"i9","action":"view","ts":"2026-01-01T00:00:01Z","dwell_ms":12000}'))
>>> (e.user_id, e.item_id, e.ts_ms, e.positive)
('u1', 'i9', 1767225601000, True)
>>> d = v.validate(RawMessage("engagements", 0, 42, None, b'{"user_id":"u1"}'))
>>> (d.reason, d.field, d.offset)
('missing_field', 'item_id', 42)
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson

ACTIONS = frozenset({"view", "like", "share", "comment", "save", "skip", "dislike"})
POSITIVE_ACTIONS = frozenset({"like", "share", "comment", "save"})

# Machine-readable dead-letter reasons. The set is closed: metrics label on it.
REASONS = (
    "oversize_message",  # the whole message is above contract.max_message_bytes
    "empty_message",  # no value at all (null / tombstone / zero bytes)
    "invalid_utf8",  # value is not UTF-8
    "invalid_json",  # value is UTF-8 but not JSON
    "not_an_object",  # valid JSON, but not a JSON object
    "missing_field",  # a required field is absent (or null)
    "wrong_type",  # a field has the wrong JSON type
    "oversize_field",  # a string field is longer than the contract allows
    "invalid_value",  # right type, value outside the contract (unknown action, bad timestamp, ...)
    "unknown_topic",  # the message came from a topic the contract does not describe
    "future_event_time",  # ts is further ahead of the wall clock than contract.max_future_ms
    "processing_error",  # a valid message whose handling failed in a dataflow step (see streams/errors.py)
)

# Epoch-ms timestamps outside [1970, 2200) are certainly wrong units (seconds, microseconds) or garbage.
_TS_MIN_MS = 0
_TS_MAX_MS = 7_258_118_400_000

# A dead letter is one record of the dead-letter topic: it must fit the broker's limit (message.max.bytes,
# 1 MB by default) with room to spare, whatever it carries.
DEAD_LETTER_MAX_BYTES = 900_000
DEAD_LETTER_MAX_KEY_BYTES = 1024


class RawMessage(NamedTuple):
    """One message as read from any source (Kafka, a JSONL file, the embedded generator)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Wall-clock ms at which the message entered the pipeline: the Kafka record timestamp, or the time a file or
    # generator source read it. Freshness (produce -> visible in the index) is measured from here.
    ingest_ms: int = 0
    # The event-time guard's reference for this message: a replay's stream time (the event time of the line before
    # it); None: the wall clock (live sources).
    ref_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Engagement:
    user_id: str
    item_id: str
    action: str
    ts_ms: int
    positive: bool
    dwell_ms: int | None = None
    event_id: str | None = None
    text: str | None = None
    ingest_ms: int = 0  # see RawMessage.ingest_ms
    # The source partition (Kafka; 0 for files): the drift step's event-time watermark is per partition.
    partition: int = 0


@dataclass(frozen=True, slots=True)
class ContentEvent:
    item_id: str
    text: str
    ts_ms: int
    tags: tuple[str, ...] = ()
    ingest_ms: int = 0  # see RawMessage.ingest_ms


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that broke the contract, with everything needed to find, fix and replay it."""

    reason: str
    detail: str
    field: str | None
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    step: str | None = None  # the dataflow step a processing_error happened in

    def to_json(self, now_ms: int | None = None, max_bytes: int = DEAD_LETTER_MAX_BYTES) -> bytes:
        """The dead-letter topic's value: original bytes as text where UTF-8, else base64; never over ``max_bytes``.

        A record that would be larger (a big message of control characters escapes to six times its size) keeps
        the original's first bytes in base64 with ``value_truncated: true``, its full length and SHA-256, so the
        dead letter always fits the topic and still identifies the message. Keys over ``DEAD_LETTER_MAX_KEY_BYTES``
        are cut the same way.

        >>> dl = DeadLetter("oversize_message", "", None, "engagements", 0, 7, b"u1", bytes(200_000))
        >>> rec = orjson.loads(dl.to_json(0, max_bytes=4096))
        >>> (rec["value_truncated"], rec["value_bytes"], len(dl.to_json(0, max_bytes=4096)) <= 4096)
        (True, 200000, True)
        """
        value_text, encoding = _encode_bytes(self.value)
        rec: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail[:1024],
            "field": self.field,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            **_cut("key", self.key, DEAD_LETTER_MAX_KEY_BYTES),
            "value": value_text,
            "value_encoding": encoding,
            "value_truncated": False,
            "value_bytes": None if self.value is None else len(self.value),
            "dead_lettered_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        }
        if self.step is not None:
            rec["step"] = self.step
        out = orjson.dumps(rec)
        if len(out) <= max_bytes:
            return out
        # Too large as text: base64 (4/3 of the bytes, never more) of as many first bytes as fit.
        room = max_bytes - len(orjson.dumps({**rec, **_cut("value", self.value, 0)})) - 8  # for the base64 text
        rec.update(_cut("value", self.value, max(0, room // 4 * 3), as_text=False))
        return orjson.dumps(rec)


def _cut(name: str, b: bytes | None, limit: int, as_text: bool = True) -> dict[str, Any]:
    """``name`` (the original bytes as text where UTF-8 and ``as_text``, else base64) and its encoding; bytes over
    ``limit`` keep their first ``limit`` bytes in base64, with ``{name}_truncated``, ``{name}_bytes`` and
    ``{name}_sha256``."""
    if b is None or (len(b) <= limit and as_text):
        text, encoding = _encode_bytes(b)
        return {name: text, f"{name}_encoding": encoding}
    if len(b) <= limit:
        return {name: base64.b64encode(b).decode("ascii"), f"{name}_encoding": "base64"}
    return {name: base64.b64encode(b[:limit]).decode("ascii"), f"{name}_encoding": "base64",
            f"{name}_truncated": True, f"{name}_bytes": len(b), f"{name}_sha256": hashlib.sha256(b).hexdigest()}


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The dead-letter record's Kafka key: the original key, or its SHA-256 where it is over the key limit."""
    if key is None or len(key) <= DEAD_LETTER_MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def _encode_bytes(b: bytes | None) -> tuple[str | None, str | None]:
    if b is None:
        return None, None
    try:
        return b.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii"), "base64"


def decode_original(dead_letter_json: dict[str, Any]) -> bytes | None:
    """Inverse of the dead-letter encoding: the exact original value bytes (their first bytes only where the
    record says ``value_truncated``).

    >>> dl = DeadLetter("invalid_utf8", "", None, "engagements", 0, 1, None, b"\\xff{")
    >>> decode_original(orjson.loads(dl.to_json(0)))
    b'\\xff{'
    """
    v = dead_letter_json.get("value")
    if v is None:
        return None
    if dead_letter_json.get("value_encoding") == "base64":
        return base64.b64decode(v)
    return v.encode("utf-8")


class _Invalid(Exception):
    """Internal: carries a reason to the single place that builds the DeadLetter."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        self.reason, self.field, self.detail = reason, field, detail


def parse_ts(value: Any, field: str = "ts") -> int:
    """Epoch milliseconds from an int (epoch ms) or an RFC 3339 string.

    >>> parse_ts(1767225600000)
    1767225600000
    >>> parse_ts("2026-01-01T01:00:00+01:00")
    1767225600000
    """
    if isinstance(value, bool):  # bool is an int in Python; in the contract it is not
        raise _Invalid("wrong_type", field, f"{field} must be epoch milliseconds or RFC 3339, got a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        if len(value) > 64:
            raise _Invalid("oversize_field", field, f"{field} is {len(value)} chars; an RFC 3339 time is < 64")
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid("invalid_value", field, f"{field} is not RFC 3339: {value!r}") from None
        if dt.tzinfo is None:
            raise _Invalid("invalid_value", field, f"{field} has no UTC offset (RFC 3339 requires one)")
        ms = int(dt.timestamp() * 1000)
    else:
        raise _Invalid("wrong_type", field, f"{field} must be an int or a string, got {type(value).__name__}")
    if not _TS_MIN_MS <= ms < _TS_MAX_MS:
        raise _Invalid("invalid_value", field, f"{field}={ms} is not epoch milliseconds in 1970..2200")
    return ms


class Validator:
    """Turns :class:`RawMessage` into an event or a :class:`DeadLetter`, per the brief's contract.

    ``engagements_topic`` / ``items_topic`` are the physical topic names (with any prefix) so the validator
    knows which schema applies.
    """

    def __init__(
        self,
        *,
        engagements_topic: str = "engagements",
        items_topic: str = "items",
        positive_dwell_ms: int = 10_000,
        max_text_bytes: int = 8 * 1024,
        max_id_chars: int = 128,
        max_message_bytes: int = 64 * 1024,
        max_future_ms: int | None = 86_400_000,
        clock: Any = time.time,
    ) -> None:
        if positive_dwell_ms < 0:
            raise ValueError(f"positive_dwell_ms must be >= 0, got {positive_dwell_ms}")
        if min(max_text_bytes, max_id_chars, max_message_bytes) < 1:
            raise ValueError("size limits must be >= 1")
        self.engagements_topic = engagements_topic
        self.items_topic = items_topic
        self.positive_dwell_ms = positive_dwell_ms
        self.max_text_bytes = max_text_bytes
        self.max_id_chars = max_id_chars
        self.max_message_bytes = max_message_bytes
        if max_future_ms is not None and max_future_ms < 0:
            raise ValueError(f"max_future_ms must be >= 0 or None, got {max_future_ms}")
        self.max_future_ms = max_future_ms
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Any) -> Validator:
        c = settings.contract
        return cls(
            engagements_topic=settings.kafka.topic("engagements"),
            items_topic=settings.kafka.topic("items"),
            positive_dwell_ms=c.positive_dwell_ms,
            max_text_bytes=c.max_text_bytes,
            max_id_chars=c.max_id_chars,
            max_message_bytes=c.max_message_bytes,
            max_future_ms=c.max_future_ms,
        )

    def validate(self, msg: RawMessage) -> Engagement | ContentEvent | DeadLetter:
        try:
            obj = self._load(msg.value)
            if msg.topic == self.engagements_topic:
                return self._engagement(obj, msg.ingest_ms, msg.partition, msg.ref_ms)
            if msg.topic == self.items_topic:
                return self._content(obj, msg.ingest_ms, msg.ref_ms)
            raise _Invalid("unknown_topic", None, f"no contract for topic {msg.topic!r}")
        except _Invalid as e:
            return DeadLetter(e.reason, e.detail, e.field, msg.topic, msg.partition, msg.offset, msg.key, msg.value)

    def validate_batch(self, msgs: list[RawMessage]) -> list[Engagement | ContentEvent | DeadLetter]:
        """``[validate(m) for m in msgs]``, with the common case inlined: an engagement whose fields are all of
        the contract's types and in its bounds (ts as epoch ms, no text) is checked in one expression and built
        at once; anything else takes :meth:`validate`, which gives the same result for those and the dead letter
        (or the RFC 3339 time, the text) for the rest. The wall clock of the event-time guard is read once per
        batch, not per message."""
        out: list[Engagement | ContentEvent | DeadLetter] = []
        append, validate, loads = out.append, self.validate, orjson.loads
        eng_topic, max_bytes, max_id, dwell_min = (self.engagements_topic, self.max_message_bytes, self.max_id_chars,
                                                   self.positive_dwell_ms)
        future = self.max_future_ms
        wall_ms = int(self.clock() * 1000) if future is not None else 0
        for m in msgs:
            value = m.value
            if m.topic != eng_topic or not value or len(value) > max_bytes:
                append(validate(m))
                continue
            try:
                obj = loads(value)
            except orjson.JSONDecodeError:
                append(validate(m))
                continue
            if type(obj) is not dict:
                append(validate(m))
                continue
            get = obj.get
            user_id, item_id, action, ts, dwell, event_id = (get("user_id"), get("item_id"), get("action"),
                                                             get("ts"), get("dwell_ms"), get("event_id"))
            if not (type(user_id) is str and 0 < len(user_id) <= max_id and type(item_id) is str
                    and 0 < len(item_id) <= max_id and type(action) is str and action in ACTIONS
                    and type(ts) is int and _TS_MIN_MS <= ts < _TS_MAX_MS
                    and (future is None or ts <= (wall_ms if m.ref_ms is None else m.ref_ms) + future)
                    and (dwell is None or (type(dwell) is int and dwell >= 0))
                    and (event_id is None or (type(event_id) is str and 0 < len(event_id) <= max_id))
                    and get("text") is None):
                append(validate(m))
                continue
            positive = action in POSITIVE_ACTIONS or (action == "view" and dwell is not None and dwell >= dwell_min)
            append(Engagement(user_id, item_id, action, ts, positive, dwell, event_id, None, m.ingest_ms,
                              m.partition))
        return out

    # -- pieces -------------------------------------------------------------------------------------------

    def _load(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            raise _Invalid("empty_message", None, "message has no value")
        if len(value) > self.max_message_bytes:
            raise _Invalid(
                "oversize_message", None, f"message is {len(value)} bytes; limit {self.max_message_bytes}"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            # orjson rejects invalid UTF-8 with the same error type: tell the two apart for the reason.
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as ue:
                raise _Invalid("invalid_utf8", None, f"not UTF-8 at byte {ue.start}") from None
            raise _Invalid("invalid_json", None, f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise _Invalid("not_an_object", None, f"JSON value is a {type(obj).__name__}, not an object")
        return obj

    def _id(self, obj: dict[str, Any], field: str) -> str:
        v = obj.get(field)
        if v is None:
            raise _Invalid("missing_field", field, f"required field {field!r} is missing")
        if not isinstance(v, str):
            raise _Invalid("wrong_type", field, f"{field} must be a string, got {type(v).__name__}")
        if not v:
            raise _Invalid("invalid_value", field, f"{field} is empty")
        if len(v) > self.max_id_chars:
            raise _Invalid("oversize_field", field, f"{field} is {len(v)} chars; limit {self.max_id_chars}")
        return v

    def _ts(self, obj: dict[str, Any], ref_ms: int | None = None) -> int:
        v = obj.get("ts")
        if v is None:
            raise _Invalid("missing_field", "ts", "required field 'ts' is missing")
        ms = parse_ts(v)
        # The event-time guard: every decayed count, the index's watermark and the drift hold follow the newest
        # event time they have seen, so one record dated years ahead would age everything else to nothing. Ahead
        # of the wall clock (live), or of the stream's time where a replay of old data says it (``ref_ms``).
        if self.max_future_ms is not None:
            ref, what = (int(self.clock() * 1000), "the wall clock") if ref_ms is None else (ref_ms, "the replay")
            if ms > ref + self.max_future_ms:
                raise _Invalid("future_event_time", "ts", f"ts={ms} is {ms - ref} ms ahead of {what}; limit "
                               f"{self.max_future_ms} (contract.max_future_ms)")
        return ms

    def _text(self, v: Any, field: str = "text") -> str:
        if not isinstance(v, str):
            raise _Invalid("wrong_type", field, f"{field} must be a string, got {type(v).__name__}")
        # Cheap bound first: a str of n chars is at most 4n UTF-8 bytes.
        if len(v) * 4 > self.max_text_bytes:
            n = len(v.encode("utf-8"))
            if n > self.max_text_bytes:
                raise _Invalid("oversize_field", field, f"{field} is {n} bytes; limit {self.max_text_bytes}")
        return v

    def _engagement(self, obj: dict[str, Any], ingest_ms: int = 0, partition: int = 0,
                    ref_ms: int | None = None) -> Engagement:
        user_id = self._id(obj, "user_id")
        item_id = self._id(obj, "item_id")
        action = obj.get("action")
        if action is None:
            raise _Invalid("missing_field", "action", "required field 'action' is missing")
        if not isinstance(action, str):
            raise _Invalid("wrong_type", "action", f"action must be a string, got {type(action).__name__}")
        if action not in ACTIONS:
            raise _Invalid("invalid_value", "action", f"unknown action {action[:32]!r}; one of {sorted(ACTIONS)}")
        ts_ms = self._ts(obj, ref_ms)
        dwell = obj.get("dwell_ms")
        if dwell is not None:
            if isinstance(dwell, bool) or not isinstance(dwell, int):
                raise _Invalid("wrong_type", "dwell_ms", f"dwell_ms must be an int, got {type(dwell).__name__}")
            if dwell < 0:
                raise _Invalid("invalid_value", "dwell_ms", f"dwell_ms must be >= 0, got {dwell}")
        event_id = obj.get("event_id")
        if event_id is not None:
            event_id = self._id(obj, "event_id")
        text = obj.get("text")
        if text is not None:
            text = self._text(text)
        positive = action in POSITIVE_ACTIONS or (
            action == "view" and dwell is not None and dwell >= self.positive_dwell_ms
        )
        return Engagement(user_id, item_id, action, ts_ms, positive, dwell, event_id, text, ingest_ms, partition)

    def _content(self, obj: dict[str, Any], ingest_ms: int = 0, ref_ms: int | None = None) -> ContentEvent:
        item_id = self._id(obj, "item_id")
        text = obj.get("text")
        if text is None:
            raise _Invalid("missing_field", "text", "required field 'text' is missing")
        text = self._text(text)
        ts_ms = self._ts(obj, ref_ms)
        tags = obj.get("tags")
        if tags is None:
            tags_t: tuple[str, ...] = ()
        else:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise _Invalid("wrong_type", "tags", "tags must be a list of strings")
            tags_t = tuple(tags)
        return ContentEvent(item_id, text, ts_ms, tags_t, ingest_ms)
