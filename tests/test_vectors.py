"""SlotVectorIndex: exact results against numpy brute force, updates, slot reuse, compaction, consistency under
concurrent writes, argument checks and backend selection."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import index.vectors as vectors_mod
from index.vectors import SlotVectorIndex, VectorArrays, choose_backend, should_compact


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
    np.testing.assert_array_equal(after.scores, before.scores)
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
    with pytest.raises(ValueError, match="valid values: auto, cpu, gpu"):
        SlotVectorIndex(4, backend="tpu")
    with pytest.raises(NotImplementedError, match="approximate search"):
        SlotVectorIndex(4, backend="cpu", approx_threshold=100_000)
    assert idx.version == 0 and len(idx) == 0  # failed batches changed nothing


def test_choose_backend_cases():
    assert choose_backend("cpu", 0) == "cpu" and choose_backend("cpu", 4) == "cpu"
    assert choose_backend("auto", 0) == "cpu" and choose_backend("auto", 1) == "gpu"
    assert choose_backend("gpu", 1) == "gpu"
    with pytest.raises(RuntimeError, match="pip install torch"):
        choose_backend("gpu", 0)
    with pytest.raises(ValueError, match="valid values: auto, cpu, gpu"):
        choose_backend("cuda", 1)


def test_backend_selection_without_gpu(monkeypatch):
    monkeypatch.setattr(vectors_mod, "_gpu_count", lambda: 0)
    assert SlotVectorIndex(4, backend="auto").backend == "cpu"
    with pytest.raises(RuntimeError, match="backend='gpu' needs a CUDA GPU"):
        SlotVectorIndex(4, backend="gpu")


def test_should_compact_cases():
    assert not should_compact(0, 0)
    assert not should_compact(10, 1023)  # below min_dead
    assert should_compact(10, 1024)
    assert not should_compact(10_000, 2000)  # 17% dead
    assert should_compact(10_000, 4000, max_dead_fraction=0.25)
    assert should_compact(3, 2, min_dead=2, max_dead_fraction=0.25)


@pytest.mark.gpu
def test_gpu_backend_matches_cpu():
    if vectors_mod._gpu_count() == 0:
        pytest.skip("no CUDA GPU visible to torch")
    rng = np.random.default_rng(11)
    vecs = unit(rng, 500, 32)
    gpu = SlotVectorIndex(32, capacity=8, backend="gpu", min_dead_to_compact=10)
    gpu.apply({f"i{j}": vecs[j] for j in range(500)})
    gpu.apply(deletes=[f"i{j}" for j in range(0, 500, 3)])
    gpu.apply({f"i{j}": vecs[(j + 7) % 500] for j in range(1, 200, 3)})
    ids, mat = state(gpu)
    queries = unit(rng, 10, 32)
    hits = gpu.search_latest(queries, k=10)
    want_ids, want_scores = brute(ids, mat, queries, 10)
    assert hits.ids == want_ids
    np.testing.assert_allclose(hits.scores, want_scores, rtol=1e-4, atol=1e-5)


def test_readers_see_one_consistent_version_while_a_writer_writes():
    """Readers search everything (k = all) while one writer upserts, overwrites, deletes and re-inserts in batches
    (with slot reuse, growth and automatic compaction). Each reader checks the ids and every score of its hits
    against the exact state the writer recorded for that version: a torn row, a stale or future row, or an id
    mapped to another id's vector fails."""
    n, d, variants = 64, 8, 16
    rng = np.random.default_rng(12)
    table = unit(rng, n * variants, d).reshape(n, variants, d)  # table[i, g % variants] = id i at generation g
    idx = SlotVectorIndex(d, capacity=4, backend="cpu", min_dead_to_compact=8, max_dead_fraction=0.2)
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
