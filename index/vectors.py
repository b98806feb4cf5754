"""The inner layer of the live index: string ids -> unit vectors, searched by inner product (cosine).

``SlotVectorIndex`` keeps vectors in a float32 *slot matrix* (one row per slot, grown by doubling) and a
dict id -> slot. Updates never cost O(N):

- an upsert writes the vector into a free slot (O(d)) and, for a known id, tombstones its old slot;
- a delete tombstones the id's slot (O(1));
- a tombstoned slot is reused once no reader can still see it (see *Consistency*);
- ``compact()`` (also run automatically, see ``should_compact``) repacks the live rows densely.

Exact search is one matrix product over the used slots with tombstones masked to ``-inf``, then top-k
(numpy BLAS on CPU, torch on a CUDA GPU). Approximate search is not implemented: ``approx_threshold`` raises
``NotImplementedError`` rather than quietly searching exactly.

Consistency: writers call ``apply(upserts, deletes)``, which applies the whole batch and then publishes it as
the next ``version`` by swapping one reference to an immutable view (live mask, storage, slot -> id). A reader
(``search_latest``) takes the latest published view and reads only that view, so a query batch sees exactly one
version, all of a batch or none of it. Rows of the view's live slots are never written while a reader may hold
the view: a write goes to a slot that is dead in every view still being read (a fresh slot, or a tombstone whose
last reader has finished: readers register the version they hold), and growth and compaction write new storage
and leave the old one to the readers that hold it. Mutations take one writer lock; reads do not wait for writes.

>>> rng = np.random.default_rng(0)
>>> vecs = rng.normal(size=(3, 4)).astype(np.float32)
>>> vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
>>> idx = SlotVectorIndex(4, capacity=2, backend="cpu")
>>> idx.apply({"a": vecs[0], "b": vecs[1], "c": vecs[2]})
1
>>> idx.apply(deletes=["b"])
2
>>> hits = idx.search_latest(vecs[1], k=2)
>>> hits.ids, hits.version, len(idx), idx.capacity
([['a', 'c']], 2, 2, 4)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BACKENDS", "Hits", "SlotVectorIndex", "VectorArrays", "choose_backend", "should_compact"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "gpu")
GPU_INSTALL = "pip install torch  (a CUDA build; see https://pytorch.org/get-started/locally/)"


class Hits(NamedTuple):
    """Search result: ``ids[i]`` and ``scores[i]`` are query i's neighbours, best first, read at ``version``.

    Each row has ``min(k, live items)`` entries, so ``scores`` has shape ``(queries, min(k, live items))``."""

    ids: list[list[str]]
    scores: np.ndarray
    version: int


class VectorArrays(NamedTuple):
    """A snapshot of one published version: ``vectors[i]`` is the vector of ``ids[i]``."""

    ids: list[str]
    vectors: np.ndarray
    version: int


def choose_backend(requested: str, gpu_count: int) -> str:
    """The backend to build for ``requested`` when ``gpu_count`` CUDA GPUs are visible.

    Cases:
    - ``"cpu"`` -> ``"cpu"``;
    - ``"gpu"`` -> ``"gpu"`` when ``gpu_count > 0``, else ``RuntimeError`` naming the install command;
    - ``"auto"`` -> ``"gpu"`` when ``gpu_count > 0``, else ``"cpu"``;
    - anything else -> ``ValueError`` listing the valid values.

    >>> choose_backend("auto", 0), choose_backend("auto", 2), choose_backend("cpu", 1)
    ('cpu', 'gpu', 'cpu')
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown vector index backend {requested!r}; valid values: {', '.join(BACKENDS)}")
    if requested == "cpu":
        return "cpu"
    if gpu_count > 0:
        return "gpu"
    if requested == "gpu":
        raise RuntimeError("backend='gpu' needs a CUDA GPU visible to torch and none was found; "
                           f"on a GPU host install {GPU_INSTALL}, or pass backend='cpu'")
    return "cpu"


def should_compact(n_live: int, n_dead: int, *, min_dead: int = 1024, max_dead_fraction: float = 0.25) -> bool:
    """Whether to repack the slot matrix, given live and dead (tombstoned or free) slots below the high-water mark.

    Cases:
    - fewer than ``min_dead`` dead slots -> ``False`` (small indexes never pay for a repack);
    - dead slots more than ``max_dead_fraction`` of all used slots -> ``True``;
    - otherwise -> ``False``.

    >>> should_compact(10, 5000), should_compact(100_000, 5000), should_compact(1000, 2000)
    (True, False, True)
    """
    used = n_live + n_dead
    return n_dead >= min_dead and n_dead > max_dead_fraction * used


@lru_cache(maxsize=1)
def _gpu_count() -> int:
    """CUDA GPUs visible to torch (0 when torch is not installed)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True, slots=True)
class _View:
    """One published version. Nothing here is written again while any reader can hold it (see module doc)."""

    version: int
    matrix: Any  # (capacity, dim) storage: np.ndarray on CPU, torch.Tensor on GPU
    slot_ids: list  # slot -> id; entries of this view's live slots do not change while the view is read
    live: np.ndarray  # (used slots,) bool, read-only
    n_live: int


class _CpuStore:
    """Slot storage in host memory; exact top-k with numpy (BLAS)."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.matrix = np.zeros((capacity, dim), dtype=np.float32)

    def grow(self, capacity: int, used: int) -> None:
        new = np.zeros((capacity, self.matrix.shape[1]), dtype=np.float32)
        new[:used] = self.matrix[:used]
        self.matrix = new  # readers of older views keep the old array

    def replace(self, rows: np.ndarray, capacity: int) -> None:
        new = np.zeros((capacity, self.matrix.shape[1]), dtype=np.float32)
        new[: len(rows)] = rows
        self.matrix = new

    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        self.matrix[slots] = rows

    def gather(self, matrix: np.ndarray, slots: np.ndarray) -> np.ndarray:
        return matrix[slots]

    def topk(self, view: _View, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        used = len(view.live)
        scores = queries @ view.matrix[:used].T
        if view.n_live < used:
            scores[:, ~view.live] = -np.inf
        if k < used:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(used), scores.shape)
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


class _TorchGpuStore:
    """Slot storage in GPU memory; exact top-k with torch. Calls are serialised by one lock."""

    def __init__(self, dim: int, capacity: int) -> None:
        import torch

        self._torch = torch
        self._device = torch.device("cuda")
        self._lock = threading.Lock()
        self.matrix = torch.zeros((capacity, dim), dtype=torch.float32, device=self._device)

    def grow(self, capacity: int, used: int) -> None:
        with self._lock:
            new = self._torch.zeros((capacity, self.matrix.shape[1]), dtype=self.matrix.dtype, device=self._device)
            new[:used] = self.matrix[:used]
            self.matrix = new

    def replace(self, rows: np.ndarray, capacity: int) -> None:
        with self._lock:
            new = self._torch.zeros((capacity, self.matrix.shape[1]), dtype=self.matrix.dtype, device=self._device)
            new[: len(rows)] = self._torch.from_numpy(rows).to(self._device)
            self.matrix = new

    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        with self._lock:
            index = self._torch.from_numpy(slots).to(self._device)
            self.matrix[index] = self._torch.from_numpy(rows).to(self._device)

    def gather(self, matrix: Any, slots: np.ndarray) -> np.ndarray:
        with self._lock:
            return matrix[self._torch.from_numpy(slots).to(self._device)].cpu().numpy()

    def topk(self, view: _View, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        used = len(view.live)
        with self._lock:
            scores = torch.from_numpy(queries).to(self._device) @ view.matrix[:used].T
            if view.n_live < used:
                scores[:, torch.from_numpy(~view.live).to(self._device)] = -math.inf
            values, slots = torch.topk(scores, k, dim=1, largest=True, sorted=True)
            return values.cpu().numpy(), slots.cpu().numpy()


def _check_id(item_id: Any) -> str:
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"ids must be non-empty strings, got {item_id!r}")
    return item_id


class SlotVectorIndex:
    """Exact inner-product index over unit vectors with O(d) upserts and O(1) deletes by string id.

    ``dim``: vector dimension. ``capacity``: initial slots (doubles as needed; also the floor after compaction).
    ``backend``: ``"cpu"``, ``"gpu"`` or ``"auto"`` (GPU when torch sees one; see ``choose_backend``).
    ``max_dead_fraction`` / ``min_dead_to_compact``: automatic compaction (see ``should_compact``).
    ``approx_threshold``: approximate search for large indexes, not implemented (must be ``None``).

    Vectors are expected L2-normalised (scores are then cosines); they are stored as given, as float32.
    """

    def __init__(self, dim: int, *, capacity: int = 1024, backend: str = "auto", max_dead_fraction: float = 0.25,
                 min_dead_to_compact: int = 1024, approx_threshold: int | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not 0.0 < max_dead_fraction < 1.0:
            raise ValueError(f"max_dead_fraction must be in (0, 1), got {max_dead_fraction!r}")
        if min_dead_to_compact < 1:
            raise ValueError(f"min_dead_to_compact must be >= 1, got {min_dead_to_compact!r}")
        if approx_threshold is not None:
            raise NotImplementedError("approximate search (approx_threshold) is not implemented: SlotVectorIndex "
                                      "searches exactly; pass approx_threshold=None")
        self.dim = dim
        self.initial_capacity = capacity
        self.backend = choose_backend(backend, 0 if backend == "cpu" else _gpu_count())
        self.max_dead_fraction = max_dead_fraction
        self.min_dead_to_compact = min_dead_to_compact
        self.approx_threshold = approx_threshold
        self._reset()

    def _reset(self) -> None:
        capacity = self.initial_capacity
        self._write_lock = threading.Lock()  # one writer at a time
        self._readers_lock = threading.Lock()  # guards taking the view + _active together
        self._active: dict[int, int] = {}  # version -> readers holding it now
        self._store = _TorchGpuStore(self.dim, capacity) if self.backend == "gpu" else _CpuStore(self.dim, capacity)
        self._capacity = capacity
        self._used = 0  # high-water mark: slots [0, _used) have been handed out
        self._live = np.zeros(capacity, dtype=bool)  # the writer's working mask
        self._n_live = 0
        self._slot_of: dict[str, int] = {}
        self._slot_ids: list[str] = []
        self._free: list[int] = []  # dead in every view still readable: safe to write
        self._pending: deque[tuple[int, int]] = deque()  # (version that freed it, slot), oldest first
        self._view = self._make_view(0)

    # -- reads ---------------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The latest published version (0 before the first batch)."""
        return self._view.version

    @property
    def capacity(self) -> int:
        """Slots allocated now."""
        return self._capacity

    def __len__(self) -> int:
        """Live ids in the latest published version."""
        return self._view.n_live

    def _acquire(self) -> _View:
        with self._readers_lock:
            view = self._view
            self._active[view.version] = self._active.get(view.version, 0) + 1
        return view

    def _release(self, view: _View) -> None:
        with self._readers_lock:
            left = self._active[view.version] - 1
            if left:
                self._active[view.version] = left
            else:
                del self._active[view.version]

    def search_latest(self, queries: Any, k: int) -> Hits:
        """Top-``k`` ids by inner product for each query, read from the latest version published when the call
        starts. The whole query batch reads that one version (returned as ``Hits.version``): all of each
        ``apply`` batch or none of it; writes published during the search are not seen.

        ``queries``: one vector ``(dim,)`` or a batch ``(m, dim)``. Rows have ``min(k, len(self))`` hits."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape ({self.dim},) or (m, {self.dim}), got {np.shape(queries)}")
        q = np.ascontiguousarray(q)
        view = self._acquire()
        try:
            k = min(int(k), view.n_live)
            if k == 0:
                return Hits([[] for _ in range(len(q))], np.empty((len(q), 0), dtype=np.float32), view.version)
            scores, slots = self._store.topk(view, q, k)
            slot_ids = view.slot_ids
            ids = [[slot_ids[s] for s in row] for row in slots.tolist()]
        finally:
            self._release(view)
        return Hits(ids, scores.astype(np.float32, copy=False), view.version)

    def to_arrays(self) -> VectorArrays:
        """The latest published version as arrays (live ids in slot order), e.g. to persist with source offsets."""
        view = self._acquire()
        try:
            slots = np.flatnonzero(view.live)
            ids = [view.slot_ids[s] for s in slots.tolist()]
            vectors = np.array(self._store.gather(view.matrix, slots), dtype=np.float32)
        finally:
            self._release(view)
        return VectorArrays(ids, vectors, view.version)

    # -- writes --------------------------------------------------------------------------------------------
    def apply(self, upserts: Mapping[str, Any] | None = None, deletes: Iterable[str] = ()) -> int:
        """Upsert and delete a batch, then publish it as one new version and return that version.

        Deleting an unknown id is a no-op; an id may not be both upserted and deleted in one batch. A batch that
        changes nothing publishes nothing and returns the current version. Cost: O(d) per upsert, O(1) per
        delete, plus one O(capacity) mask copy per batch (bytes, not vectors)."""
        upserts = dict(upserts or {})
        deletes = [_check_id(i) for i in deletes]
        ids = [_check_id(i) for i in upserts]
        both = set(ids).intersection(deletes)
        if both:
            raise ValueError(f"ids both upserted and deleted in one batch: {sorted(both)[:5]}")
        rows = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, (item_id, vec) in enumerate(upserts.items()):
            v = np.asarray(vec, dtype=np.float32)
            if v.shape != (self.dim,):
                raise ValueError(f"vector for id {item_id!r} has shape {v.shape}, expected ({self.dim},)")
            rows[i] = v
        if not np.isfinite(rows).all():
            raise ValueError("vectors must be finite (no NaN or inf)")
        with self._write_lock:
            if not ids and not any(i in self._slot_of for i in deletes):
                return self._view.version
            version = self._view.version + 1
            self._reclaim()
            freed = []
            for item_id in deletes:
                slot = self._slot_of.pop(item_id, None)
                if slot is not None:
                    freed.append(slot)
            slots = np.empty(len(ids), dtype=np.int64)
            for i, item_id in enumerate(ids):
                old = self._slot_of.get(item_id)
                if old is not None:
                    freed.append(old)  # the new vector goes to another slot: readers of the old view keep the old
                slot = self._take_slot()
                slots[i] = slot
                self._slot_of[item_id] = slot
                if slot == len(self._slot_ids):
                    self._slot_ids.append(item_id)
                else:
                    self._slot_ids[slot] = item_id  # a reclaimed slot: dead in every view still being read
            if len(ids):
                self._store.write(slots, rows)
            self._live[freed] = False
            self._live[slots] = True
            self._n_live = len(self._slot_of)
            self._pending.extend((version, s) for s in freed)
            self._view = self._make_view(version)
            if should_compact(self._n_live, self._used - self._n_live, min_dead=self.min_dead_to_compact,
                              max_dead_fraction=self.max_dead_fraction):
                self._compact_locked()
            return version

    def compact(self) -> None:
        """Repack live rows densely into new storage (same version, same results); readers are not blocked."""
        with self._write_lock:
            self._compact_locked()

    @classmethod
    def from_arrays(cls, ids: list[str], vectors: Any, version: int, **kwargs: Any) -> SlotVectorIndex:
        """An index holding ``vectors[i]`` under ``ids[i]``, published at ``version`` (see ``to_arrays``)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"vectors must have shape ({len(ids)}, dim), got {vectors.shape}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        kwargs.setdefault("capacity", max(1024, len(ids)))
        kwargs["capacity"] = max(kwargs["capacity"], len(ids), 1)
        index = cls(vectors.shape[1], **kwargs)
        if len(ids):
            index.apply(dict(zip(ids, vectors, strict=True)))
        with index._write_lock:
            index._pending.clear()  # nothing was freed; keep the invariant plain
            index._view = index._make_view(version)
        return index

    # -- internals (writer lock held) ----------------------------------------------------------------------
    def _make_view(self, version: int) -> _View:
        live = self._live[: self._used].copy()
        live.flags.writeable = False
        return _View(version, self._store.matrix, self._slot_ids, live, self._n_live)

    def _reclaim(self) -> None:
        """Move tombstoned slots that no reader can still see to the free list."""
        with self._readers_lock:
            oldest = min(self._active, default=math.inf)
        while self._pending and self._pending[0][0] <= oldest:
            self._free.append(self._pending.popleft()[1])

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == self._capacity:
            capacity = 2 * self._capacity
            self._store.grow(capacity, self._used)
            live = np.zeros(capacity, dtype=bool)
            live[: self._used] = self._live[: self._used]
            self._live, self._capacity = live, capacity
        self._used += 1
        return self._used - 1

    def _compact_locked(self) -> None:
        slots = np.flatnonzero(self._live[: self._used])
        ids = [self._slot_ids[s] for s in slots.tolist()]
        rows = self._store.gather(self._store.matrix, slots)
        n = len(ids)
        capacity = max(self.initial_capacity, n + n // 4)
        self._store.replace(np.asarray(rows, dtype=np.float32), capacity)  # new storage: old views keep the old
        self._capacity, self._used = capacity, n
        self._live = np.zeros(capacity, dtype=bool)
        self._live[:n] = True
        self._slot_ids = ids  # a new list: old views keep the old one
        self._slot_of = {item_id: i for i, item_id in enumerate(ids)}
        self._free, self._pending = [], deque()
        self._view = self._make_view(self._view.version)
        log.debug("compacted vector index to %d live slots (capacity %d)", n, capacity)
