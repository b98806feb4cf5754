"""Index mutations: what the dataflow tells the live index, one full-state record per key.

A mutation is ``(key, value)``. ``value`` is the *whole current state* of that key, never an increment, so
applying a mutation twice, applying an older one before a newer one was replayed, or reading only the latest per
key (what Kafka log compaction keeps) all end in the same index. ``value=None`` deletes the key.

Keys and their values (JSON objects on the wire; vectors as base64 of little-endian float32):

- ``codebook`` — the interest clusters: ``version``, ``model``, ``centroids`` (k x dim), ``keywords``;
- ``item:{item_id}`` — content: ``cluster``, ``distance``, ``novel``, ``text`` (a snippet), ``ts_ms``, ``vector``;
- ``stats:{item_id}`` — engagement: ``cluster``, ``engagements``, ``positive``, ``first_seen_ms``,
  ``last_seen_ms``;
- ``pair:{c1},{c2}`` — successors of the pair: ``successors`` [{cluster, count, score, trend}] (counts decayed
  to ``ts_ms``), ``support``, ``half_life_ms`` (the effective half-life the counts decay with; null: no decay),
  ``half_life`` (its label, e.g. ``"7d"``, ``"none"``) and ``weights`` {label: weight} (every half-life the pair
  mixes; operators/adaptive_successors.py);
- ``drift:{cluster}`` — the cluster's drift status: ``scores`` {kind: score, 1.0 = at the warning threshold},
  ``alerts`` (open alerts, the brief's alert JSON), ``reference`` {policy, since_ms}.

Every value carries ``ts_ms`` (event time of the newest event it reflects) and ``ingest_ms`` (wall-clock ms at
which that event entered the pipeline), from which the index reports its watermark and freshness.

>>> m = item_mutation("i1", cluster=3, distance=0.25, novel=False, text="hello", ts_ms=5, ingest_ms=7,
...                   vector=np.array([0.6, 0.8], np.float32))
>>> key, value = encode(m)
>>> key
b'item:i1'
>>> back = decode(key, value)
>>> back.key, back.value["cluster"], vector_of(back.value).tolist()
('item:i1', 3, [0.6000000238418579, 0.800000011920929])
>>> decode(b"pair:1,2", None)  # a tombstone
Mutation(key='pair:1,2', value=None)
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from operators.adaptive_successors import half_life_label

__all__ = [
    "KINDS", "SNIPPET_CHARS", "Mutation", "MutationError", "codebook_fields", "codebook_mutation", "decode",
    "decode_vector", "drift_mutation", "encode", "encode_vector", "item_mutation", "kind_of", "pair_key",
    "pair_mutation", "stats_mutation", "vector_of",
]

KINDS = ("codebook", "item", "stats", "pair", "drift")
SNIPPET_CHARS = 280  # item text kept in the index: enough for a prompt line, not the whole document


class Mutation(NamedTuple):
    key: str
    value: dict[str, Any] | None  # None deletes the key


class MutationError(ValueError):
    """A changelog record the index cannot apply (unknown key kind, bad JSON, wrong vector size)."""


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(s: str, dim: int | None = None) -> np.ndarray:
    try:
        v = np.frombuffer(base64.b64decode(s, validate=True), dtype="<f4").astype(np.float32)
    except (ValueError, TypeError) as e:
        raise MutationError(f"vector is not base64 float32: {e}") from None
    if dim is not None and v.shape != (dim,):
        raise MutationError(f"vector has {v.size} values, expected {dim}")
    return v


def vector_of(value: dict[str, Any]) -> np.ndarray:
    return decode_vector(value["vector"])


def pair_key(c1: int, c2: int) -> str:
    return f"pair:{int(c1)},{int(c2)}"


def kind_of(key: str) -> str:
    kind = key.split(":", 1)[0]
    if kind not in KINDS:
        raise MutationError(f"unknown mutation key {key[:80]!r}; kinds: {', '.join(KINDS)}")
    return kind


def item_mutation(item_id: str, *, cluster: int, distance: float, novel: bool, text: str, ts_ms: int,
                  ingest_ms: int, vector: np.ndarray) -> Mutation:
    return Mutation(f"item:{item_id}", {
        "item_id": item_id, "cluster": int(cluster), "distance": round(float(distance), 6), "novel": bool(novel),
        "text": text[:SNIPPET_CHARS], "ts_ms": int(ts_ms), "ingest_ms": int(ingest_ms),
        "vector": encode_vector(vector),
    })


def stats_mutation(item_id: str, *, cluster: int, engagements: int, positive: int, first_seen_ms: int,
                   last_seen_ms: int, ingest_ms: int) -> Mutation:
    return Mutation(f"stats:{item_id}", {
        "item_id": item_id, "cluster": int(cluster), "engagements": int(engagements), "positive": int(positive),
        "first_seen_ms": int(first_seen_ms), "last_seen_ms": int(last_seen_ms), "ts_ms": int(last_seen_ms),
        "ingest_ms": int(ingest_ms),
    })


def pair_mutation(c1: int, c2: int, *, successors: Sequence[dict[str, Any]], support: float, half_life_ms: float,
                  ts_ms: int, ingest_ms: int, weights: Sequence[tuple[str, float]] = ()) -> Mutation:
    """``successors``: every successor of the pair as {cluster, count, score, trend}, counts decayed to ``ts_ms``;
    ``half_life_ms``: the effective half-life (``inf``: no decay, null on the wire); ``weights``: (label,
    weight) of each half-life the pair mixes."""
    h = float(half_life_ms)
    return Mutation(pair_key(c1, c2), {
        "pair": [int(c1), int(c2)], "successors": list(successors), "support": float(support),
        "half_life_ms": None if math.isinf(h) else h, "half_life": half_life_label(h),
        "weights": {label: round(float(w), 4) for label, w in weights}, "ts_ms": int(ts_ms),
        "ingest_ms": int(ingest_ms),
    })


def drift_mutation(cluster: int, *, scores: dict[str, float], alerts: Sequence[dict[str, Any]],
                   reference: dict[str, Any], ts_ms: int, ingest_ms: int = 0) -> Mutation:
    return Mutation(f"drift:{int(cluster)}", {
        "cluster": int(cluster), "scores": {k: round(float(v), 6) for k, v in scores.items()},
        "alerts": list(alerts), "reference": dict(reference), "ts_ms": int(ts_ms), "ingest_ms": int(ingest_ms),
    })


def codebook_mutation(centroids: np.ndarray, keywords: Sequence[Sequence[str]], *, version: str, model: str,
                      sizes: Sequence[int] = (), created_at_ms: int = 0) -> Mutation:
    """The codebook's centroids (k x dim, unit rows) and keywords: a query replica needs nothing but the changelog.
    Use ``codebook_mutation(**codebook_fields(cb))`` for an :class:`operators.clusters.Codebook`."""
    c = np.asarray(centroids, dtype=np.float32)
    if c.ndim != 2 or len(keywords) != len(c):
        raise ValueError(f"need (k, dim) centroids and k keyword lists, got {c.shape} and {len(keywords)}")
    return Mutation("codebook", {
        "version": version, "model": model, "k": int(c.shape[0]), "dim": int(c.shape[1]),
        "centroids": encode_vector(c.reshape(-1)), "keywords": [list(kw) for kw in keywords],
        "sizes": [int(s) for s in sizes], "ts_ms": int(created_at_ms), "ingest_ms": 0,
    })


def codebook_fields(codebook: Any) -> dict[str, Any]:
    return {"centroids": codebook.centroids, "keywords": codebook.keywords, "version": codebook.version,
            "model": codebook.model, "sizes": codebook.sizes, "created_at_ms": codebook.created_at_ms}


def encode(m: Mutation) -> tuple[bytes, bytes | None]:
    """(Kafka key, Kafka value); a delete is a tombstone (value ``None``), which compaction then removes."""
    return m.key.encode("utf-8"), None if m.value is None else orjson.dumps(m.value)


def decode(key: bytes | None, value: bytes | None) -> Mutation:
    if not key:
        raise MutationError("mutation record has no key")
    try:
        k = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MutationError("mutation key is not UTF-8") from None
    kind_of(k)
    if value is None:
        return Mutation(k, None)
    try:
        v = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise MutationError(f"mutation {k[:80]!r} is not JSON: {e}") from None
    if not isinstance(v, dict):
        raise MutationError(f"mutation {k[:80]!r} is not a JSON object")
    return Mutation(k, v)
