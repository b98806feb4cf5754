"""Embedding benchmark: texts/s of each driftrag backend beside plain ``SentenceTransformer.encode`` on the same
generator texts, in one run. Prints one JSON object.

    python bench/embed.py [--texts 2000] [--repeats 3] [--backends onnx,onnx-int8,torch]

Headline keys: ``texts_per_s`` (per backend, plus ``plain_encode``), ``default_backend``,
``speedup_default_vs_encode`` (medians). On a CUDA host the GPU backends are measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import orjson

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators.embedding import choose_backend, make_embedder, resolve_model  # noqa: E402
from streams.generator import GeneratorConfig, WorkloadGenerator  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def generator_texts(n: int, seed: int = 7) -> list[str]:
    """Distinct content texts from the workload generator (the catalogue a live system embeds)."""
    # The catalogue size follows items_per_cluster (16 clusters), not the number of engagement events.
    config = GeneratorConfig(seed=seed, events=20_000, items_per_cluster=max(60, n // 16 + 10))
    texts = [orjson.loads(m.value)["text"] for m in WorkloadGenerator(config).messages()
             if m.topic == "items" and m.bad_kind is None]
    if len(texts) < n:
        raise RuntimeError(f"the generator gave {len(texts)} content texts, fewer than {n}")
    return texts[:n]


def timed(encode, texts: list[str], repeats: int) -> list[float]:
    encode(texts[:64])  # warm-up: lazy initialisation, kernels, allocator
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="onnx,onnx-int8,torch")
    p.add_argument("--model", default=None, help="model name or path (default: all-MiniLM-L6-v2, offline)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per model call inside a backend (default: the job's DRIFTRAG_EMBEDDING__BATCH_SIZE "
                        "default, what the pipeline passes)")
    args = p.parse_args()

    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    from streams.settings import EmbeddingSettings

    batch_size = args.batch_size or EmbeddingSettings().batch_size
    texts = generator_texts(args.texts)
    log(f"{len(texts)} generator texts, mean {statistics.mean(len(t) for t in texts):.0f} chars")
    cuda = torch.cuda.is_available()
    default, why = choose_backend(torch_cuda=cuda, ort_providers=ort.get_available_providers())
    rates: dict[str, list[float]] = {}

    device = "cuda" if cuda else "cpu"
    st = SentenceTransformer(resolve_model(args.model), device=device).float()  # as labelled, whatever is stored
    rates["plain_encode"] = timed(lambda t: st.encode(t, show_progress_bar=False), texts, args.repeats)
    log(f"plain SentenceTransformer.encode ({device}, fp32): {statistics.median(rates['plain_encode']):,.0f}/s")

    names = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            emb = make_embedder(backend, args.model, batch_size=batch_size)
        except ImportError as e:  # e.g. onnxruntime-gpu not installed: say so, measure the rest
            log(f"{backend}: skipped ({e})")
            continue
        names[backend] = emb.name
        rates[backend] = timed(emb.encode, texts, args.repeats)
        log(f"{emb.name}: {statistics.median(rates[backend]):,.0f}/s")

    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    result = {
        "benchmark": "embed",
        "texts": len(texts),
        "repeats": args.repeats,
        "batch_size": batch_size,
        "texts_per_s": med,
        "backend_devices": names,
        "default_backend": default,
        "default_reason": why,
        "speedup_default_vs_encode": round(med[default] / med["plain_encode"], 2) if default in med else None,
        "speedup_vs_encode": {k: round(v / med["plain_encode"], 2) for k, v in med.items() if k != "plain_encode"},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch_threads": torch.get_num_threads()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
