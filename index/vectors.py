"""The inner layer of the live index: string ids -> unit vectors, searched by inner product (cosine).

``SlotVectorIndex`` keeps vectors in a float32 *slot matrix* (one row per slot, grown by doubling) and a
dict id -> slot. Updates never cost O(N):

- an upsert writes the vector into a free slot (O(d)) and, for a known id, tombstones its old slot;
- a delete tombstones the id's slot (O(1));
- a tombstoned slot is reused once no reader can still see it (see *Consistency*), on stores that can
  overwrite a row in place;
- ``compact()`` (also run automatically, see ``should_compact``) repacks the live rows densely.

Search paths (``search_path`` names the one in use):

- ``"numpy"`` (backend ``"cpu"``): one matrix product over the used slots, tombstones masked to ``-inf``, top-k;
- ``"faiss-gpu"`` (backend ``"gpu"`` where faiss has GPU support): a FAISS ``GpuIndexFlatIP``;
- ``"torch-cuda"`` (backend ``"gpu"`` where torch sees CUDA but faiss has no GPU support): torch matmul + top-k;
- ``"faiss-cpu"`` (backend ``"faiss-cpu"``): the FAISS path on a CPU ``IndexFlatIP``, same code as faiss-gpu.

FAISS GPU indexes can only append (no overwrite, no ``remove_ids``), so the FAISS stores never reuse a slot: every
write appends (slot = row of the FAISS index), a host copy of the rows serves snapshots and compaction, and a
search over-fetches past tombstones (and past rows appended after the view it reads) and filters them out;
compaction rebuilds the FAISS index from the live rows. Every FAISS call on a store holds that store's lock (GPU
indexes are not thread-safe).

Approximate search (``approx_threshold``, off by default): once that many ids are live, searches use a FAISS
``IndexIVFFlat`` (inner product, ``nlist ~ 4 sqrt(n)``, ``nprobe`` lists probed) whose ids are slot numbers. The
writer trains it on the live rows, adds each upsert to it at once (no removal: tombstones are filtered the same
way), retrains when the live count has doubled since, and rebuilds it at compaction. While it exists no slot is
reused. Rows it cannot fill with ``k`` live hits (too few candidates in the probed lists) fall back to exact search.

Consistency: writers call ``apply(upserts, deletes)``, which applies the whole batch and then publishes it as
the next ``version`` by swapping one reference to an immutable view (live mask, storage, slot -> id). A reader
(``search_latest``) takes the latest published view and reads only that view, so a query batch sees exactly one
version, all of a batch or none of it. Rows of the view's live slots are never written while a reader may hold
the view: a write goes to a slot that is dead in every view still being read (a fresh slot, or a tombstone whose
last reader has finished: readers register the version they hold), and growth and compaction write new storage
and leave the old one to the readers that hold it. Searches through FAISS drop every hit at a slot at or past the
view's high-water mark or dead in the view, so rows appended after the view are never seen. Mutations take one
writer lock; reads do not wait for writes, except that on a FAISS store (and the IVF index) a search waits for
the writer's FAISS call in progress: an append, or one chunk of a rebuild.

>>> rng = np.random.default_rng(0)
>>> vecs = rng.normal(size=(3, 4)).astype(np.float32)
>>> vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
>>> idx = SlotVectorIndex(4, capacity=2, backend="cpu")
>>> idx.apply({"a": vecs[0], "b": vecs[1], "c": vecs[2]})
1
>>> idx.apply(deletes=["b"])
2
>>> hits = idx.search_latest(vecs[1], k=2)
>>> hits.ids, hits.version, len(idx), idx.capacity, idx.search_path
([['a', 'c']], 2, 2, 4, 'numpy')
>>> same = SlotVectorIndex.from_arrays(*idx.to_arrays(), backend="faiss-cpu")
>>> same.search_latest(vecs[1], k=2).ids, same.search_path
([['a', 'c']], 'faiss-cpu')
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BACKENDS", "Hits", "SlotVectorIndex", "VectorArrays", "choose_backend", "should_compact"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "gpu", "faiss-cpu")
GPU_INSTALL = ("pip install faiss-gpu-cu12  (FAISS on CUDA 12, preferred; it replaces faiss-cpu, see README "
               "'GPU hosts'), or pip install torch  (a CUDA build; see https://pytorch.org/get-started/locally/)")
GPU_MAX_K = 2048  # FAISS GPU top-k selection limit (k and nprobe) in CUDA builds
_ADD_CHUNK = 16_384  # rows per FAISS add while (re)building an index: searches can run between chunks


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
    """The backend to build for ``requested`` when ``gpu_count`` CUDA GPUs are visible (to faiss-gpu or torch).

    Cases:
    - ``"cpu"`` -> ``"cpu"`` (numpy);
    - ``"faiss-cpu"`` -> ``"faiss-cpu"`` (exact FAISS flat index on the CPU, append-only slots);
    - ``"gpu"`` -> ``"gpu"`` when ``gpu_count > 0``, else ``RuntimeError`` naming the install command;
    - ``"auto"`` -> ``"gpu"`` when ``gpu_count > 0``, else ``"cpu"``;
    - anything else -> ``ValueError`` listing the valid values.

    A ``"gpu"`` index searches with faiss-gpu where faiss has GPU support, else with torch (see ``search_path``).

    >>> choose_backend("auto", 0), choose_backend("auto", 2), choose_backend("cpu", 1), choose_backend("faiss-cpu", 1)
    ('cpu', 'gpu', 'cpu', 'faiss-cpu')
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown vector index backend {requested!r}; valid values: {', '.join(BACKENDS)}")
    if requested in ("cpu", "faiss-cpu"):
        return requested
    if gpu_count > 0:
        return "gpu"
    if requested == "gpu":
        raise RuntimeError("backend='gpu' needs a CUDA GPU visible to faiss-gpu or torch and none was found; "
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


def _faiss() -> Any:
    import faiss

    return faiss


@lru_cache(maxsize=1)
def _faiss_gpu_count() -> int:
    """CUDA GPUs visible to faiss (0 with faiss-cpu, which has no GPU support)."""
    if importlib.util.find_spec("faiss") is None:
        return 0
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


@lru_cache(maxsize=1)
def _torch_gpu_count() -> int:
    """CUDA GPUs visible to torch (0 when torch is not installed)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_count() -> int:
    """CUDA GPUs visible to faiss-gpu, else to torch (0 when neither has one)."""
    return _faiss_gpu_count() or _torch_gpu_count()


@dataclass(frozen=True, slots=True)
class _View:
    """One published version. Nothing here is written again while any reader can hold it (see module doc)."""

    version: int
    matrix: Any  # storage: np.ndarray (numpy), torch.Tensor (torch), _FaissTable (FAISS stores)
    slot_ids: list  # slot -> id; entries of this view's live slots do not change while the view is read
    live: np.ndarray  # (used slots,) bool, read-only
    n_live: int
    approx: _Approx | None = None  # the IVF index in approximate mode (it may hold slots past this view: filtered)


def _numpy_topk(matrix: np.ndarray, live: np.ndarray, n_live: int, queries: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over ``matrix[:len(live)]`` with dead slots masked out."""
    used = len(live)
    scores = queries @ matrix[:used].T
    if n_live < used:
        scores[:, ~live] = -np.inf
    if k < used:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(used), scores.shape)
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


_TIE_EXTRA = 8  # candidates fetched past k, so the k-th place is decided among all that come near it
# Scores within this of the k-th are "near": a backend's float32 sums differ by a few ulps with the row's position
# in the matrix (BLAS kernels treat edge rows apart), so the same vector at two slots scores differently.
_NEAR = 1e-5


def _rerank(queries: np.ndarray, slots: np.ndarray, rows: np.ndarray, slot_ids: list, k: int
            ) -> tuple[list[list[str]], np.ndarray]:
    """The first ``k`` of each row's candidate ``slots`` by score, scores recomputed in float64 one row at a time
    from ``rows`` (the candidates' vectors, in ``slots``' order), equal scores ordered by id. So an answer is a
    function of the data: not of slot numbers (they follow update history), not of the backend's summation order
    (which depends on the matrix's shape and the row's place in it), not of how its top-k orders ties.

    >>> q = np.array([[1.0, 0.0]], dtype=np.float32)
    >>> rows = np.array([[[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]]], dtype=np.float32)
    >>> _rerank(q, np.array([[0, 1, 2]]), rows, ["z", "b", "c"], 2)
    ([['c', 'b']], array([[1. , 0.6]], dtype=float32))
    """
    q64 = queries.astype(np.float64)[:, None, :]
    exact = (rows.astype(np.float64) * q64).sum(axis=2)  # one contiguous reduction per row: same vector, same sum
    out_ids, out_scores = [], np.empty((len(slots), k), dtype=np.float32)
    for i, row in enumerate(slots.tolist()):
        sc = exact[i].tolist()
        order = sorted(range(len(row)), key=lambda j, sc=sc, row=row: (-sc[j], slot_ids[row[j]]))[:k]
        out_ids.append([slot_ids[row[j]] for j in order])
        out_scores[i] = [sc[j] for j in order]
    return out_ids, out_scores


def _add_chunked(lock: threading.Lock, index: Any, rows: np.ndarray, ids: np.ndarray | None = None) -> None:
    """Add ``rows`` (under ``ids``) to ``index`` in chunks, each under ``lock``, so searches are not held up for a
    whole rebuild."""
    for start in range(0, len(rows), _ADD_CHUNK):
        chunk = np.ascontiguousarray(rows[start:start + _ADD_CHUNK], dtype=np.float32)
        with lock:
            if ids is None:
                index.add(chunk)
            else:
                index.add_with_ids(chunk, np.ascontiguousarray(ids[start:start + _ADD_CHUNK], dtype=np.int64))


def _filtered_search(index: Any, lock: threading.Lock, queries: np.ndarray, k: int, live: np.ndarray, n_live: int,
                     max_k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` live slots of one view from a FAISS index whose ids are slots, some of them invalid for the view
    (tombstones, or slots appended at or past ``len(live)`` after the view was published).

    Over-fetches (``k`` plus the expected share of invalid hits, growing 4x per retry, never past
    ``k + invalid entries``, which always holds ``k`` valid ones when the search is exhaustive, nor past ``max_k``)
    and keeps the first ``k`` valid hits per row. Returns ``(scores, slots, short)``: rows with ``short[i]`` could
    not be filled (the search ran out of candidates, or of ``max_k``) and hold garbage."""
    used = len(live)
    m = len(queries)
    scores = np.empty((m, k), dtype=np.float32)
    slots = np.empty((m, k), dtype=np.int64)
    short = np.zeros(m, dtype=bool)
    todo = np.arange(m)
    fetch = 0
    while todo.size:
        with lock:
            ntotal = int(index.ntotal)
            invalid = max(ntotal - n_live, 0)
            need = min(ntotal, k + invalid)
            if not fetch:
                fetch = k + 8 + math.ceil(2 * k * invalid / max(n_live, 1))
            kk = max(1, min(fetch, need, max_k or need))
            dist, lab = index.search(queries[todo], kk)
        valid = (lab >= 0) & (lab < used)
        valid[valid] = live[lab[valid]]
        full = valid.sum(axis=1) >= k
        if full.any():
            pos = np.argsort(~valid[full], axis=1, kind="stable")[:, :k]  # first k valid, best first
            scores[todo[full]] = np.take_along_axis(dist[full], pos, axis=1)
            slots[todo[full]] = np.take_along_axis(lab[full], pos, axis=1)
        rest = ~full
        stuck = rest & ((lab[:, -1] < 0) | (kk >= need) | (max_k is not None and kk >= max_k))
        short[todo[stuck]] = True
        todo = todo[rest & ~stuck]
        fetch = 4 * kk
    return scores, slots, short


class _CpuStore:
    """Slot storage in host memory; exact top-k with numpy (BLAS)."""

    reuses_slots = True
    search_path = "numpy"
    ivf_suffix = "+ivf"

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
        return _numpy_topk(view.matrix, view.live, view.n_live, queries, k)


class _TorchGpuStore:
    """Slot storage in GPU memory; exact top-k with torch. Calls are serialised by one lock."""

    reuses_slots = True
    search_path = "torch-cuda"
    ivf_suffix = "+ivf-cpu"  # approximate mode runs a CPU FAISS IVF beside it

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


@dataclass(frozen=True, slots=True)
class _FaissTable:
    """A FAISS store's storage as a view holds it: host rows (slot order) and the FAISS index whose row i is slot i.

    ``index`` may hold rows past a view's high-water mark (appended later): searches filter them out."""

    rows: np.ndarray  # (capacity, dim) float32; rows of slots a view can see are never written again
    index: Any


class _FaissStore:
    """Slot storage as an append-only FAISS flat inner-product index plus a host copy of the rows.

    FAISS GPU indexes cannot overwrite or remove a row, so this store never reuses a slot (``reuses_slots``):
    ``write`` appends, tombstones are skipped by over-fetching (see ``_filtered_search``), and ``replace``
    (compaction) builds a new index. ``make_index(dim)`` builds the empty index: ``faiss.IndexFlatIP`` by default,
    ``faiss.GpuIndexFlatIP`` for faiss-gpu (see ``_faiss_gpu_store``); ``ivf_to_device`` moves a CPU IVF index to
    the same device for approximate mode. All FAISS calls hold ``lock`` (GPU indexes are not thread-safe).
    ``max_k``: the most hits one FAISS search may return (FAISS GPU: 2048); rows it cannot fill are searched
    exactly on the host rows."""

    reuses_slots = False
    ivf_suffix = "+ivf"

    def __init__(self, dim: int, capacity: int, make_index: Callable[[int], Any] | None = None, *,
                 search_path: str = "faiss-cpu", max_k: int | None = None,
                 ivf_to_device: Callable[[Any], Any] | None = None, kmeans_gpu: bool = False) -> None:
        faiss = _faiss()
        self.dim = dim
        self.make_index = make_index or faiss.IndexFlatIP
        self.search_path = search_path
        self.max_k = max_k
        self.ivf_to_device = ivf_to_device
        self.kmeans_gpu = kmeans_gpu
        self.lock = threading.Lock()
        with self.lock:
            index = self.make_index(dim)
        self.matrix = _FaissTable(np.zeros((capacity, dim), dtype=np.float32), index)

    def grow(self, capacity: int, used: int) -> None:
        old = self.matrix
        rows = np.zeros((capacity, self.dim), dtype=np.float32)
        rows[:used] = old.rows[:used]
        self.matrix = _FaissTable(rows, old.index)  # the index only ever appends: both tables share it

    def replace(self, rows: np.ndarray, capacity: int) -> None:
        host = np.zeros((capacity, self.dim), dtype=np.float32)
        host[: len(rows)] = rows
        with self.lock:
            index = self.make_index(self.dim)
        _add_chunked(self.lock, index, rows)
        self.matrix = _FaissTable(host, index)  # readers of older views keep the old index

    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        table = self.matrix
        with self.lock:
            start = int(table.index.ntotal)
            if not np.array_equal(slots, np.arange(start, start + len(slots))):
                raise RuntimeError(f"FAISS store is append-only: slots {slots[:5].tolist()}... "
                                   f"do not continue its {start} rows")
            table.rows[slots] = rows
            table.index.add(np.ascontiguousarray(rows, dtype=np.float32))

    def gather(self, matrix: _FaissTable, slots: np.ndarray) -> np.ndarray:
        return matrix.rows[slots]

    def topk(self, view: _View, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        table = view.matrix
        scores, slots, short = _filtered_search(table.index, self.lock, queries, k, view.live, view.n_live,
                                                self.max_k)
        if short.any():  # only past max_k (GPU): exact on the host rows
            scores[short], slots[short] = _numpy_topk(table.rows, view.live, view.n_live, queries[short], k)
        return scores, slots


def _faiss_gpu_store(dim: int, capacity: int) -> _FaissStore:
    """A ``_FaissStore`` on GPU 0 through faiss-gpu: ``GpuIndexFlatIP`` and, in approximate mode,
    ``GpuIndexIVFFlat`` (k-means on the GPU), sharing one ``StandardGpuResources``."""
    faiss = _faiss()
    res = faiss.StandardGpuResources()
    return _FaissStore(dim, capacity, lambda d: faiss.GpuIndexFlatIP(res, d), search_path="faiss-gpu",
                       max_k=GPU_MAX_K, ivf_to_device=lambda cpu: faiss.index_cpu_to_gpu(res, 0, cpu),
                       kmeans_gpu=True)


class _Approx:
    """The IVF index of approximate mode: ids are slots, entries are only ever added (tombstones and slots past a
    view are filtered by ``_filtered_search``). ``built_live``: live ids it was trained for; ``centroids``: its
    coarse centroids (reused when compaction renumbers the slots)."""

    def __init__(self, index: Any, lock: threading.Lock, centroids: np.ndarray, built_live: int,
                 max_k: int | None) -> None:
        self.index, self.lock, self.centroids = index, lock, centroids
        self.built_live, self.max_k = built_live, max_k

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def add(self, rows: np.ndarray, slots: np.ndarray) -> None:
        with self.lock:
            self.index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), slots.astype(np.int64))

    def topk(self, view: _View, queries: np.ndarray, k: int,
             exact: Callable[[_View, np.ndarray, int], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        scores, slots, short = _filtered_search(self.index, self.lock, queries, k, view.live, view.n_live,
                                                self.max_k)
        if short.any():  # the probed lists held fewer than k live hits
            scores[short], slots[short] = exact(view, queries[short], k)
        return scores, slots


def _ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: ``4 sqrt(n)``, at most ``n / 39`` (k-means wants >= 39 points per list).

    >>> _ivf_nlist(20_000), _ivf_nlist(1_000_000), _ivf_nlist(10)
    (512, 4000, 1)
    """
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _check_id(item_id: Any) -> str:
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"ids must be non-empty strings, got {item_id!r}")
    return item_id


class SlotVectorIndex:
    """Inner-product index over unit vectors with O(d) upserts and O(1) deletes by string id.

    ``dim``: vector dimension. ``capacity``: initial slots (doubles as needed; also the floor after compaction).
    ``backend``: ``"cpu"`` (numpy), ``"gpu"`` (faiss-gpu, else torch), ``"faiss-cpu"`` (FAISS flat index on the
    CPU) or ``"auto"`` (GPU when one is visible; see ``choose_backend``); ``search_path`` names what searches.
    ``max_dead_fraction`` / ``min_dead_to_compact``: automatic compaction (see ``should_compact``).
    ``approx_threshold``: ``None`` (default) searches exactly; an int switches to an approximate FAISS IVF index
    once that many ids are live (see the module doc). ``nprobe``: inverted lists probed per query there.

    Vectors are expected L2-normalised (scores are then cosines); they are stored as given, as float32.
    """

    def __init__(self, dim: int, *, capacity: int = 1024, backend: str = "auto", max_dead_fraction: float = 0.25,
                 min_dead_to_compact: int = 1024, approx_threshold: int | None = None, nprobe: int = 16) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not 0.0 < max_dead_fraction < 1.0:
            raise ValueError(f"max_dead_fraction must be in (0, 1), got {max_dead_fraction!r}")
        if min_dead_to_compact < 1:
            raise ValueError(f"min_dead_to_compact must be >= 1, got {min_dead_to_compact!r}")
        if approx_threshold is not None and (isinstance(approx_threshold, bool) or not isinstance(approx_threshold, int)
                                             or approx_threshold < 1):
            raise ValueError(f"approx_threshold must be None or an int >= 1, got {approx_threshold!r}")
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
            raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
        self.dim = dim
        self.initial_capacity = capacity
        self.backend = choose_backend(backend, 0 if backend in ("cpu", "faiss-cpu") else _gpu_count())
        self.max_dead_fraction = max_dead_fraction
        self.min_dead_to_compact = min_dead_to_compact
        self.approx_threshold = approx_threshold
        self.nprobe = nprobe
        self._reset()

    def _new_store(self, capacity: int) -> Any:
        if self.backend == "faiss-cpu":
            return _FaissStore(self.dim, capacity)
        if self.backend == "gpu":
            if _faiss_gpu_count() > 0:
                return _faiss_gpu_store(self.dim, capacity)
            log.info("faiss has no GPU support here: the GPU vector index searches with torch (install "
                     "faiss-gpu-cu12 for FAISS on the GPU)")
            return _TorchGpuStore(self.dim, capacity)
        return _CpuStore(self.dim, capacity)

    def _reset(self) -> None:
        capacity = self.initial_capacity
        self._write_lock = threading.Lock()  # one writer at a time
        self._readers_lock = threading.Lock()  # guards taking the view + _active together
        self._active: dict[int, int] = {}  # version -> readers holding it now
        self._store = self._new_store(capacity)
        self._capacity = capacity
        self._used = 0  # high-water mark: slots [0, _used) have been handed out
        self._live = np.zeros(capacity, dtype=bool)  # the writer's working mask
        self._n_live = 0
        self._slot_of: dict[str, int] = {}
        self._slot_ids: list[str] = []
        self._free: list[int] = []  # dead in every view still readable: safe to write
        self._pending: deque[tuple[int, int]] = deque()  # (version that freed it, slot), oldest first
        self._approx: _Approx | None = None  # approximate mode's IVF index, once built
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

    @property
    def search_path(self) -> str:
        """What searches the latest version: ``"numpy"``, ``"torch-cuda"``, ``"faiss-gpu"`` or ``"faiss-cpu"``,
        with ``"+ivf"`` appended while approximate search is in use (``"+ivf-cpu"`` beside torch)."""
        view = self._view
        path = self._store.search_path
        return path + self._store.ivf_suffix if self._approximate(view) else path

    def __len__(self) -> int:
        """Live ids in the latest published version."""
        return self._view.n_live

    def _approximate(self, view: _View) -> bool:
        return view.approx is not None and self.approx_threshold is not None and view.n_live >= self.approx_threshold

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

        ``queries``: one vector ``(dim,)`` or a batch ``(m, dim)``. Rows have ``min(k, len(self))`` hits (exact
        unless approximate mode is on, see ``search_path``)."""
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
            # Candidates past k, more while a row's last one is still near its k-th: which of a run of (nearly)
            # equal scores a backend returns is arbitrary, so all of the run is fetched and reranked.
            fetch = min(k + _TIE_EXTRA, view.n_live)
            while True:
                if self._approximate(view):
                    scores, slots = view.approx.topk(view, q, fetch, self._store.topk)
                else:
                    scores, slots = self._store.topk(view, q, fetch)
                if fetch >= view.n_live or not (scores[:, -1] >= scores[:, k - 1] - _NEAR).any():
                    break
                fetch = min(4 * fetch, view.n_live)
            rows = self._store.gather(view.matrix, slots.reshape(-1)).reshape(*slots.shape, self.dim)
            ids, scores = _rerank(q, slots, np.asarray(rows), view.slot_ids, k)
        finally:
            self._release(view)
        return Hits(ids, scores, view.version)

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
        delete, plus one O(capacity) mask copy per batch (bytes, not vectors); in approximate mode an upsert also
        costs one IVF add, and the writer (re)trains the IVF index when the live count reaches the threshold and
        each time it doubles."""
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
                if self._approx is not None:
                    self._approx.add(rows, slots)
            self._live[freed] = False
            self._live[slots] = True
            self._n_live = len(self._slot_of)
            if self._reuses_slots():
                self._pending.extend((version, s) for s in freed)
            compact = should_compact(self._n_live, self._used - self._n_live, min_dead=self.min_dead_to_compact,
                                     max_dead_fraction=self.max_dead_fraction)
            if not compact:
                self._maybe_build_approx()
            self._view = self._make_view(version)
            if compact:
                self._compact_locked()
            return version

    def compact(self) -> None:
        """Repack live rows densely into new storage (same version, same results); readers are not blocked.
        In approximate mode the IVF index is rebuilt for the new slots (same centroids unless the live count
        doubled since they were trained; dropped below the threshold)."""
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
        return _View(version, self._store.matrix, self._slot_ids, live, self._n_live, self._approx)

    def _reuses_slots(self) -> bool:
        """Whether tombstones may be rewritten: not on append-only (FAISS) stores, nor while an IVF index holds
        slot ids (it cannot drop the old entry of a slot)."""
        return self._store.reuses_slots and self._approx is None

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

    def _maybe_build_approx(self) -> None:
        """Train the IVF index once the live count reaches the threshold, and again each time it doubles."""
        if self.approx_threshold is None or self._n_live < self.approx_threshold:
            return
        if self._approx is not None and self._n_live < 2 * self._approx.built_live:
            return
        slots = np.flatnonzero(self._live[: self._used])
        self._approx = self._build_approx(slots, np.asarray(self._store.gather(self._store.matrix, slots)))
        self._free, self._pending = [], deque()  # tombstones stay dead until compaction (see _reuses_slots)

    def _build_approx(self, slots: np.ndarray, rows: np.ndarray, centroids: np.ndarray | None = None) -> _Approx:
        """An IVF index over ``rows`` under ids ``slots``, trained by spherical k-means unless ``centroids`` given."""
        faiss = _faiss()
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n = len(rows)
        gpu = bool(getattr(self._store, "ivf_to_device", None))
        if centroids is None and _ivf_nlist(n) == 1:  # too few vectors to cluster: one list, exhaustive
            mean = rows.sum(axis=0) if n else np.zeros(self.dim, dtype=np.float32)
            norm = float(np.linalg.norm(mean))
            centroids = (mean / norm if norm > 0 else np.eye(1, self.dim, dtype=np.float32)[0])[None, :]
        if centroids is None:
            nlist = _ivf_nlist(n)
            kmeans = faiss.Kmeans(self.dim, nlist, niter=10, spherical=True, max_points_per_centroid=64, seed=1234,
                                  gpu=bool(getattr(self._store, "kmeans_gpu", False)))
            kmeans.train(rows)
            centroids = np.array(kmeans.centroids, dtype=np.float32)
        nlist = len(centroids)
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(centroids)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        lock = getattr(self._store, "lock", None) or threading.Lock()
        with lock:
            if gpu:
                index = self._store.ivf_to_device(index)
            index.nprobe = min(self.nprobe, nlist, GPU_MAX_K if gpu else nlist)
        _add_chunked(lock, index, rows, slots)
        log.debug("built IVF index: %d vectors, %d lists, nprobe %d", n, nlist, index.nprobe)
        return _Approx(index, lock, centroids, n, self._store.max_k if gpu else None)

    def _compact_locked(self) -> None:
        slots = np.flatnonzero(self._live[: self._used])
        ids = [self._slot_ids[s] for s in slots.tolist()]
        rows = np.asarray(self._store.gather(self._store.matrix, slots), dtype=np.float32)
        n = len(ids)
        capacity = max(self.initial_capacity, n + n // 4)
        self._store.replace(rows, capacity)  # new storage: old views keep the old
        self._capacity, self._used = capacity, n
        self._live = np.zeros(capacity, dtype=bool)
        self._live[:n] = True
        self._slot_ids = ids  # a new list: old views keep the old one
        self._slot_of = {item_id: i for i, item_id in enumerate(ids)}
        self._free, self._pending = [], deque()
        if self.approx_threshold is None or n < self.approx_threshold:
            self._approx = None
        else:  # slots were renumbered: a new IVF index (old views keep the old one)
            old = self._approx
            reuse = old is not None and n < 2 * old.built_live
            self._approx = self._build_approx(np.arange(n), rows, old.centroids if reuse else None)
            if reuse:
                self._approx.built_live = old.built_live
        self._view = self._make_view(self._view.version)
        log.debug("compacted vector index to %d live slots (capacity %d)", n, capacity)
