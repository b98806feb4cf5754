"""SlotVectorIndex: exact results against numpy brute force, updates, slot reuse, compaction, consistency under
concurrent writes, argument checks and backend selection; the FAISS store (run on the CPU with the same code as on
the GPU) against the numpy one; approximate (IVF) mode: recall, immediate updates, rebuilds."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import index.vectors as vectors_mod
from index.vectors import SlotVectorIndex, VectorArrays, choose_backend, should_compact

SCORE_TOL = 1e-6  # float32 cosines from BLAS: the summation order depends on shape and CPU


def test_equal_scores_are_ordered_by_id_whatever_the_history():
    """Replicas fed the same data in another order (other slots) give the same answer: ties break by id."""
    rng = np.random.default_rng(5)
    vecs = unit(rng, 50, 16)
    dup = {f"d{j}": vecs[0] for j in range(12)}  # 12 identical vectors: more than k, ties across the boundary
    rest = {f"r{j}": vecs[j] for j in range(1, 50)}
    a = SlotVectorIndex(16, backend="cpu")
    a.apply({**dup, **rest})
    b = SlotVectorIndex(16, backend="cpu")
    b.apply(dict(reversed(list({**rest, **dup}.items()))))
    for k in (1, 5, 10, 13):
        ha, hb = a.search_latest(vecs[0], k), b.search_latest(vecs[0], k)
        assert ha.ids == hb.ids
        assert ha.ids[0] == sorted(dup)[:k] + ([] if k <= 12 else hb.ids[0][12:])


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(ids: list[str], mat: np.ndarray, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
    scores = queries @ mat.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def state(idx: SlotVectorIndex) -> tuple[list[str], np.ndarray]:
    arr = idx.to_arrays()
    return arr.ids, arr.vectors


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(1)
    vecs = unit(rng, 600, 32)
    ids = [f"i{j}" for j in range(600)]
    idx = SlotVectorIndex(32, capacity=16, backend="cpu")
    for start in range(0, 600, 100):
        idx.apply(dict(zip(ids[start:start + 100], vecs[start:start + 100], strict=True)))
    queries = unit(rng, 25, 32)
    hits = idx.search_latest(queries, k=10)
    want_ids, want_scores = brute(ids, vecs, queries, 10)
    assert hits.ids == want_ids
    np.testing.assert_allclose(hits.scores, want_scores, rtol=1e-5, atol=1e-6)
    assert hits.version == 6 and len(idx) == 600 and hits.scores.shape == (25, 10)


def test_single_query_and_k_larger_than_items():
    rng = np.random.default_rng(2)
    vecs = unit(rng, 3, 8)
    idx = SlotVectorIndex(8, backend="cpu")
    assert idx.search_latest(vecs[0], k=5).ids == [[]]
    idx.apply({"a": vecs[0], "b": vecs[1], "c": vecs[2]})
    hits = idx.search_latest(vecs[0], k=5)
    assert hits.ids[0][0] == "a" and sorted(hits.ids[0]) == ["a", "b", "c"] and hits.scores.shape == (1, 3)
    assert hits.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_overwrite_an_id():
    rng = np.random.default_rng(3)
    vecs = unit(rng, 50, 16)
    idx = SlotVectorIndex(16, backend="cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(40)})
    idx.apply({"i7": vecs[45]})
    assert len(idx) == 40
    hits = idx.search_latest(np.stack([vecs[45], vecs[7]]), k=1)
    assert hits.ids[0] == ["i7"] and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert hits.ids[1] != ["i7"] or hits.scores[1, 0] < 0.999
    ids, mat = state(idx)
    np.testing.assert_array_equal(mat[ids.index("i7")], vecs[45])


def test_delete_then_search_never_returns_it():
    rng = np.random.default_rng(4)
    vecs = unit(rng, 30, 16)
    idx = SlotVectorIndex(16, backend="cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(30)})
    v = idx.apply(deletes=["i3", "i4"])
    assert v == 2 and len(idx) == 28
    hits = idx.search_latest(vecs, k=30)
    assert all("i3" not in row and "i4" not in row for row in hits.ids)
    assert all(len(row) == 28 for row in hits.ids)
    assert idx.apply(deletes=["i3", "unknown"]) == 2  # nothing changed: nothing published


def test_slot_reuse_after_delete():
    rng = np.random.default_rng(5)
    vecs = unit(rng, 8, 4)
    idx = SlotVectorIndex(4, capacity=4, backend="cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(4)})
    idx.apply(deletes=["i0", "i1"])
    idx.apply({"i4": vecs[4], "i5": vecs[5]})
    assert idx.capacity == 4 and len(idx) == 4
    idx.apply(deletes=["i5"])
    idx.apply({"i4": vecs[6]})  # an overwrite moves to a free slot (here i5's); its old slot is reused later
    idx.apply({"i2": vecs[7]})
    assert idx.capacity == 4 and idx._used == 4
    ids, mat = state(idx)
    assert sorted(ids) == ["i2", "i3", "i4"]
    np.testing.assert_array_equal(mat[ids.index("i4")], vecs[6])
    np.testing.assert_array_equal(mat[ids.index("i2")], vecs[7])


def test_slot_seen_by_a_reader_is_not_reused():
    rng = np.random.default_rng(6)
    vecs = unit(rng, 6, 4)
    idx = SlotVectorIndex(4, capacity=4, backend="cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(4)})
    view = idx._acquire()  # a reader in the middle of a search at version 1
    try:
        idx.apply(deletes=["i0"])
        idx.apply({"i4": vecs[4]})
        assert idx.capacity == 8  # the freed slot is still visible to the reader: a fresh slot was taken
        np.testing.assert_array_equal(view.matrix[0], vecs[0])
    finally:
        idx._release(view)
    idx.apply({"i5": vecs[5]})
    assert idx._used == 5  # now the tombstone was reused


def test_compaction_keeps_results_identical():
    rng = np.random.default_rng(7)
    vecs = unit(rng, 400, 24)
    idx = SlotVectorIndex(24, capacity=8, backend="cpu", min_dead_to_compact=10_000)
    idx.apply({f"i{j}": vecs[j] for j in range(400)})
    view = idx._acquire()  # pin so the tombstones stay as tombstones
    idx.apply(deletes=[f"i{j}" for j in range(0, 400, 2)])
    idx.apply({f"i{j}": vecs[j - 1] for j in range(1, 100, 2)})  # overwrites: fresh slots
    idx._release(view)
    queries = unit(rng, 20, 24)
    before = idx.search_latest(queries, k=15)
    cap_before, version = idx.capacity, idx.version
    idx.compact()
    after = idx.search_latest(queries, k=15)
    assert after.ids == before.ids and after.version == version
    # Compaction changes the matrix's shape, and BLAS sums in an order that depends on it: 1 ulp apart is fine.
    np.testing.assert_allclose(after.scores, before.scores, rtol=0, atol=SCORE_TOL)
    assert idx.capacity < cap_before and idx._used == len(idx) == 200
    ids, mat = state(idx)
    want = brute(ids, mat, queries, 15)
    assert want[0] == after.ids


def test_automatic_compaction():
    rng = np.random.default_rng(8)
    vecs = unit(rng, 100, 8)
    idx = SlotVectorIndex(8, capacity=4, backend="cpu", min_dead_to_compact=10, max_dead_fraction=0.25)
    idx.apply({f"i{j}": vecs[j] for j in range(100)})
    view = idx._acquire()
    idx.apply(deletes=[f"i{j}" for j in range(60)])
    idx._release(view)
    assert idx._used == 40 and idx.capacity == 50 and len(idx) == 40
    assert sorted(state(idx)[0]) == sorted(f"i{j}" for j in range(60, 100))


def test_capacity_grows_by_doubling():
    rng = np.random.default_rng(9)
    idx = SlotVectorIndex(8, capacity=1, backend="cpu")
    vecs = unit(rng, 100, 8)
    for j in range(100):
        idx.apply({f"i{j}": vecs[j]})
    assert idx.capacity == 128 and len(idx) == 100 and idx.version == 100
    ids, mat = state(idx)
    np.testing.assert_array_equal(mat, vecs)


def test_snapshot_round_trip():
    rng = np.random.default_rng(10)
    vecs = unit(rng, 50, 8)
    idx = SlotVectorIndex(8, backend="cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(50)})
    idx.apply(deletes=["i1"])
    arr = idx.to_arrays()
    assert isinstance(arr, VectorArrays) and arr.version == 2 and len(arr.ids) == 49
    copy = SlotVectorIndex.from_arrays(arr.ids, arr.vectors, arr.version, backend="cpu")
    assert copy.version == 2 and len(copy) == 49
    queries = unit(rng, 5, 8)
    assert copy.search_latest(queries, 5).ids == idx.search_latest(queries, 5).ids
    assert copy.apply({"new": vecs[1]}) == 3
    empty = SlotVectorIndex.from_arrays([], np.zeros((0, 8)), 0, backend="cpu")
    assert len(empty) == 0 and empty.version == 0


def test_argument_checks():
    idx = SlotVectorIndex(4, backend="cpu")
    with pytest.raises(ValueError, match=r"vector for id 'a' has shape \(3,\), expected \(4,\)"):
        idx.apply({"a": [1.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match=r"queries must have shape \(4,\) or \(m, 4\)"):
        idx.search_latest(np.zeros((2, 5)), k=1)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            idx.search_latest(np.zeros(4), k=k)
    with pytest.raises(ValueError, match="finite"):
        idx.apply({"a": [np.nan, 0, 0, 0]})
    with pytest.raises(ValueError, match="non-empty strings"):
        idx.apply({"": [1, 0, 0, 0]})
    with pytest.raises(ValueError, match="both upserted and deleted"):
        idx.apply({"a": [1, 0, 0, 0]}, deletes=["a"])
    with pytest.raises(ValueError, match="dim must be a positive int"):
        SlotVectorIndex(0)
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        SlotVectorIndex(4, capacity=0, backend="cpu")
    with pytest.raises(ValueError, match="valid values: auto, cpu, gpu, faiss-cpu"):
        SlotVectorIndex(4, backend="tpu")
    for bad in (0, -5, 1.5, True, "10"):
        with pytest.raises(ValueError, match="approx_threshold must be None or an int >= 1"):
            SlotVectorIndex(4, backend="cpu", approx_threshold=bad)
    for bad in (0, 2.0, False):
        with pytest.raises(ValueError, match="nprobe must be an int >= 1"):
            SlotVectorIndex(4, backend="cpu", nprobe=bad)
    assert idx.version == 0 and len(idx) == 0  # failed batches changed nothing


def test_choose_backend_cases():
    assert choose_backend("cpu", 0) == "cpu" and choose_backend("cpu", 4) == "cpu"
    assert choose_backend("auto", 0) == "cpu" and choose_backend("auto", 1) == "gpu"
    assert choose_backend("gpu", 1) == "gpu"
    assert choose_backend("faiss-cpu", 0) == "faiss-cpu" and choose_backend("faiss-cpu", 2) == "faiss-cpu"
    with pytest.raises(RuntimeError, match="pip install faiss-gpu-cu12 .*pip install torch"):
        choose_backend("gpu", 0)
    with pytest.raises(ValueError, match="valid values: auto, cpu, gpu, faiss-cpu"):
        choose_backend("cuda", 1)


def test_backend_selection_without_gpu(monkeypatch):
    monkeypatch.setattr(vectors_mod, "_gpu_count", lambda: 0)
    auto = SlotVectorIndex(4, backend="auto")
    assert auto.backend == "cpu" and auto.search_path == "numpy"
    with pytest.raises(RuntimeError, match="backend='gpu' needs a CUDA GPU"):
        SlotVectorIndex(4, backend="gpu")
    flat = SlotVectorIndex(4, backend="faiss-cpu")
    assert flat.backend == "faiss-cpu" and flat.search_path == "faiss-cpu"


def test_should_compact_cases():
    assert not should_compact(0, 0)
    assert not should_compact(10, 1023)  # below min_dead
    assert should_compact(10, 1024)
    assert not should_compact(10_000, 2000)  # 17% dead
    assert should_compact(10_000, 4000, max_dead_fraction=0.25)
    assert should_compact(3, 2, min_dead=2, max_dead_fraction=0.25)


@pytest.mark.parametrize(("backend", "approx_threshold"),
                         [("cpu", None), ("faiss-cpu", None), ("cpu", 16), ("faiss-cpu", 16)])
def test_readers_see_one_consistent_version_while_a_writer_writes(backend, approx_threshold):
    """Readers search everything (k = all) while one writer upserts, overwrites, deletes and re-inserts in batches
    (with slot reuse, growth and automatic compaction; on the FAISS store, appends past the readers' views; in
    approximate mode, IVF builds, rebuilds and adds). Each reader checks the ids and every score of its hits
    against the exact state the writer recorded for that version: a torn row, a stale or future row, or an id
    mapped to another id's vector fails. (With under 78 live ids the IVF index has one list: it is exhaustive, so
    the check stays exact while its tombstone and high-water filtering are exercised.)"""
    n, d, variants = 64, 8, 16
    rng = np.random.default_rng(12)
    table = unit(rng, n * variants, d).reshape(n, variants, d)  # table[i, g % variants] = id i at generation g
    idx = SlotVectorIndex(d, capacity=4, backend=backend, min_dead_to_compact=8, max_dead_fraction=0.2,
                          approx_threshold=approx_threshold)
    paths: set[str] = set()
    history: dict[int, np.ndarray] = {0: np.full(n, -1)}  # version -> generation per id (-1: absent)
    stop = threading.Event()
    failures: list[str] = []
    checked: list[int] = []

    def writer() -> None:
        wrng = np.random.default_rng(13)
        gen = np.full(n, -1)
        while not stop.is_set():
            new = gen.copy()
            touched = wrng.choice(n, size=int(wrng.integers(1, 12)), replace=False)
            ups, dels = {}, []
            for i in touched.tolist():
                if gen[i] >= 0 and wrng.random() < 0.3:
                    dels.append(f"i{i}")
                    new[i] = -1
                else:
                    new[i] = max(gen[i], 0) + 1
                    ups[f"i{i}"] = table[i, new[i] % variants]
            history[idx.version + 1] = new  # recorded before any reader can see it
            if idx.apply(ups, dels) != max(history):
                failures.append("apply returned an unexpected version")
            paths.add(idx.search_path)
            gen = new

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        count = 0
        while not stop.is_set():
            queries = unit(r, 3, d)
            hits = idx.search_latest(queries, k=n)
            gen = history[hits.version]
            alive = np.flatnonzero(gen >= 0)
            want = {f"i{i}": table[i, gen[i] % variants] for i in alive.tolist()}
            for q, row_ids, row_scores in zip(queries, hits.ids, hits.scores, strict=True):
                if sorted(row_ids) != sorted(want):
                    failures.append(f"version {hits.version}: ids {sorted(row_ids)} != {sorted(want)}")
                    return
                expect = np.array([want[i] @ q for i in row_ids], dtype=np.float32)
                if not np.allclose(row_scores, expect, atol=1e-5):
                    failures.append(f"version {hits.version}: scores differ from that version's vectors")
                    return
            count += 1
        checked.append(count)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave threads finely
    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        sys.setswitchinterval(old_interval)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]
    assert len(checked) == 2 and min(checked) > 10
    assert idx.version > 50
    base = "numpy" if backend == "cpu" else "faiss-cpu"
    assert paths == ({base} if approx_threshold is None else {base, base + "+ivf"}), paths


# -- the FAISS store (backend "faiss-cpu": the faiss-gpu code path on a CPU index) ------------------------------

def random_batches(rng: np.random.Generator, n_ids: int, d: int, batches: int):
    """Seeded batches of upserts (new ids, re-embeds, re-inserts of deleted ids) and deletes."""
    alive: set[int] = set()
    for _ in range(batches):
        touched = rng.choice(n_ids, size=int(rng.integers(1, 40)), replace=False).tolist()
        ups, dels = {}, []
        for i in touched:
            if i in alive and rng.random() < 0.35:
                dels.append(f"i{i}")
                alive.discard(i)
            else:
                ups[f"i{i}"] = unit(rng, 1, d)[0]
                alive.add(i)
        yield ups, dels


def as_dict(idx: SlotVectorIndex) -> dict[str, np.ndarray]:
    arr = idx.to_arrays()
    return dict(zip(arr.ids, arr.vectors, strict=True))


def assert_same_hits(a: SlotVectorIndex, b: SlotVectorIndex, queries: np.ndarray, k: int) -> None:
    ha, hb = a.search_latest(queries, k), b.search_latest(queries, k)
    assert ha.ids == hb.ids and ha.version == hb.version
    np.testing.assert_allclose(ha.scores, hb.scores, rtol=1e-5, atol=1e-5)


def test_faiss_store_matches_numpy_on_random_updates():
    rng = np.random.default_rng(20)
    d = 16
    ref = SlotVectorIndex(d, capacity=8, backend="cpu", min_dead_to_compact=40)
    flat = SlotVectorIndex(d, capacity=8, backend="faiss-cpu", min_dead_to_compact=40)
    assert flat.search_path == "faiss-cpu" and flat.backend == "faiss-cpu"
    queries = unit(rng, 12, d)
    compactions = 0
    for ups, dels in random_batches(np.random.default_rng(21), 150, d, 120):
        used = flat._used
        assert ref.apply(ups, dels) == flat.apply(ups, dels)
        compactions += flat._used < used
        for k in (1, 10, 200):
            assert_same_hits(ref, flat, queries, k)
        assert flat._store.matrix.index.ntotal == flat._used  # FAISS row i is slot i
    assert compactions >= 2
    want, got = as_dict(ref), as_dict(flat)
    assert sorted(want) == sorted(got) and all(np.array_equal(want[i], got[i]) for i in want)


def test_faiss_store_never_reuses_a_slot():
    rng = np.random.default_rng(22)
    vecs = unit(rng, 8, 4)
    idx = SlotVectorIndex(4, capacity=4, backend="faiss-cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(4)})
    idx.apply(deletes=["i0", "i1"])
    idx.apply({"i4": vecs[4], "i2": vecs[5]})  # a new id and an overwrite: both appended
    assert idx._used == 6 and idx.capacity == 8 and len(idx) == 3 and not idx._free
    assert idx._store.matrix.index.ntotal == 6
    hits = idx.search_latest(vecs, k=3)
    assert all(sorted(row) == ["i2", "i3", "i4"] for row in hits.ids)
    assert hits.ids[5][0] == "i2" and hits.scores[5, 0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(RuntimeError, match="append-only"):
        idx._store.write(np.array([0]), vecs[:1])


def test_faiss_search_of_an_old_view_ignores_rows_appended_after_it():
    rng = np.random.default_rng(23)
    vecs = unit(rng, 40, 8)
    idx = SlotVectorIndex(8, backend="faiss-cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(20)})
    view = idx._acquire()  # a reader at version 1
    try:
        idx.apply({f"n{j}": vecs[j] for j in range(20, 40)})  # appended to the same FAISS index
        idx.apply({f"i{j}": vecs[39 - j] for j in range(5)}, deletes=["i10"])  # overwrites + a delete
        assert view.matrix.index is idx._store.matrix.index and view.matrix.index.ntotal == 45
        scores, slots = idx._store.topk(view, vecs, 20)
        assert slots.max() < 20 and sorted(slots[0].tolist()) == list(range(20))
        want_ids, want_scores = brute([f"i{j}" for j in range(20)], vecs[:20], vecs, 20)
        assert [[view.slot_ids[s] for s in row] for row in slots.tolist()] == want_ids
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    finally:
        idx._release(view)
    hits = idx.search_latest(vecs[10], k=39)
    assert "i10" not in hits.ids[0] and len(hits.ids[0]) == 39


def test_faiss_overfetch_past_crowding_tombstones_and_the_gpu_k_limit():
    """Re-embeds that barely move leave tombstones right next to the query: the first over-fetch comes back short
    and is retried; with ``max_k`` (2048 on GPU) below what is needed, rows fall back to exact host search."""
    rng = np.random.default_rng(24)
    d = 16
    base = unit(rng, 30, d)
    ref = SlotVectorIndex(d, backend="cpu", min_dead_to_compact=100_000)
    flat = SlotVectorIndex(d, backend="faiss-cpu", min_dead_to_compact=100_000)
    for step in range(40):
        jitter = base + 1e-3 * step * rng.normal(size=base.shape).astype(np.float32)
        batch = {f"i{j}": v / np.linalg.norm(v) for j, v in enumerate(jitter[:10])}  # ids 0-9 re-embedded 40x
        if step == 0:
            batch.update({f"i{j}": base[j] for j in range(10, 30)})
        ref.apply(batch)
        flat.apply(batch)
    assert flat._used - len(flat) == 390  # tombstones, none compacted
    queries = np.concatenate([base[:10], unit(rng, 5, d)])
    for k in (1, 5, 10, 30):
        assert_same_hits(ref, flat, queries, k)
    flat._store.max_k = 4  # as FAISS GPU's selection limit, scaled down
    for k in (3, 10, 30):
        assert_same_hits(ref, flat, queries, k)


def test_faiss_compaction_rebuilds_the_index_and_old_views_keep_theirs():
    rng = np.random.default_rng(25)
    vecs = unit(rng, 400, 24)
    idx = SlotVectorIndex(24, capacity=8, backend="faiss-cpu", min_dead_to_compact=10_000)
    idx.apply({f"i{j}": vecs[j] for j in range(400)})
    idx.apply(deletes=[f"i{j}" for j in range(0, 400, 2)])
    idx.apply({f"i{j}": vecs[j - 1] for j in range(1, 100, 2)})
    queries = unit(rng, 20, 24)
    before = idx.search_latest(queries, k=15)
    old = idx._acquire()
    try:
        old_index = idx._store.matrix.index
        assert old_index.ntotal == 450
        idx.compact()
        assert idx._store.matrix.index is not old_index and idx._store.matrix.index.ntotal == 200
        assert idx._used == len(idx) == 200 and old.matrix.index is old_index
        scores, slots = idx._store.topk(old, queries, 15)  # a reader that started before the compaction
        assert [[old.slot_ids[s] for s in row] for row in slots.tolist()] == before.ids
    finally:
        idx._release(old)
    after = idx.search_latest(queries, k=15)
    assert after.ids == before.ids and after.version == before.version
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5, atol=1e-6)
    fresh = unit(rng, 1, 24)[0]
    idx.apply({"new": fresh})
    assert idx._store.matrix.index.ntotal == 201 and idx.search_latest(fresh, k=1).ids == [["new"]]


def test_faiss_snapshot_round_trip():
    rng = np.random.default_rng(26)
    vecs = unit(rng, 61, 8)
    idx = SlotVectorIndex(8, backend="faiss-cpu")
    idx.apply({f"i{j}": vecs[j] for j in range(60)})
    idx.apply({"i5": vecs[60]}, deletes=["i1"])
    arr = idx.to_arrays()
    assert arr.version == 2 and len(arr.ids) == 59
    np.testing.assert_array_equal(arr.vectors[arr.ids.index("i5")], vecs[60])
    queries = unit(rng, 5, 8)
    for backend in ("faiss-cpu", "cpu"):
        copy = SlotVectorIndex.from_arrays(arr.ids, arr.vectors, arr.version, backend=backend)
        assert copy.version == 2 and len(copy) == 59
        assert_same_hits(idx, copy, queries, 7)
    back = SlotVectorIndex.from_arrays(*SlotVectorIndex.from_arrays(*arr, backend="cpu").to_arrays(),
                                       backend="faiss-cpu")
    assert as_dict(back).keys() == as_dict(idx).keys()


# -- approximate mode (FAISS IVF) ------------------------------------------------------------------------------

def clustered(rng: np.random.Generator, n: int, d: int, centers: np.ndarray, spread: float = 0.5) -> np.ndarray:
    """Unit vectors around random ``centers`` (gaussian noise of norm ~``spread``), like topic-clustered embeddings."""
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(w)) / len(w) for f, w in zip(found, want, strict=True)]))


@pytest.mark.parametrize("backend", ["cpu", "faiss-cpu"])
def test_approximate_recall_on_20k_vectors(backend):
    rng = np.random.default_rng(30)
    d, n = 64, 20_000
    centers = unit(rng, 200, d)
    vecs = clustered(rng, n, d, centers, spread=1.3)  # wide clusters: recall clearly below 1 (uniform random
    ids = [f"i{j}" for j in range(n)]  # vectors, the worst case, reach ~0.35 at nprobe 16 and ~0.8 at 128)
    idx = SlotVectorIndex(d, backend=backend, approx_threshold=5_000)
    assert idx.nprobe == 16
    for start in range(0, n, 1000):
        idx.apply(dict(zip(ids[start:start + 1000], vecs[start:start + 1000], strict=True)))
        if start + 1000 < 5_000:
            assert idx._approx is None and "+ivf" not in idx.search_path
    assert idx.search_path == ("numpy+ivf" if backend == "cpu" else "faiss-cpu+ivf")
    assert idx._approx.built_live == 20_000 and idx._approx.nlist == 512  # trained at 5k, 10k, 20k
    queries = clustered(rng, 200, d, centers, spread=1.3)
    hits = idx.search_latest(queries, k=10)
    want_ids, _ = brute(ids, vecs, queries, 10)
    recall = recall_at(hits.ids, want_ids)
    print(f"recall@10 ({backend}, nprobe 16, nlist 512, 20k clustered vectors): {recall:.3f}")
    assert recall >= 0.9
    assert hits.scores.shape == (200, 10) and np.all(np.diff(hits.scores, axis=1) <= 1e-6)
    exact = np.take_along_axis(queries @ vecs.T, np.array([[int(i[1:]) for i in row] for row in hits.ids]), axis=1)
    np.testing.assert_allclose(hits.scores, exact, rtol=1e-5, atol=1e-5)  # approximate hits, exact scores
    everything = idx.search_latest(queries[:3], k=n)  # the IVF's probed lists fall short: exact fallback
    want_ids, want_scores = brute(ids, vecs, queries[:3], n)
    assert [sorted(row) for row in everything.ids] == [sorted(row) for row in want_ids]
    assert [row[:10] for row in everything.ids] == [row[:10] for row in want_ids]
    np.testing.assert_allclose(everything.scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "faiss-cpu"])
def test_approximate_search_sees_updates_at_once(backend):
    rng = np.random.default_rng(31)
    d = 32
    centers = unit(rng, 50, d)
    vecs = clustered(rng, 3000, d, centers)
    idx = SlotVectorIndex(d, backend=backend, approx_threshold=2000, nprobe=4)
    idx.apply({f"i{j}": vecs[j] for j in range(1500)})
    assert "+ivf" not in idx.search_path
    idx.apply({f"i{j}": vecs[j] for j in range(1500, 2500)})
    assert idx.search_path.endswith("+ivf")
    ivf = idx._approx
    assert ivf.index.ntotal == 2500
    fresh = clustered(rng, 20, d, centers)
    idx.apply({f"new{j}": fresh[j] for j in range(20)})
    hits = idx.search_latest(fresh, k=1)
    assert hits.ids == [[f"new{j}"] for j in range(20)]
    np.testing.assert_allclose(hits.scores[:, 0], 1.0, atol=1e-5)
    idx.apply({"i7": fresh[0]}, deletes=["new0", "i8"])  # an overwrite and two deletes
    assert idx._approx is ivf and ivf.index.ntotal == 2521 and not idx._free  # added, never removed or reused
    hits = idx.search_latest(np.stack([fresh[0], vecs[7], vecs[8]]), k=30)
    assert hits.ids[0][0] == "i7" and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert all("new0" not in row and "i8" not in row for row in hits.ids)
    assert "i7" not in hits.ids[1][:1] or hits.scores[1, 0] < 0.999  # the old vector of i7 is gone
    view = idx._acquire()  # a reader at this version: later upserts land in the same IVF index, past its view
    try:
        idx.apply({f"late{j}": fresh[j] for j in range(20)})
        scores, slots = view.approx.topk(view, fresh, 5, idx._store.topk)
        assert slots.max() < len(view.live) and all(view.live[slots.ravel()])
    finally:
        idx._release(view)
    assert set(idx.search_latest(fresh[3], k=2).ids[0]) == {"new3", "late3"}


def test_approximate_mode_through_compaction_and_below_the_threshold():
    rng = np.random.default_rng(32)
    d = 32
    centers = unit(rng, 40, d)
    vecs = clustered(rng, 3000, d, centers)
    idx = SlotVectorIndex(d, backend="faiss-cpu", approx_threshold=1000, min_dead_to_compact=200,
                          max_dead_fraction=0.25)
    idx.apply({f"i{j}": vecs[j] for j in range(1600)})
    first = idx._approx
    assert first is not None and first.built_live == 1600
    idx.apply(deletes=[f"i{j}" for j in range(0, 1600, 3)])  # 534 dead: compaction renumbers and rebuilds
    assert idx._used == len(idx) == 1066 and idx._approx is not first
    np.testing.assert_array_equal(idx._approx.centroids, first.centroids)  # centroids reused, not retrained
    assert idx._approx.index.ntotal == 1066 and idx.search_path == "faiss-cpu+ivf"
    alive = [j for j in range(1600) if j % 3]
    queries = clustered(rng, 50, d, centers)
    hits = idx.search_latest(queries, k=10)
    want, _ = brute([f"i{j}" for j in alive], vecs[alive], queries, 10)
    assert recall_at(hits.ids, want) >= 0.9
    idx.apply(deletes=[f"i{j}" for j in alive[:300]])  # 766 live: below the threshold, exact again
    assert idx.search_path == "faiss-cpu"
    rest = alive[300:]
    hits = idx.search_latest(queries, k=10)
    assert hits.ids == brute([f"i{j}" for j in rest], vecs[rest], queries, 10)[0]
    idx.compact()
    assert idx._approx is None and idx.search_path == "faiss-cpu"
    idx.apply({f"i{j}": vecs[j] for j in range(1600, 3000)})  # 2166 live: trained afresh
    assert idx._approx is not None and idx._approx.built_live == 2166 and idx.search_path == "faiss-cpu+ivf"


def test_approximate_snapshot_round_trip():
    rng = np.random.default_rng(33)
    d = 16
    vecs = clustered(rng, 1200, d, unit(rng, 20, d))
    idx = SlotVectorIndex(d, backend="cpu", approx_threshold=1000, nprobe=64)
    idx.apply({f"i{j}": vecs[j] for j in range(1200)})
    arr = idx.to_arrays()
    copy = SlotVectorIndex.from_arrays(arr.ids, arr.vectors, arr.version, backend="faiss-cpu",
                                       approx_threshold=1000, nprobe=64)
    assert copy.search_path == "faiss-cpu+ivf" and copy.version == 1
    queries = unit(rng, 10, d)
    assert copy.search_latest(queries, 5).ids == idx.search_latest(queries, 5).ids  # same training, same lists


@pytest.mark.gpu
def test_faiss_gpu_matches_numpy():
    if vectors_mod._faiss_gpu_count() == 0:
        pytest.skip("faiss has no GPU support here (faiss-cpu installed, or no CUDA GPU visible): "
                    "on a GPU host install faiss-gpu-cu12 to run this test")
    rng = np.random.default_rng(40)
    d = 32
    ref = SlotVectorIndex(d, capacity=8, backend="cpu", min_dead_to_compact=40)
    gpu = SlotVectorIndex(d, capacity=8, backend="gpu", min_dead_to_compact=40)
    assert gpu.search_path == "faiss-gpu" and gpu._store.max_k == 2048
    queries = unit(rng, 12, d)
    for ups, dels in random_batches(np.random.default_rng(41), 300, d, 80):
        assert ref.apply(ups, dels) == gpu.apply(ups, dels)
        for k in (1, 10, 100):
            ha, hb = ref.search_latest(queries, k), gpu.search_latest(queries, k)
            assert ha.ids == hb.ids
            np.testing.assert_allclose(ha.scores, hb.scores, rtol=1e-4, atol=1e-4)
    big = unit(rng, 5000, d)
    ref.apply({f"b{j}": big[j] for j in range(5000)})
    gpu.apply({f"b{j}": big[j] for j in range(5000)})
    ha, hb = ref.search_latest(queries[:2], 3000), gpu.search_latest(queries[:2], 3000)  # past the GPU's k limit
    assert ha.ids == hb.ids
    want, got = as_dict(ref), as_dict(gpu)
    assert sorted(want) == sorted(got) and all(np.allclose(want[i], got[i]) for i in want)
    approx = SlotVectorIndex(64, backend="gpu", approx_threshold=5_000)
    centers = unit(rng, 200, 64)
    vecs = clustered(rng, 20_000, 64, centers)
    ids = [f"i{j}" for j in range(20_000)]
    for start in range(0, 20_000, 2000):
        approx.apply(dict(zip(ids[start:start + 2000], vecs[start:start + 2000], strict=True)))
    assert approx.search_path == "faiss-gpu+ivf"
    q = clustered(rng, 200, 64, centers)
    assert recall_at(approx.search_latest(q, 10).ids, brute(ids, vecs, q, 10)[0]) >= 0.9
    approx.apply({"fresh": q[0]}, deletes=["i0"])
    hits = approx.search_latest(np.stack([q[0], vecs[0]]), 10)
    assert hits.ids[0][0] == "fresh" and "i0" not in hits.ids[1]
