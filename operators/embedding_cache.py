"""A bounded LRU cache of embeddings by content hash: a known text is never embedded twice.

Optionally backed by a persistent store (``store``: anything with ``get_many(keys) -> {key: vector}`` and
``put_many([(key, vector)])``, e.g. :class:`index.embedding_store.EmbeddingStore`): the batch methods look in
memory first, then ask the store once for the misses, and write new vectors to both.

>>> import numpy as np
>>> c = EmbeddingCache(max_entries=2)
>>> c.get("a") is None
True
>>> c.put("a", np.ones(2, np.float32)); c.put("b", np.zeros(2, np.float32)); float(c.get("a")[0])
1.0
>>> c.put("c", np.zeros(2, np.float32)); c.get("b") is None   # "b" was least recently used
True
>>> c.hits, c.misses, round(c.hit_rate, 2)
(1, 2, 0.33)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np


def content_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of the UTF-8 text: same text, same key, in every process."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """``hits`` count memory hits, ``store_hits`` the misses the store answered, ``misses`` what neither had."""

    def __init__(self, max_entries: int = 50_000, store: Any = None) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.store = store
        self._data: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
        self.store_hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        key = content_key(text)
        v = self._data.get(key)
        if v is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return v

    def put(self, text: str, vector: np.ndarray) -> None:
        self._remember(content_key(text), vector)

    def _remember(self, key: bytes, vector: np.ndarray) -> None:
        if self.max_entries == 0:
            return
        self._data[key] = vector
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Vectors (or None) for ``texts``: memory, then one store lookup for what memory lacks.

        >>> c = EmbeddingCache(4); c.put("a", np.ones(2, np.float32))
        >>> [v is not None for v in c.get_many(["a", "b"])], (c.hits, c.misses)
        ([True, False], (1, 1))
        """
        keys = [content_key(t) for t in texts]
        out: list[np.ndarray | None] = [None] * len(keys)
        lacking: list[int] = []
        data = self._data
        for i, key in enumerate(keys):
            v = data.get(key)
            if v is None:
                lacking.append(i)
            else:
                data.move_to_end(key)
                out[i] = v
        self.hits += len(keys) - len(lacking)
        if lacking and self.store is not None:
            found = self.store.get_many(list(dict.fromkeys(keys[i] for i in lacking)))
            still = []
            for i in lacking:
                v = found.get(keys[i])
                if v is None:
                    still.append(i)
                else:
                    out[i] = v
                    self._remember(keys[i], v)
            self.store_hits += len(lacking) - len(still)
            lacking = still
        self.misses += len(lacking)
        return out

    def put_many(self, rows: Sequence[tuple[str, np.ndarray]]) -> None:
        """Remember new vectors, in memory and in the store."""
        keyed = [(content_key(t), v) for t, v in rows]
        for key, v in keyed:
            self._remember(key, v)
        if self.store is not None and keyed:
            self.store.put_many(keyed)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, text: object) -> bool:
        """A peek: counts neither a hit nor a miss and does not refresh the entry's recency."""
        return isinstance(text, str) and content_key(text) in self._data

    @property
    def hit_rate(self) -> float:
        """Share of lookups answered without the model (memory or store)."""
        total = self.hits + self.store_hits + self.misses
        return (self.hits + self.store_hits) / total if total else 0.0
