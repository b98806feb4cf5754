"""A bounded LRU cache of embeddings by content hash: a known text is never embedded twice.

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

import numpy as np


def content_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of the UTF-8 text: same text, same key, in every process."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
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
        if self.max_entries == 0:
            return
        key = content_key(text)
        self._data[key] = vector
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, text: object) -> bool:
        """A peek: counts neither a hit nor a miss and does not refresh the entry's recency."""
        return isinstance(text, str) and content_key(text) in self._data

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
