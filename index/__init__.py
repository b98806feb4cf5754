"""State owned in one place: the codebook store, the live vector index (and, next, payloads, snapshots and the
query service)."""

from index.codebooks import CodebookStore
from index.vectors import Hits, SlotVectorIndex, VectorArrays

__all__ = ["CodebookStore", "Hits", "SlotVectorIndex", "VectorArrays"]
