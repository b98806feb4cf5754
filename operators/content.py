"""Content -> vector -> interest cluster, for a micro-batch at a time.

The embedder and the codebook are resources handed in by a builder (one model per worker process); the cache
makes sure a known text is never embedded twice. Items far from every centroid are flagged as novel content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.embedding_cache import EmbeddingCache


@dataclass(frozen=True, slots=True)
class EmbeddedItem:
    item_id: str
    ts_ms: int
    cluster: int
    distance: float  # 1 - cosine to the nearest centroid
    novel: bool
    vector: np.ndarray
    text: str
    ingest_ms: int = 0  # when its content entered the pipeline (wall clock), for freshness


class ContentEmbedder:
    """``embed(events)`` for any objects with ``item_id``, ``text`` and ``ts_ms``."""

    def __init__(self, embedder: Any, codebook: Any, cache: EmbeddingCache | None = None) -> None:
        if getattr(codebook, "dim", embedder.dim) != embedder.dim:
            raise ValueError(f"codebook dim {codebook.dim} != embedder dim {embedder.dim} ({embedder.name}): "
                             "rebuild the codebook with this model")
        self.embedder = embedder
        self.codebook = codebook
        self.cache = cache if cache is not None else EmbeddingCache()
        self.embedded_texts = 0  # texts that really went through the model

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.embedder.dim), np.float32)
        missing: dict[str, list[int]] = {}
        for i, (t, v) in enumerate(zip(texts, self.cache.get_many(texts), strict=True)):
            if v is None:
                missing.setdefault(t, []).append(i)  # a text twice in one batch is embedded once
            else:
                out[i] = v
        if missing:
            new = self.embedder.encode(list(missing))
            self.embedded_texts += len(missing)
            for rows, v in zip(missing.values(), new, strict=True):
                out[rows] = v
            self.cache.put_many(list(zip(missing, new, strict=True)))
        return out

    def embed(self, events: Sequence[Any]) -> list[EmbeddedItem]:
        if not events:
            return []
        vecs = self.vectors([e.text for e in events])
        clusters, dists = self.codebook.assign(vecs)
        return [
            EmbeddedItem(e.item_id, e.ts_ms, int(c), float(d), bool(self.codebook.is_novel(d)), v, e.text,
                         getattr(e, "ingest_ms", 0))
            for e, c, d, v in zip(events, clusters, dists, vecs, strict=True)
        ]
