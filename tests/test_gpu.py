"""The CUDA paths, in one file that needs neither faiss nor Kafka: the GPU check (``bench/gpu_check.sh``) runs it on
a lent GPU machine that has torch and sentence-transformers but none of our other heavy dependencies. Every test
here skips, saying why, where torch sees no CUDA GPU; the CPU paths they mirror are tested in test_embedding.py
and test_vectors.py."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

from index import vectors as vectors_mod  # noqa: E402
from index.vectors import SlotVectorIndex  # noqa: E402
from operators.embedding import make_embedder  # noqa: E402
from streams.generator import GeneratorConfig, WorkloadGenerator  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU paths are tested elsewhere)"),
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    out = [orjson.loads(m.value)["text"] for m in WorkloadGenerator(GeneratorConfig(seed=7, events=20_000)).messages()
           if m.topic == "items" and m.bad_kind is None]
    return out[:600]


@pytest.fixture(scope="module")
def cpu_vecs(texts) -> np.ndarray:
    """The fp32 reference: sentence-transformers on the CPU."""
    return make_embedder("torch", device="cpu").encode(texts)


def test_torch_fp16_on_cuda_agrees_with_cpu_fp32(texts, cpu_vecs):
    e = make_embedder("torch", device="cuda", batch_size=256)
    assert e.name == "torch/cuda-fp16"
    v = e.encode(texts)
    assert v.shape == cpu_vecs.shape and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    cos = (v * cpu_vecs).sum(1)
    assert cos.min() >= 0.99, cos.min()
    # batching must not change a text's vector beyond fp16 noise (padding differs per batch)
    one_by_one = np.vstack([e.encode([t]) for t in texts[:32]])
    assert ((one_by_one * v[:32]).sum(1)).min() >= 0.998


def test_onnx_on_cuda_or_a_clear_error(texts, cpu_vecs):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ImportError, match="onnxruntime-gpu"):
            make_embedder("onnx", device="cuda")
        return
    e = make_embedder("onnx", device="cuda")
    assert e.name == "onnx/cuda-fp16"
    assert ((e.encode(texts) * cpu_vecs).sum(1)).min() >= 0.99


def test_auto_picks_a_cuda_backend(texts, cpu_vecs):
    import onnxruntime as ort

    e = make_embedder("auto")
    want = "onnx/cuda-fp16" if "CUDAExecutionProvider" in ort.get_available_providers() else "torch/cuda-fp16"
    assert e.name == want
    assert ((e.encode(texts[:100]) * cpu_vecs[:100]).sum(1)).min() >= 0.99


def test_auto_vector_index_searches_on_the_gpu():
    """``DRIFTRAG_INDEX__BACKEND=auto`` (the default) builds the GPU index where a GPU is visible: faiss-gpu when
    installed, else torch."""
    idx = SlotVectorIndex(16, backend="auto")
    assert idx.backend == "gpu"
    assert idx.search_path in ("faiss-gpu", "torch-cuda")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gpu_vector_index_matches_brute_force(monkeypatch):
    """Backend 'gpu' on torch (what runs where torch sees CUDA but faiss has no GPU support): upserts, deletes,
    overwrites, slot reuse and growth, then exact top-k against numpy."""
    monkeypatch.setattr(vectors_mod, "_faiss_gpu_count", lambda: 0)
    rng = np.random.default_rng(11)
    vecs = _unit(rng, 500, 32)
    gpu = SlotVectorIndex(32, capacity=8, backend="gpu", min_dead_to_compact=10)
    assert gpu.search_path == "torch-cuda"
    gpu.apply({f"i{j}": vecs[j] for j in range(500)})
    gpu.apply(deletes=[f"i{j}" for j in range(0, 500, 3)])
    gpu.apply({f"i{j}": vecs[(j + 7) % 500] for j in range(1, 200, 3)})
    arr = gpu.to_arrays()
    queries = _unit(rng, 10, 32)
    hits = gpu.search_latest(queries, k=10)
    scores = queries @ arr.vectors.T
    # Rows overwritten with another row's vector tie exactly: the index orders ties by id, on every backend.
    # Otherwise GPU and CPU sums differ by float32 rounding, so ids must agree wherever the scores are apart by
    # more than TOL, and every score within TOL.
    tol = 1e-5
    for row, got, got_scores in zip(scores, hits.ids, hits.scores, strict=True):
        want = sorted(range(len(row)), key=lambda j, row=row: (-row[j], arr.ids[j]))[:10]
        np.testing.assert_allclose(got_scores, row[want], atol=tol)
        pos = {i: j for j, i in enumerate(arr.ids)}
        np.testing.assert_allclose(row[[pos[i] for i in got]], got_scores, atol=tol)
        for r, j in enumerate(want):
            apart = all(abs(row[j] - row[want[o]]) > tol for o in (r - 1, r + 1) if 0 <= o < len(want))
            if apart:
                assert got[r] == arr.ids[j], (r, got, [arr.ids[w] for w in want])
