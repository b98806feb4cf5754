"""Property-based tests (hypothesis) over the real dataflow: ``streams.dataflow.build_flow`` with the real validator,
content stage (real all-MiniLM-L6-v2 model on ONNX fp32, a real k-means codebook over a small catalogue), item
join, transition rule, decayed successor counts, drift monitor, cadence controller and index mutations, driven by
Bytewax's ``TestingSource`` and ``run_main``.

Streams are drawn over a fixed catalogue (24 topical texts embedded once per module, plus hostile texts: control
characters, bidi overrides, zalgo, emoji, the empty string, texts of exactly 8 KiB) with deliberate collisions
(a few timestamps shared by everything, the same cluster for many items), duplicates, out-of-order and late
events, bursts, single-user and single-item extremes, unicode and control characters in ids, messages at every
size limit (ids of 128 chars, texts of 8,192 bytes, messages of 65,536 bytes, each one over too), timestamps at
the contract's edges (epoch 0, RFC 3339 at 1970 and 2200, exactly ``max_future_ms`` ahead of the validator's
clock, one ms more) and raw hostile messages (not UTF-8, not JSON, not an object, wrong types, unknown topic).

Properties: 1. the flow never raises (and no step fails on a record: processing errors, which the job
dead-letters and goes on, are collected from ``streams.errors.ERRORS`` and must be none); 2. every message is
accounted for exactly once (valid engagement, valid content or dead letter with the contract's reason; each
engagement clustered, given up by the item join, or still waiting for content); 3. batches of 1, 7 and 1000 give
the same results on input in event-time order; 4. a replay twice is byte-identical; 5. collisions on every sort
key; 6. partitions read in any interleaving give the replay's successor counts and alerts (README, "Offline
replay"). The failures they found are pinned, minimal, as plain tests at the end of the file and as ``@example``s.

The validator's wall clock is fixed (``Validator(clock=...)``) and every message has a fixed ``ingest_ms``, so
a run is a function of its input. Dead letters carry one wall-clock field by design (``dead_lettered_at_ms``):
it is the only field left out of the byte comparisons (and, across batch sizes only, items' float32 distances
are compared within 2e-6: see ``test_item_distance_does_not_depend_on_batch_size``).

Examples per test: ``DRIFTRAG_HYPOTHESIS_EXAMPLES`` (default 15); derandomized, no example database, so CI runs
the same examples every time. ``DRIFTRAG_HYPOTHESIS_SHRINK=1`` shrinks a failing example (minutes).
"""

from __future__ import annotations

import os
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from index.mutations import encode
from operators.cadence import CadenceConfig, CadenceController
from operators.drift import DriftConfig, DriftMonitor
from operators.embedding_cache import EmbeddingCache
from streams import content_stage
from streams.content_stage import ClusteringConfig
from streams.contract import (
    ACTIONS,
    POSITIVE_ACTIONS,
    ContentEvent,
    Engagement,
    RawMessage,
    Validator,
    dead_letter_key,
    decode_original,
)
from streams.dataflow import build_flow
from streams.errors import ERRORS
from streams.index_stage import item_to_mutation, pair_to_mutation
from streams.job import clustered_to_json, event_to_json

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DRIFTRAG_HYPOTHESIS_EXAMPLES", "15"))
# Shrinking a failing stream of a few hundred messages through the real flow takes minutes: opt in with
# DRIFTRAG_HYPOTHESIS_SHRINK=1 (the minimal cases found so far are pinned as plain tests at the end of this file).
SHRINK = os.environ.get("DRIFTRAG_HYPOTHESIS_SHRINK", "") not in ("", "0")
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    print_blob=True,
    phases=list(Phase) if SHRINK else [p for p in Phase if p not in (Phase.shrink, Phase.explain)],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

HOUR = 3_600_000
DAY = 24 * HOUR
NOW_MS = 1_800_000_000_000  # the validator's wall clock: 2027-01-15T08:00:00Z
MAX_FUTURE_MS = 86_400_000  # contract.max_future_ms (default)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TS_MAX_MS = 7_258_118_400_000  # first ms of 2200: the contract's exclusive upper bound
INGEST_MS = 1_767_225_600_123  # every message's ingest time (the wall clock of a source; fixed here)
LIMIT_TEXT = 8 * 1024
LIMIT_ID = 128
LIMIT_MESSAGE = 64 * 1024


def validator() -> Validator:
    return Validator(clock=lambda: NOW_MS / 1000, max_future_ms=MAX_FUTURE_MS)


# ------------------------------------------------------------------------------------------------ the catalogue

TOPICS = {
    "baking": [
        "homemade sourdough bread with a crisp crust and an open crumb",
        "cast iron skillet cornbread and buttermilk biscuits for breakfast",
        "braised short ribs slow cooked in red wine with root vegetables",
        "laminated croissant dough, butter blocks and proofing times",
        "a weeknight pasta with garlic, chili flakes and anchovy breadcrumbs",
        "fermenting a rye starter and baking dense german pumpernickel",
    ],
    "football": [
        "goalkeeper saves a penalty in the champions league final",
        "midfield pressing, offside traps and a late winning goal",
        "the striker scores a hat-trick in the derby at the stadium",
        "transfer window rumours: a record fee for the young winger",
        "tactical analysis of a back three and attacking wing-backs",
        "a red card, a var review and a dramatic stoppage time equaliser",
    ],
    "astronomy": [
        "telescope views of jupiter's moons and the great red spot",
        "nebula astrophotography with a tracking mount and long exposures",
        "a meteor shower tonight: where and when to look up",
        "the james webb space telescope images a distant galaxy cluster",
        "a total solar eclipse, the corona and the diamond ring effect",
        "spotting saturn's rings and the andromeda galaxy from the backyard",
    ],
    "knitting": [
        "knitting a cable sweater with chunky merino yarn",
        "lace shawl patterns, a row counter and blocking wires",
        "hand dyed sock yarn and a toe-up heel flap tutorial",
        "crochet granny squares for a colourful blanket",
        "choosing circular needles for a seamless raglan cardigan",
        "fair isle colourwork mittens and keeping the floats even",
    ],
}
TOPIC_TEXTS = [t for texts in TOPICS.values() for t in texts]
HOSTILE_TEXTS = [
    "",
    " \t\n ",
    "\x00\x01\x02 nul and control \x1b[31mred\x1b[0m \x7f\x85",
    "bidi \u202eevil\u202c and zero width \u200b\u200d joiners \ufeff",
    "z\u0337\u0321\u031ba\u0336l\u0338g\u0335o\u0334 text with combining marks",
    "emoji \U0001f389\U0001f525\U0001f9f6 and astral \U0001d54f\U0001d550",
    "\u2028line\u2029separators and a lone \\ backslash \" quote",
    "\U0001f642" * (LIMIT_TEXT // 4),  # exactly 8,192 bytes in 2,048 characters
    ("knitting yarn " * 600)[:LIMIT_TEXT],  # exactly 8,192 ASCII bytes
    "\u00fc" * (LIMIT_TEXT // 2),  # exactly 8,192 bytes of 2-byte characters
]
assert all(len(t.encode()) <= LIMIT_TEXT for t in HOSTILE_TEXTS)
POOL_TEXTS = TOPIC_TEXTS + HOSTILE_TEXTS
# Texts no example reuses from the pool: the model embeds them inside the flow (tests 1 and 2 only).
NEW_TEXTS = st.text(max_size=40)

ITEMS = [f"it{n:02d}" for n in range(len(TOPIC_TEXTS))]  # it00..it23, default text: TOPIC_TEXTS[n]
HOSTILE_ITEMS = ["\u00edtem\u2603", "\x00", "i" * LIMIT_ID, "\U0001d540" * LIMIT_ID, "it 01", "\n", "it00 "]
GHOSTS = ["ghost-1", "ghost-2"]  # never get content (unless an engagement carries inline text)
ALL_ITEMS = ITEMS + HOSTILE_ITEMS + GHOSTS
USERS = ["u1", "u2", "u3", "u4", "u5", "u6", "\u00fc" * LIMIT_ID, "\x00", "\u7528\u6237\u202e", " ",
         "\U0001d54c" * LIMIT_ID, "u1\n"]
ACTION_LIST = sorted(ACTIONS)

NORMAL_TIMES = [T0 + o for o in (0, 0, 0, 1, 999, HOUR - 1, HOUR, HOUR + 1, 5 * HOUR, DAY, 3 * DAY, 80 * HOUR,
                                 100 * HOUR)]
EDGE_TIMES = [0, NOW_MS + MAX_FUTURE_MS]  # both valid: epoch 0, and exactly max_future_ms ahead of the clock
TIMES = NORMAL_TIMES * 4 + EDGE_TIMES


@dataclass(frozen=True, repr=False)
class Catalogue:
    embedder: Any
    codebook: Any
    vectors: dict[str, np.ndarray]  # text -> vector, embedded once (one at a time: independent of batching)

    def __repr__(self) -> str:  # short: hypothesis prints the arguments of a failing example
        return f"Catalogue({self.embedder.name}, k={self.codebook.k}, {len(self.vectors)} texts)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis's pretty printer
        p.text(repr(self))

    def cache(self, texts: Sequence[str] = ()) -> EmbeddingCache:
        """A fresh warm cache with the pool and ``texts`` (embedded now if new), as `driftrag replay` builds one."""
        new = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        for t in new:
            self.vectors[t] = self.embedder.encode([t])[0]
        cache = EmbeddingCache(50_000)
        cache.put_many(list(self.vectors.items()))
        return cache


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    from operators.clusters import build_codebook
    from operators.embedding import make_embedder, model_id

    embedder = make_embedder("onnx")  # fp32: a text's vector does not depend on its batch (README)
    vectors = {t: embedder.encode([t])[0] for t in POOL_TEXTS}
    topical = np.stack([vectors[t] for t in TOPIC_TEXTS])
    codebook = build_codebook(topical, TOPIC_TEXTS, k=len(TOPICS), model=model_id("default"), seed=0,
                              created_at_ms=T0)
    clusters = codebook.assign(topical)[0].tolist()
    # The collision streams rely on one cluster per topic: make sure the codebook found them.
    per_topic = [set(clusters[i:i + 6]) for i in range(0, len(clusters), 6)]
    assert all(len(s) == 1 for s in per_topic) and len(set().union(*per_topic)) == len(TOPICS), clusters
    return Catalogue(embedder, codebook, vectors)


# ------------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True, repr=False)
class Msg:
    """One message to send, with what the contract says must become of it: "engagement", "content", a dead-letter
    reason, or "?" (raw bytes: dead-lettered or not, but counted once)."""

    topic: str
    key: bytes | None
    value: bytes | None
    expect: str
    ts: int | None = None  # event time (valid messages)
    user: str | None = None
    item: str | None = None
    text: str | None = None  # content text or inline text
    partition: int = 0

    def __repr__(self) -> str:  # one line, what a failing example needs to be read back
        value = self.value if self.value is None or len(self.value) <= 200 else self.value[:200] + b"..."
        return f"Msg({self.topic}/{self.partition}, key={self.key!r:.40}, value={value!r}, expect={self.expect})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis's pretty printer
        p.text(repr(self))


def rfc3339(ms: int, offset_h: int = 0, z: bool = False) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    s = dt.astimezone(timezone(timedelta(hours=offset_h))).isoformat(timespec="milliseconds")
    return s.replace("+00:00", "Z") if z else s


@st.composite
def ts_repr(draw: st.DrawFn, ms: int) -> int | str:
    """The same instant as epoch ms or RFC 3339 (UTC, Z, or another offset)."""
    form = draw(st.sampled_from(["int", "int", "utc", "z", "offset"]))
    if form == "int":
        return ms
    if form == "offset" and ms >= DAY:
        return rfc3339(ms, draw(st.sampled_from([-11, -5, 1, 14])))
    return rfc3339(ms, 0, z=form == "z")


def key_of(s: str, draw: st.DrawFn) -> bytes | None:
    return None if draw(st.integers(0, 9)) == 0 else s.encode("utf-8")


@st.composite
def engagements(draw: st.DrawFn, *, users: Sequence[str] = USERS, items: Sequence[str] = ALL_ITEMS,
                times: Sequence[int] = TIMES, new_texts: bool = False, positive: bool | None = None,
                texts: dict[str, str] | None = None) -> Msg:
    """An engagement; with ``texts``, its inline text (if any) is always its item's text there."""
    user, item, ts = draw(st.sampled_from(users)), draw(st.sampled_from(items)), draw(st.sampled_from(times))
    if positive is None:
        action = draw(st.sampled_from(ACTION_LIST))
    else:
        action = draw(st.sampled_from(sorted(POSITIVE_ACTIONS) if positive else ["skip", "dislike"]))
    obj: dict[str, Any] = {"user_id": user, "item_id": item, "action": action, "ts": draw(ts_repr(ts))}
    dwell = draw(st.sampled_from([None, None, 0, 9_999, 10_000, 10**12]))
    if dwell is not None:
        obj["dwell_ms"] = dwell
    event_id = draw(st.one_of(st.none(), st.text(min_size=1, max_size=12), st.just("e" * LIMIT_ID)))
    if event_id is not None:
        obj["event_id"] = event_id
    text = None
    if draw(st.integers(0, 5)) == 0:  # inline item text: the item may be unknown
        if texts is not None:
            text = texts[item]
        else:
            text = draw(st.one_of(st.sampled_from(POOL_TEXTS), NEW_TEXTS) if new_texts else st.sampled_from(POOL_TEXTS))
        obj["text"] = text
    if draw(st.integers(0, 7)) == 0:  # unknown extra fields are ignored
        obj["extra"] = {"nested": [1, None, "x", {"ts": -1}], "ts_ms": "soon"}
    return Msg("engagements", key_of(user, draw), orjson.dumps(obj), "engagement", ts, user, item, text)


@st.composite
def contents(draw: st.DrawFn, *, items: Sequence[str] = ALL_ITEMS, times: Sequence[int] = TIMES,
             new_texts: bool = False) -> Msg:
    item, ts = draw(st.sampled_from(items)), draw(st.sampled_from(times))
    if item in ITEMS and draw(st.booleans()):
        text = TOPIC_TEXTS[ITEMS.index(item)]  # the item's own text, mostly
    elif new_texts:
        text = draw(st.one_of(st.sampled_from(POOL_TEXTS), NEW_TEXTS))
    else:
        text = draw(st.sampled_from(POOL_TEXTS))
    obj: dict[str, Any] = {"item_id": item, "text": text, "ts": draw(ts_repr(ts))}
    tags = draw(st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=3)))
    if tags is not None:
        obj["tags"] = tags
    return Msg("items", key_of(item, draw), orjson.dumps(obj), "content", ts, None, item, text)


def _eng(**kw: Any) -> dict[str, Any]:
    return {"user_id": "u1", "item_id": "it00", "action": "like", "ts": T0, **kw}


def _item(**kw: Any) -> dict[str, Any]:
    return {"item_id": "it00", "text": TOPIC_TEXTS[0], "ts": T0, **kw}


def _drop(d: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != name}


def padded(obj: dict[str, Any], size: int) -> bytes:
    """``obj`` as JSON of exactly ``size`` bytes (an unknown field pads it)."""
    base = orjson.dumps({**obj, "pad": ""})
    out = orjson.dumps({**obj, "pad": "x" * (size - len(base))})
    assert len(out) == size
    return out


def crafted() -> list[tuple[str, bytes | None, str]]:
    """(topic, value, expected outcome) at and just over every edge of the contract."""
    E, I = "engagements", "items"  # noqa: E741, N806
    rows: list[tuple[str, bytes | None, str]] = [
        # size limits: at the limit (valid) and one over
        (E, padded(_eng(), LIMIT_MESSAGE), "engagement"),
        (E, padded(_eng(), LIMIT_MESSAGE + 1), "oversize_message"),
        (I, padded(_item(), LIMIT_MESSAGE), "content"),
        (I, padded(_item(), LIMIT_MESSAGE + 1), "oversize_message"),
        (E, orjson.dumps(_eng(user_id="\U0001d54c" * LIMIT_ID)), "engagement"),
        (E, orjson.dumps(_eng(user_id="u" * (LIMIT_ID + 1))), "oversize_field"),
        (E, orjson.dumps(_eng(item_id="\u00e9" * (LIMIT_ID + 1))), "oversize_field"),
        (E, orjson.dumps(_eng(event_id="e" * (LIMIT_ID + 1))), "oversize_field"),
        (I, orjson.dumps(_item(item_id="\U0001d540" * (LIMIT_ID + 1))), "oversize_field"),
        (I, orjson.dumps(_item(text="\U0001f642" * (LIMIT_TEXT // 4 + 1))), "oversize_field"),
        (I, orjson.dumps(_item(text="a" * (LIMIT_TEXT + 1))), "oversize_field"),
        (I, orjson.dumps(_item(text="\u00fc" * (LIMIT_TEXT // 2) + "a")), "oversize_field"),
        (E, orjson.dumps(_eng(text="a" * (LIMIT_TEXT + 1))), "oversize_field"),
        (I, orjson.dumps(_item(text=HOSTILE_TEXTS[7])), "content"),
        # timestamps at the edges
        (E, orjson.dumps(_eng(ts=0)), "engagement"),
        (E, orjson.dumps(_eng(ts="1970-01-01T00:00:00Z")), "engagement"),
        (E, orjson.dumps(_eng(ts=-1)), "invalid_value"),
        (E, orjson.dumps(_eng(ts="1969-12-31T23:59:59.999Z")), "invalid_value"),
        (E, orjson.dumps(_eng(ts=NOW_MS + MAX_FUTURE_MS)), "engagement"),
        (E, orjson.dumps(_eng(ts=NOW_MS + MAX_FUTURE_MS + 1)), "future_event_time"),
        (I, orjson.dumps(_item(ts=NOW_MS + MAX_FUTURE_MS + 1)), "future_event_time"),
        (E, orjson.dumps(_eng(ts=TS_MAX_MS - 1)), "future_event_time"),
        (E, orjson.dumps(_eng(ts=TS_MAX_MS)), "invalid_value"),
        (E, orjson.dumps(_eng(ts="2199-12-31T23:59:59.999Z")), "future_event_time"),
        (E, orjson.dumps(_eng(ts="2200-01-01T00:00:00Z")), "invalid_value"),
        (E, orjson.dumps(_eng(ts="2026-01-01T00:00:00")), "invalid_value"),  # no offset
        (E, orjson.dumps(_eng(ts="x" * 65)), "oversize_field"),
        (E, orjson.dumps(_eng(ts=True)), "wrong_type"),
        (E, orjson.dumps(_eng(ts=1.5)), "wrong_type"),
        (E, b'{"user_id":"u1","item_id":"it00","action":"like","ts":99999999999999999999999}', "wrong_type"),
        # fields
        *((E, orjson.dumps(_drop(_eng(), f)), "missing_field") for f in ("user_id", "item_id", "action", "ts")),
        *((I, orjson.dumps(_drop(_item(), f)), "missing_field") for f in ("item_id", "text", "ts")),
        (E, orjson.dumps(_eng(user_id=None)), "missing_field"),
        (E, orjson.dumps(_eng(user_id=7)), "wrong_type"),
        (E, orjson.dumps(_eng(user_id="")), "invalid_value"),
        (E, orjson.dumps(_eng(action="purchase")), "invalid_value"),
        (E, orjson.dumps(_eng(action=["like"])), "wrong_type"),
        (E, orjson.dumps(_eng(dwell_ms=-1)), "invalid_value"),
        (E, orjson.dumps(_eng(dwell_ms=True)), "wrong_type"),
        (E, orjson.dumps(_eng(dwell_ms=1.0)), "wrong_type"),
        (E, orjson.dumps(_eng(text=5)), "wrong_type"),
        (E, orjson.dumps(_eng(event_id="")), "invalid_value"),
        (I, orjson.dumps(_item(tags="a,b")), "wrong_type"),
        (I, orjson.dumps(_item(tags=["a", 1])), "wrong_type"),
        # not an event at all
        (E, b"", "empty_message"),
        (E, None, "empty_message"),
        (I, None, "empty_message"),
        (E, b"\xff\xfe{}", "invalid_utf8"),
        (E, b'{"user_id":"\xc3\x28"}', "invalid_utf8"),
        (E, b"{", "invalid_json"),
        (E, b'{"user_id":"\\ud800","item_id":"it00","action":"like","ts":0}', "invalid_json"),
        (E, b"1e999", "invalid_json"),
        (E, b"null", "not_an_object"),
        (E, b"[]", "not_an_object"),
        (I, b'"it00"', "not_an_object"),
        (E, b"\x00" * 300_000, "oversize_message"),  # a dead letter of control bytes: escaped x6 if kept as text
        ("bogus", orjson.dumps(_eng()), "unknown_topic"),
    ]
    return rows


CRAFTED = crafted()


@st.composite
def hostile(draw: st.DrawFn) -> Msg:
    kind = draw(st.sampled_from(["crafted", "crafted", "crafted", "bytes", "json"]))
    topic = draw(st.sampled_from(["engagements", "items"]))
    key = draw(st.one_of(st.none(), st.binary(max_size=8), st.just(b"k" * 2000)))
    if kind == "crafted":
        topic, value, expect = draw(st.sampled_from(CRAFTED))
        return Msg(topic, key, value, expect)
    if kind == "bytes":
        return Msg(topic, key, draw(st.binary(max_size=40)), "?")
    scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    value = draw(st.recursive(scalars,
                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                              max_leaves=6))
    return Msg(topic, key, orjson.dumps(value), "?")


@st.composite
def chunks(draw: st.DrawFn, *, new_texts: bool, with_hostile: bool = True) -> list[Msg]:
    """One piece of a stream: a message, a burst (one message many times, or one moment for many users), or a
    single user's / single item's run."""
    kinds = ["one"] * 8 + ["dup", "fan", "user_run", "item_run"]
    kind = draw(st.sampled_from(kinds))
    if kind == "one":
        parts = [engagements(new_texts=new_texts)] * 3 + [contents(new_texts=new_texts)]
        if with_hostile:
            parts.append(hostile())
        return [draw(st.one_of(*parts))]
    if kind == "dup":
        m = draw(st.one_of(engagements(new_texts=new_texts), contents(new_texts=new_texts)))
        return [m] * draw(st.integers(2, 30))
    if kind == "fan":  # many users, one item, one moment
        item, ts = draw(st.sampled_from(ALL_ITEMS)), draw(st.sampled_from(TIMES))
        n = draw(st.integers(2, 30))
        return [draw(engagements(users=[u], items=[item], times=[ts])) for u in (USERS * 3)[:n]]
    if kind == "user_run":  # one user, many items
        user = draw(st.sampled_from(USERS))
        return draw(st.lists(engagements(users=[user], new_texts=new_texts), min_size=2, max_size=25))
    item = draw(st.sampled_from(ALL_ITEMS))  # one item, many users and times, content and engagements
    return draw(st.lists(st.one_of(engagements(items=[item]), contents(items=[item])), min_size=2, max_size=25))


@st.composite
def streams(draw: st.DrawFn, *, new_texts: bool = False, with_hostile: bool = True) -> list[Msg]:
    pieces = draw(st.lists(chunks(new_texts=new_texts, with_hostile=with_hostile), min_size=3, max_size=20))
    return [m for c in pieces for m in c]


def event_time_order(msgs: list[Msg]) -> list[Msg]:
    """As `driftrag replay` reads files: event-time order, content first on ties, each topic's own order kept on
    ties; a message without an event time keeps its place after the one before it."""
    keyed, last = [], (-1, 0)
    for i, m in enumerate(msgs):
        if m.ts is not None and m.expect in ("engagement", "content"):
            last = (m.ts, 0 if m.topic == "items" else 1)
        keyed.append((last, i, m))
    return [m for _, _, m in sorted(keyed, key=lambda x: (x[0], x[1]))]


def to_raw(msgs: Sequence[Msg]) -> list[RawMessage]:
    """Kafka-like positions: each (topic, partition) numbers its own messages."""
    nxt: Counter[tuple[str, int]] = Counter()
    out = []
    for m in msgs:
        tp = (m.topic, m.partition)
        out.append(RawMessage(m.topic, m.partition, nxt[tp], m.key, m.value, INGEST_MS))
        nxt[tp] += 1
    return out


# ------------------------------------------------------------------------------------------------ running the flow


def sensitive_drift() -> DriftConfig:
    """Support floors and thresholds low enough for a few hundred events to be scored and alerted."""
    d = DriftConfig()
    return DriftConfig(min_support={"transition": 2, "engagement": 2, "content": 1, "volume": 2}, min_total=4,
                       min_reference_items=1, warning={k: v / 50 for k, v in d.warning.items()},
                       critical={k: v / 25 for k, v in d.critical.items()}, cooldown_ms=0)


def sensitive_cadence() -> CadenceConfig:
    return CadenceConfig(min_support=1.0, min_change=0.01, refresh_cost=0.0,
                         finetune_cost=0.5, min_finetune_interval_ms=0)


DRIFT: dict[str, tuple[Any, Any]] = {"default": (DriftConfig, CadenceConfig),
                                     "sensitive": (sensitive_drift, sensitive_cadence),
                                     "off": (None, None)}  # no drift step (`driftrag run --no-drift`)
DRIFT_ON = ["default", "sensitive"]
# drift on without the cadence controller: the successor step scores every triple itself (see the test that uses it)
NO_CADENCE = {"default": "default-no-cadence", "sensitive": "sensitive-no-cadence"}
DRIFT.update({NO_CADENCE[k]: (DRIFT[k][0], None) for k in DRIFT_ON})


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@dataclass
class Outcome:
    dead: list = field(default_factory=list)
    valid: list = field(default_factory=list)
    clustered: list = field(default_factory=list)
    items: list = field(default_factory=list)
    pairs: list = field(default_factory=list)
    mutations: list = field(default_factory=list)
    alerts: list = field(default_factory=list)
    cadence: list = field(default_factory=list)
    unresolved: int = 0  # given up by the item join (bounds or age): driftrag_engagements_unresolved_total
    waiting: int = 0  # still waiting for content at the end (OrderedItemJoin.waiting)
    late: int = 0  # positive engagements the transition rule left out: driftrag_transitions_late_total
    # Records a step raised on: the job dead-letters them as processing_error (streams/errors.py, ERRORS.write)
    processing: list = field(default_factory=list)


def run_flow(cat: Catalogue, raw: list[RawMessage], *, batch_size: int = 1000, drift: str = "default",
             warm: Sequence[str] = (), max_pending: int = 1000, max_wait_ms: int = 600_000, max_batch: int = 256,
             partitions: int = 1) -> Outcome:
    """The job's flow (streams/job.py wiring, every sink a TestingSink) over ``raw``; returns what each sink got."""
    o = Outcome()
    joins: list[Any] = []

    class RecordingJoin(content_stage.UserShardJoin):  # the real join; only remembered, to read `waiting` at the end
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            joins.append(self)

    make_monitor, make_cadence = DRIFT[drift]
    monitor_config = make_monitor() if make_monitor else None
    cadence_config = make_cadence() if make_cadence else None
    clustering = ClusteringConfig(embedder_factory=lambda: cat.embedder, codebook=cat.codebook, max_batch=max_batch,
                                  max_latency_s=0.02, max_pending=max_pending, max_wait_ms=max_wait_ms,
                                  cache=cat.cache(warm))
    unresolved0 = metric("driftrag_engagements_unresolved_total")
    late0 = metric("driftrag_transitions_late_total")
    # Processing errors go to the process's writer (the job sets it to the dead-letter topic or file): collect them,
    # with a budget no stream here can exhaust, and put the defaults back after.
    ERRORS.configure(10**9, o.processing.append)
    with mock.patch.object(content_stage, "UserShardJoin", RecordingJoin), restore_errors():
        flow = build_flow(
            TestingSource(raw, batch_size=batch_size), validator(),
            dead_letter_sink=TestingSink(o.dead), valid_sink=TestingSink(o.valid),
            events_sink=TestingSink(o.clustered), clustering=clustering, items_sink=TestingSink(o.items),
            pairs_sink=TestingSink(o.pairs), mutations_sink=TestingSink(o.mutations),
            drift_monitor=(lambda: DriftMonitor(monitor_config)) if monitor_config else None,
            alerts_sink=TestingSink(o.alerts), cadence_sink=TestingSink(o.cadence),
            cadence=(lambda: CadenceController(cadence_config)) if cadence_config else None,
            engagement_partitions=partitions, trend_window_ms=DAY,
        )
        run_main(flow)
    o.unresolved = int(metric("driftrag_engagements_unresolved_total") - unresolved0)
    o.late = int(metric("driftrag_transitions_late_total") - late0)
    # One user shard (ClusteringConfig.shards=1): the live join is the last one built (after a failure GuardedLogic
    # rebuilds it from its snapshot and redo log).
    o.waiting = joins[-1].join.waiting if joins else 0
    return o


@contextmanager
def restore_errors() -> Iterator[None]:
    try:
        yield
    finally:
        ERRORS.configure(100, None)  # streams.errors.ERRORS as the module makes it


def no_processing_errors(o: Outcome) -> None:
    """No step raised on any record: a processing_error dead letter is a step that failed (the job goes on)."""
    if o.processing:
        pytest.fail(f"{len(o.processing)} processing errors, first: {o.processing[0].detail} "
                    f"(record {o.processing[0].value!r:.300})")


def dead_letter_bytes(kv: Any) -> tuple[bytes | None, bytes]:
    """A dead letter as sent, less its one wall-clock field (dead_lettered_at_ms)."""
    doc = orjson.loads(kv.value)
    doc.pop("dead_lettered_at_ms")
    return kv.key, orjson.dumps(doc)


def encoded(o: Outcome) -> dict[str, list]:
    """Every sink's records as the bytes the job would write, in sink order."""
    return {
        "dead": [dead_letter_bytes(kv) for kv in o.dead],
        "valid": [event_to_json(e) for e in o.valid],
        "clustered": [clustered_to_json(ce) for ce in o.clustered],
        "items": [encode(item_to_mutation(i)) for i in o.items],
        "pairs": [encode(pair_to_mutation(s)) for s in o.pairs],
        "mutations": [encode(m) for m in o.mutations],
        "alerts": [a.to_kafka() for a in o.alerts],
        "cadence": [c.to_kafka() for c in o.cadence],
        "counts": [o.unresolved, o.waiting, o.late],
        "processing": [dl.to_json(now_ms=0) for dl in o.processing],
    }


def _split_distance(key: bytes, value: bytes | None) -> tuple[tuple[bytes, bytes | None], float | None]:
    """An item mutation without its ``distance`` (returned apart: see :func:`same`)."""
    if not key.startswith(b"item:") or value is None:
        return (key, value), None
    doc = orjson.loads(value)
    d = doc.pop("distance")
    return (key, orjson.dumps(doc)), d


def canonical(o: Outcome) -> dict[str, Any]:
    """What must not depend on how the input was batched: each user's clustered engagements in order, each item's
    assignments in order, each pair's final state (a batch sends one state per pair it touched, its last),
    the final index state per key, the alerts, the cadence events, the dead letters, the join's counts. Items'
    distances to their centroid are kept apart ("distances"), compared within float32 rounding by :func:`same`:
    that they differ at all is pinned by ``test_item_distance_does_not_depend_on_batch_size``."""
    e = encoded(o)
    by_user: dict[str, list] = defaultdict(list)
    for ce, b in zip(o.clustered, e["clustered"], strict=True):
        by_user[ce.engagement.user_id].append(b)
    by_item: dict[str, list] = defaultdict(list)
    distances: dict[str, list] = defaultdict(list)
    for i, (k, v) in zip(o.items, e["items"], strict=True):
        kv, d = _split_distance(k, v)
        by_item[i.item_id].append(kv)
        distances[i.item_id].append(d)
    index = {}
    for k, v in e["mutations"]:  # the last mutation per key: the index's final state
        (k, v), d = _split_distance(k, v)
        index[k] = v
        if d is not None:
            distances["index:" + k.decode()] = [d]
    final_pair = {s.pair: b for s, b in zip(o.pairs, e["pairs"], strict=True)}
    return {
        "dead": sorted(e["dead"], key=repr),
        "valid": e["valid"],
        "clustered": dict(by_user),
        "items": dict(by_item),
        "pairs": final_pair,
        "index": index,
        "alerts": sorted(e["alerts"]),
        "cadence": sorted(e["cadence"]),
        "counts": e["counts"],
        "processing": sorted(e["processing"]),
        "distances": dict(distances),
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """None when two canonical outcomes agree (distances within 2e-6: float32 rounding of the centroid product),
    else the first difference."""
    x, y = dict(a), dict(b)
    dx, dy = x.pop("distances"), y.pop("distances")
    if x != y:
        return diff(x, y)
    if dx.keys() != dy.keys() or any(len(dx[k]) != len(dy[k]) or not np.allclose(dx[k], dy[k], rtol=0, atol=2e-6)
                                     for k in dx):
        return diff({"distances": dx}, {"distances": dy})
    return None


def diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The first difference of two canonical / encoded outcomes, for the failure message."""
    for k in a:
        if a[k] != b[k]:
            x, y = a[k], b[k]
            if isinstance(x, dict):
                keys = sorted(set(x) | set(y), key=repr)
                first = next(kk for kk in keys if x.get(kk) != y.get(kk))
                return f"{k}[{first!r}]:\n  {x.get(first)!r}\n  {y.get(first)!r}"
            if isinstance(x, list):
                i = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
                return (f"{k} (lengths {len(x)}, {len(y)}) at {i}:\n  {x[i] if i < len(x) else None!r}\n  "
                        f"{y[i] if i < len(y) else None!r}")
            return f"{k}: {x!r} != {y!r}"
    return "no difference"


# ------------------------------------------------------------------------- minimal streams of the failures found
# (each pinned as a plain test at the end of this file, and as an @example of the property that found it)

BREAD, FOOTBALL = TOPIC_TEXTS[0], TOPIC_TEXTS[6]


def like(user: str, item: str, ts: int, text: str | None = None) -> Msg:
    obj: dict[str, Any] = {"user_id": user, "item_id": item, "action": "like", "ts": ts}
    if text is not None:
        obj["text"] = text
    return Msg("engagements", user.encode(), orjson.dumps(obj), "engagement", ts, user, item, text)


def publish(item: str, ts: int, text: str) -> Msg:
    return Msg("items", item.encode(), orjson.dumps({"item_id": item, "text": text, "ts": ts}), "content", ts, None,
               item, text)


def cluster_of(cat: Catalogue, text: str) -> int:
    return int(cat.codebook.assign(cat.vectors[text][None, :])[0][0])


def republished() -> list[Msg]:
    """An item published, liked, then re-published with a text of another cluster."""
    return [publish("it00", T0, BREAD), like("u1", "it00", T0 + 1), publish("it00", T0 + 2, FOOTBALL)]


def conflicting_inline_texts(msgs: list[Msg]) -> bool:
    """Whether one item gets two different inline texts at one event time."""
    seen: dict[tuple[str | None, int | None], str] = {}
    for m in msgs:
        if m.expect == "engagement" and m.text is not None and seen.setdefault((m.item, m.ts), m.text) != m.text:
            return True
    return False


def inline_texts() -> list[Msg]:
    """Two likes of an unknown item, each carrying the item's text, the second in another cluster."""
    return [like("u1", "it00", T0, text=BREAD), like("u2", "it00", T0 + 1, text=FOOTBALL)]


def topic_items(topic: int) -> list[str]:
    return ITEMS[topic * 6:(topic + 1) * 6]


def drift_moves(users: int) -> list[Msg]:
    """``users`` users move (a, b) -> c at T0 and (a, b) -> d 25 h later (every user's successor of the pair
    changes); one more user's likes at T0 + 96 h."""
    a, b, c, d = (topic_items(t)[0] for t in range(4))
    out = [publish(i, T0, TOPIC_TEXTS[ITEMS.index(i)]) for i in (a, b, c, d)]
    for ts, path in ((T0, (a, b, c)), (T0 + 25 * HOUR, (a, b, d))):
        out += [like(f"u{k}", i, ts) for k in range(users) for i in path]
    return out + [like("closer", i, T0 + 96 * HOUR) for i in (a, b, c)]


def lapsing_score() -> list[Msg]:
    """Two users move a -> b -> c at T0 and again at T0 + 1 h; one more user at T0 + 73 h."""
    a, b, c = (topic_items(t)[0] for t in range(3))
    msgs = [publish(i, T0, TOPIC_TEXTS[ITEMS.index(i)]) for i in (a, b, c)]
    msgs += [like(u, i, ts) for ts in (T0, T0 + HOUR) for u in ("u1", "u2") for i in (a, b, c)]
    return msgs + [like("closer", i, T0 + 73 * HOUR) for i in (a, b, c)]


# ------------------------------------------------------------------------------------------------ properties


@PROPERTY
@given(msgs=streams(new_texts=True), batch_size=st.sampled_from([1, 3, 1000]), drift=st.sampled_from(DRIFT_ON),
       max_pending=st.sampled_from([0, 1, 2, 1000]), max_wait_ms=st.sampled_from([0, 600_000]),
       max_batch=st.sampled_from([1, 4, 256]))
def test_flow_never_raises(catalogue: Catalogue, msgs: list[Msg], batch_size: int, drift: str, max_pending: int,
                           max_wait_ms: int, max_batch: int) -> None:
    """1. Any stream of valid and hostile messages, in any order, with any batch size and bounds: the flow runs to
    its end (nothing raises), and every sink's record encodes as the job would write it."""
    o = run_flow(catalogue, to_raw(msgs), batch_size=batch_size, drift=drift, max_pending=max_pending,
                 max_wait_ms=max_wait_ms, max_batch=max_batch)
    no_processing_errors(o)
    encoded(o)  # every record is encodable: nothing the sinks got would make the job's writers raise
    assert all(len(kv.value) <= 900_000 for kv in o.dead)  # every dead letter fits the topic


@PROPERTY
@given(msgs=streams(new_texts=True), batch_size=st.sampled_from([1, 7, 1000]),
       max_pending=st.sampled_from([0, 1, 2, 1000]), max_wait_ms=st.sampled_from([0, 600_000]))
def test_every_message_is_accounted_for_exactly_once(catalogue: Catalogue, msgs: list[Msg], batch_size: int,
                                                     max_pending: int, max_wait_ms: int) -> None:
    """2. Each input message is a valid engagement, a valid content event or a dead letter: exactly one, the one
    the contract says (reason included). Each valid engagement is clustered, given up by the item join
    (``driftrag_engagements_unresolved_total``) or still waiting for its content at the end
    (``OrderedItemJoin.waiting``): exactly one. Each content event and each engagement with inline text is
    assigned a cluster once. Each successor update is one triple of the transition rule."""
    raw = to_raw(msgs)
    o = run_flow(catalogue, raw, batch_size=batch_size, max_pending=max_pending, max_wait_ms=max_wait_ms)

    no_processing_errors(o)  # else a record would be both valid and dead-lettered (as processing_error)
    n_eng = sum(type(e) is Engagement for e in o.valid)
    n_content = sum(type(e) is ContentEvent for e in o.valid)
    assert len(o.valid) == n_eng + n_content
    assert len(raw) == n_eng + n_content + len(o.dead), (len(raw), n_eng, n_content, len(o.dead))

    # Dead letters: each names its own message, once, with the reason the contract gives.
    docs = [orjson.loads(kv.value) for kv in o.dead]
    positions = [(d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) for d in docs]
    assert len(set(positions)) == len(positions)
    got = dict(zip(positions, (d["reason"] for d in docs), strict=True))
    by_position = dict(zip(positions, zip(o.dead, docs, strict=True), strict=True))
    for m, r in zip(msgs, raw, strict=True):
        pos = (r.topic, r.partition, r.offset)
        if m.expect in ("engagement", "content"):
            assert pos not in got, f"a valid {m.expect} was dead-lettered as {got[pos]}: {m.value!r:.300}"
        elif m.expect != "?":
            assert got.get(pos) == m.expect, f"expected {m.expect}, got {got.get(pos)}: {m.value!r:.300}"
        if pos in by_position:  # the dead letter carries the original: its bytes (or their first ones), its key
            kv, doc = by_position[pos]
            original = decode_original(doc)
            if doc["value_truncated"]:
                assert r.value is not None and r.value.startswith(original) and doc["value_bytes"] == len(r.value)
            else:
                assert original == r.value
            assert kv.key == dead_letter_key(r.key)
    assert n_eng == sum(m.expect == "engagement" for m in msgs) + sum(
        m.expect == "?" and (r.topic, r.partition, r.offset) not in got and r.topic == "engagements"
        for m, r in zip(msgs, raw, strict=True))

    # Engagements: clustered, given up, or waiting; never two of these, never none.
    assert o.unresolved >= 0 and o.waiting >= 0
    assert n_eng == len(o.clustered) + o.unresolved + o.waiting, (n_eng, len(o.clustered), o.unresolved, o.waiting)
    assert Counter(ce.engagement for ce in o.clustered) <= Counter(e for e in o.valid if type(e) is Engagement)
    if max_pending >= 1000 and max_wait_ms >= 600_000:
        # Nothing is given up below the bounds: only engagements whose item never gets content wait at the end.
        never = {e.item_id for e in o.valid if type(e) is Engagement} - {
            e.item_id for e in o.valid if type(e) is ContentEvent or e.text is not None}
        assert o.unresolved == 0
        assert (o.waiting > 0) == any(type(e) is Engagement and e.item_id in never for e in o.valid)

    # Content: every content event and every inline text is assigned once.
    n_inline = sum(1 for e in o.valid if type(e) is Engagement and e.text is not None)
    assert len(o.items) == n_content + n_inline
    assert all(0 <= i.cluster < catalogue.codebook.k for i in o.items)

    # Transitions: each successor update is one triple of the rule; a positive engagement feeds the rule or is late.
    positive = [ce for ce in o.clustered if ce.engagement.positive]
    assert o.late <= len(positive)
    assert len(o.pairs) <= len(positive) - o.late
    assert all(s.pair[0] != s.pair[1] and all(c not in s.pair for c, _ in s.counts) for s in o.pairs)


@PROPERTY
@given(msgs=streams(), drift=st.sampled_from(DRIFT_ON))
@example(msgs=republished(), drift="default")
@example(msgs=inline_texts(), drift="default")
def test_results_do_not_depend_on_batch_sizes(catalogue: Catalogue, msgs: list[Msg], drift: str) -> None:
    """3. The same messages (in event-time order, as `driftrag replay` reads them) delivered in batches of 1, 7 and
    1000 give the same dead letters, clustered engagements per user, item assignments, successor updates and final
    successor state per pair, final index state, alerts and cadence events. Streams where one item gets different
    inline texts at one instant are left to the known-failure test below."""
    assume(not conflicting_inline_texts(msgs))
    msgs = event_time_order(msgs)
    raw = to_raw(msgs)
    runs = {b: canonical(run_flow(catalogue, raw, batch_size=b, drift=drift)) for b in (1000, 7, 1)}
    for b in (7, 1):
        if (d := same(runs[b], runs[1000])) is not None:
            pytest.fail(f"batch {b} vs 1000: {d}")


@PROPERTY
@given(msgs=streams(), batch_size=st.sampled_from([1, 7, 1000]), drift=st.sampled_from(DRIFT_ON))
def test_successor_estimates_are_the_same_with_the_cadence_step(
        catalogue: Catalogue, msgs: list[Msg], batch_size: int, drift: str) -> None:
    """The cadence controller reads C_p in the successor step (its checks' flushes go there with the triples and
    export records to the cadence step): the successor updates (every pair state sent, not only the last) are
    byte-identical to a run without the controller."""
    check_cadence_leaves_successors(catalogue, msgs, batch_size, drift)


@pytest.mark.parametrize("drift", DRIFT_ON)
def test_successor_estimates_are_the_same_with_the_cadence_step_on_a_stream_of_complete_hours(
        catalogue: Catalogue, drift: str) -> None:
    """The property above on a stream whose triples the hold hands back (hours complete), so checks run."""
    check_cadence_leaves_successors(catalogue, fixed_collision_stream(), 7, drift)


def check_cadence_leaves_successors(catalogue: Catalogue, msgs: list[Msg], batch_size: int, drift: str) -> None:
    raw = to_raw(event_time_order(msgs))
    with_cadence = run_flow(catalogue, raw, batch_size=batch_size, drift=drift)
    alone = run_flow(catalogue, raw, batch_size=batch_size, drift=NO_CADENCE[drift])
    no_processing_errors(with_cadence)
    assert encoded(with_cadence)["pairs"] == encoded(alone)["pairs"]


@PROPERTY
@given(msgs=streams(new_texts=True), batch_size=st.sampled_from([1, 7, 1000]), drift=st.sampled_from(DRIFT_ON))
def test_replaying_twice_is_byte_identical(catalogue: Catalogue, msgs: list[Msg], batch_size: int, drift: str
                                           ) -> None:
    """4. Any stream (out of order, late, duplicated, hostile), replayed twice as `driftrag replay` does (every text
    embedded up front): every sink gets the same records, byte for byte, in the same order."""
    raw = to_raw(msgs)
    warm = [m.text for m in msgs if m.text is not None]
    one = run_flow(catalogue, raw, batch_size=batch_size, drift=drift, warm=warm)
    no_processing_errors(one)
    first = encoded(one)
    second = encoded(run_flow(catalogue, raw, batch_size=batch_size, drift=drift, warm=warm))
    if first != second:
        pytest.fail(diff(first, second))


# -------------------------------------------------------------------------------------- 5. collisions


@st.composite
def collision_streams(draw: st.DrawFn) -> list[Msg]:
    """Many items, engagements and triples at one instant and in one cluster: the catalogue of a topic published
    at T, users moving topic a -> b -> c at T (one triple (a, b, c) each, all equal), the same again later with
    another successor, and a closing engagement past the hour so the drift step's hold releases every bucket."""
    t = draw(st.sampled_from([T0, T0 + HOUR - 1, T0 + HOUR]))
    later = t + draw(st.sampled_from([0, 1, HOUR, 48 * HOUR, 80 * HOUR]))
    a, b, c, d = draw(st.permutations(range(len(TOPICS))))
    users = draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=8, unique=True))
    reps = draw(st.integers(1, 3))
    out: list[Msg] = []

    def catalogue_at(ts: int, topics: list[int]) -> None:
        for tp in topics:
            for item in topic_items(tp):
                text = draw(st.sampled_from([TOPIC_TEXTS[ITEMS.index(item)], TOPICS[list(TOPICS)[tp]][0]]))
                out.append(Msg("items", item.encode(), orjson.dumps({"item_id": item, "text": text, "ts": ts}),
                               "content", ts, None, item, text))

    def moves(ts: int, path: list[int]) -> None:
        for _ in range(reps):
            for u in users:
                for tp in path:
                    item = draw(st.sampled_from(topic_items(tp)))
                    action = draw(st.sampled_from(sorted(POSITIVE_ACTIONS)))
                    obj = {"user_id": u, "item_id": item, "action": action, "ts": draw(ts_repr(ts))}
                    out.append(Msg("engagements", u.encode(), orjson.dumps(obj), "engagement", ts, u, item))

    catalogue_at(t, [a, b, c, d])
    moves(t, [a, b, c])
    if draw(st.booleans()):
        catalogue_at(later, [c])  # the same items re-published at the second instant
    moves(later, [a, b, d] if draw(st.booleans()) else [a, b, c])
    closing = later + draw(st.sampled_from([HOUR, 5 * HOUR, 3 * DAY]))
    for tp in (a, b, c, d):
        obj = {"user_id": "closer", "item_id": topic_items(tp)[0], "action": "like", "ts": closing}
        out.append(Msg("engagements", b"closer", orjson.dumps(obj), "engagement", closing, "closer", obj["item_id"]))
    if draw(st.booleans()):  # duplicates of the whole burst
        out += out[: draw(st.integers(1, len(out)))]
    if draw(st.booleans()):
        out = event_time_order(out)
    return out


def check_collisions(cat: Catalogue, msgs: list[Msg], drift: str) -> None:
    raw = to_raw(msgs)
    big = run_flow(cat, raw, batch_size=1000, drift=drift)
    no_processing_errors(big)
    n_eng = sum(m.expect == "engagement" for m in msgs)
    assert len(big.dead) == 0 and len(big.valid) == len(msgs)
    assert len(big.clustered) + big.unresolved + big.waiting == n_eng and big.waiting == 0
    assert big.pairs, "the collision stream must mine triples"
    again = run_flow(cat, raw, batch_size=1000, drift=drift)
    if encoded(again) != encoded(big):
        pytest.fail("run twice: " + diff(encoded(again), encoded(big)))
    if msgs == event_time_order(msgs):  # batch independence is claimed for event-time ordered input (replay)
        one, whole = canonical(run_flow(cat, raw, batch_size=1, drift=drift)), canonical(big)
        if (d := same(one, whole)) is not None:
            pytest.fail("batch 1 vs 1000: " + d)


@PROPERTY
@given(msgs=collision_streams(), drift=st.sampled_from(["sensitive", "default"]))
@example(msgs=drift_moves(40), drift="default")
@example(msgs=lapsing_score(), drift="sensitive")
def test_collisions_on_every_sort_key(catalogue: Catalogue, msgs: list[Msg], drift: str) -> None:
    """5. Equal times across engagements, items and triples, and equal clusters, everywhere (the drift step once
    crashed sorting such an hour: "'<' not supported between instances of 'int' and 'str'"): the flow runs, every
    engagement is clustered, a second run is byte-identical, and (input in event-time order) batches of 1 and 1000
    agree."""
    check_collisions(catalogue, msgs, drift)


@pytest.mark.parametrize("drift", ["sensitive", "default"])
def test_collisions_every_topic_every_user_one_instant(catalogue: Catalogue, drift: str) -> None:
    """5, pinned: every topic's catalogue and every user's moves at one instant, twice, then again 80 h later."""
    check_collisions(catalogue, fixed_collision_stream(), drift)


def fixed_collision_stream() -> list[Msg]:
    """Every topic's catalogue at T0, every user a -> b -> c -> d at T0, twice; then again 80 h later; a closer."""
    out: list[Msg] = []
    for ts in (T0, T0 + 80 * HOUR):
        for item, text in zip(ITEMS, TOPIC_TEXTS, strict=True):
            out.append(Msg("items", None, orjson.dumps({"item_id": item, "text": text, "ts": ts}), "content", ts,
                           None, item, text))
        for _ in range(2):
            for u in USERS:
                for tp in (range(4) if ts == T0 else (0, 1, 3, 2)):
                    item = topic_items(tp)[0]
                    obj = {"user_id": u, "item_id": item, "action": "like", "ts": ts}
                    out.append(Msg("engagements", None, orjson.dumps(obj), "engagement", ts, u, item))
    end = T0 + 84 * HOUR
    for tp in range(4):
        obj = {"user_id": "closer", "item_id": topic_items(tp)[0], "action": "share", "ts": end}
        out.append(Msg("engagements", None, orjson.dumps(obj), "engagement", end, "closer", obj["item_id"]))
    return out


# ----------------------------------------------------------------------- 6. partitions interleaved (Kafka's order)


def user_partition(user: str, n: int = 3) -> int:
    return zlib.crc32(user.encode()) % n


@st.composite
def partitioned_streams(draw: st.DrawFn) -> tuple[list[Msg], list[Msg], int]:
    """(the stream in event-time order on one partition, the same engagements on three partitions keyed by user and
    read in some interleaving, the number of engagement partitions used): what `driftrag replay` reads and what a
    Kafka consumer of a three-partition topic gets, the catalogue produced first in both, every partition ending
    with one more like two days after the rest."""
    items = draw(st.lists(st.sampled_from(ITEMS + HOSTILE_ITEMS), min_size=2, max_size=12, unique=True))
    texts = {i: TOPIC_TEXTS[ITEMS.index(i)] if i in ITEMS else draw(st.sampled_from(POOL_TEXTS)) for i in items}
    times = NORMAL_TIMES + [T0 + 30 * HOUR, T0 + 96 * HOUR]
    catalogue = [Msg("items", i.encode(), orjson.dumps({"item_id": i, "text": texts[i], "ts": ts}), "content", ts,
                     None, i, texts[i]) for i in items for ts in [draw(st.sampled_from(times))]]
    eng = draw(st.lists(engagements(items=items, times=times, texts=texts), min_size=1, max_size=120))
    fan = draw(st.lists(st.tuples(st.sampled_from(times), st.sampled_from(items)), max_size=4))
    eng += [draw(engagements(users=[u], items=[i], times=[ts], positive=True, texts=texts)) for ts, i in fan
            for u in USERS]
    eng = event_time_order(eng)
    n = 3
    # Partitions numbered 0.. in the order they are used: the drift step's hold waits for partitions 0..used-1
    # (an expected partition that never delivers holds it back for 30 s of wall clock, by design).
    ids = {p: i for i, p in enumerate(dict.fromkeys(user_partition(m.user, n) for m in eng))}
    queues = {i: [replace(m, partition=i) for m in eng if ids[user_partition(m.user, n)] == i] for i in range(n)}
    # A live topic does not end: every partition moves on. Each gets a last like two days after everything else, so
    # the drift step's hold (which waits for the slowest partition, or 30 s of wall clock) releases the same hours
    # in both runs.
    end = max(m.ts for m in eng) + 2 * DAY
    for i in range(len(ids)):
        closer = replace(draw(engagements(users=[f"closer-{i}"], items=items, times=[end], positive=True,
                                          texts=texts)), partition=i)
        queues[i].append(closer)
        eng.append(replace(closer, partition=0))
    pos = dict.fromkeys(range(n), 0)
    interleaved: list[Msg] = []
    while any(pos[p] < len(queues[p]) for p in range(n)):  # a consumer takes a few from one partition at a time
        p = draw(st.sampled_from([p for p in range(n) if pos[p] < len(queues[p])]))
        k = draw(st.integers(1, 8))
        interleaved += queues[p][pos[p]:pos[p] + k]
        pos[p] += k
    return catalogue + eng, catalogue + interleaved, len(ids)


def successor_counts(o: Outcome) -> dict[tuple[int, int], tuple[float, dict[int, float]]]:
    """Each pair's final (support, {successor: decayed count})."""
    return {s.pair: (s.support, dict(s.counts)) for s in o.pairs}


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@PROPERTY
@given(streams=partitioned_streams(), drift=st.sampled_from(DRIFT_ON))
def test_partitions_read_in_any_interleaving_give_the_replays_results(
        catalogue: Catalogue, streams: tuple[list[Msg], list[Msg], int], drift: str) -> None:
    """6. README, "Offline replay": a Kafka run over topics with three partitions keyed by user (each user's events in
    order, the catalogue produced first) gets the same successor counts and the same alerts as the replay of the same
    events in event-time order. Here: the same engagements on up to three partitions, read in any interleaving."""
    replay, kafka, partitions = streams
    a = run_flow(catalogue, to_raw(replay), drift=drift)
    b = run_flow(catalogue, to_raw(kafka), drift=drift, partitions=partitions)
    no_processing_errors(a)
    no_processing_errors(b)
    if canonical(a)["clustered"] != canonical(b)["clustered"]:  # each user's engagements, in order
        pytest.fail(diff({"clustered": canonical(a)["clustered"]}, {"clustered": canonical(b)["clustered"]}))
    sa, sb = successor_counts(a), successor_counts(b)
    assert sa.keys() == sb.keys()
    for pair, (support, counts) in sa.items():
        support_b, counts_b = sb[pair]
        assert close(support, support_b) and counts.keys() == counts_b.keys(), (pair, sa[pair], sb[pair])
        assert all(close(v, counts_b[c]) for c, v in counts.items()), (pair, sa[pair], sb[pair])

    def alerts(o: Outcome) -> list[tuple]:
        return sorted((x.alert_id, x.cluster, x.kind, x.severity, x.window_start_ms, x.window_end_ms, round(x.score, 4))
                      for x in o.alerts)

    assert alerts(a) == alerts(b)


# --------------------------------------------------------------- failures the properties found, pinned minimal


def test_an_engagement_gets_its_items_cluster_as_of_its_arrival_whatever_the_batch_size(catalogue: Catalogue
                                                                                       ) -> None:
    """Found by property 3. An item published, liked, then re-published with a text of another cluster, in
    event-time order: the like must be joined with the item's cluster as it was (the first text's). With batches of
    1 or 2 it is; with one batch of all three the like gets the later text's cluster: within a Bytewax batch the
    item join (streams/content_stage.py, cluster_events: UserShardJoin behind op.merge("items_and_engagements"))
    gets the batch's (item, cluster) updates before its engagements (observed), so an engagement is joined with
    content that arrived after it."""
    msgs = republished()
    got = {b: [ce.cluster for ce in run_flow(catalogue, to_raw(msgs), batch_size=b).clustered] for b in (1, 2, 1000)}
    bread = cluster_of(catalogue, BREAD)
    assert got == {1: [bread], 2: [bread], 1000: [bread]}, f"bread is cluster {bread}: {got}"


def test_an_engagement_with_inline_text_is_clustered_by_its_own_text_whatever_the_batch_size(catalogue: Catalogue
                                                                                             ) -> None:
    """Found by property 3. Two users like the same unknown item, each message carrying the item's text (the README:
    an engagement whose item has no content yet uses "the event's own text"), the second text in another cluster.
    With batches of 1 each like gets its own text's cluster; in one batch both get the second text's (same cause as
    above: the batch's content reaches the join before its engagements)."""
    msgs = inline_texts()
    got = {b: [(ce.engagement.user_id, ce.cluster) for ce in run_flow(catalogue, to_raw(msgs), batch_size=b).clustered]
           for b in (1, 2, 1000)}
    want = [("u1", cluster_of(catalogue, BREAD)), ("u2", cluster_of(catalogue, FOOTBALL))]
    assert got == {1: want, 2: want, 1000: want}, got


def test_item_distance_does_not_depend_on_batch_size(catalogue: Catalogue) -> None:
    """Found by property 3 (and 5). The same two content events, each text's vector taken from the warm cache (so
    identical bytes): batched alone, it13's distance to its centroid is 0.26191747, batched with another item
    0.26191753, and the index's item payload (rounded to 6 places) reads 0.261917 vs 0.261918. Codebook.assign
    (operators/clusters.py) takes one float32 product of the whole batch with the centroids, and BLAS sums a
    1-row product (gemv) in another order than a multi-row one (gemm); a borderline item's cluster or novel flag can
    flip the same way."""
    msgs = [publish("it13", T0, TOPIC_TEXTS[13]), publish("it00", T0, BREAD)]
    got = {b: [encode(item_to_mutation(i)) for i in run_flow(catalogue, to_raw(msgs), batch_size=b).items]
           for b in (1, 2)}
    assert got[1] == got[2], "\n".join(f"{orjson.loads(v)['distance']} vs {orjson.loads(w)['distance']}"
                                       for (_, v), (_, w) in zip(got[1], got[2], strict=True))


def test_drift_alerts_do_not_depend_on_batch_size(catalogue: Catalogue) -> None:
    """Found by property 5 (collisions). With the default DriftConfig, 40 users whose successor of one pair changes
    from c to d (Jensen-Shannon 1 bit): batches of 1 or 7 raise a critical transition alert at T0 + 72 h, one batch
    of everything raises none. The drift step evaluates where its hold releases hours: per batch, the ordering
    step (streams/drift_stage.py; then `_feed`) feeds the complete buckets and then calls monitor.advance(boundary), and
    DriftMonitor.advance (operators/drift.py) evaluates a jump over many buckets once, at the latest boundary. Small
    batches stop at T0 + 72 h (the hold waits at most a day for triples) where the current window still holds the
    new successors; one batch jumps to T0 + 96 h, where the window is empty. The README: "the alerts depend on the
    events alone, not on how they were batched"."""
    raw = to_raw(drift_moves(40))
    got = {b: sorted(a.to_kafka() for a in run_flow(catalogue, raw, batch_size=b).alerts) for b in (1, 7, 1000)}
    assert got[1], "the planted drift must alert"
    assert got[7] == got[1] and got[1000] == got[1], {b: [orjson.loads(v)["severity"] for _, v in x]
                                                       for b, x in got.items()}


def test_drift_status_does_not_depend_on_batch_size(catalogue: Catalogue) -> None:
    """Found by property 5 (collisions): no alert, but the live index's drift status differs. Two users move
    a -> b -> c at T0 and again at T0 + 1 h; one more user at T0 + 73 h (sensitive drift config): batches of 1
    evaluate at T0 + 72 h too and leave `drift:{c}` = {"transition": 0.0} in the index; one batch never scores c and
    sends no drift:{c}. (Once a cluster has no score, no mutation clears its last status either.)"""
    raw = to_raw(lapsing_score())
    got = {bs: {k: v for k, v in map(encode, run_flow(catalogue, raw, batch_size=bs, drift="sensitive").mutations)
                if k.startswith(b"drift:")} for bs in (1, 1000)}
    assert got[1] == got[1000], diff(got, {1: got[1000], 1000: got[1]})


@pytest.mark.xfail(strict=True, reason="known: an engagement with an inline text joins its item's latest cluster, not "
                   "its own text's, when the item is already known; with several texts for one item at one instant "
                   "the result depends on the batch size (the join would have to wait on the text, not the item)")
def test_engagements_with_different_inline_texts_at_one_instant_get_their_own_clusters(catalogue: Catalogue) -> None:
    msgs = [like("u1", "it00", T0, text=BREAD), like("u2", "it00", T0, text=FOOTBALL),
            like("u3", "it00", T0 + 1, text=BREAD)]
    assert conflicting_inline_texts(msgs)
    runs = {b: canonical(run_flow(catalogue, to_raw(msgs), batch_size=b)) for b in (1000, 1)}
    if (d := same(runs[1], runs[1000])) is not None:
        pytest.fail(f"batch 1 vs 1000: {d}")
