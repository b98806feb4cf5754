"""Vector search benchmark: ``SlotVectorIndex`` on each backend given (numpy on the CPU, torch or faiss on a GPU)
beside the raw library limit (a plain ``matrix @ q`` + top-k in numpy, and in torch on the GPU when present), on
the same seeded unit vectors and queries, in one run. Prints one JSON object. Needs no faiss unless a faiss
backend is asked for, so it runs on a bare GPU machine (``bench/gpu_check.sh``).

    python bench/vector_search.py [--items 1000000] [--dim 384] [--queries 200] [--batch 256] [--backends cpu,gpu]

Per backend: ``search_path``, ``build_s`` (all items upserted in batches of ``--upsert-batch``, as a stream would),
``upserts_per_s``, ``query_ms`` p50/p99 (k=10, one query at a time), ``batch_queries_per_s`` (``--batch`` queries
per call), ``recall_at_10_vs_numpy`` (ids against the exact numpy answer; float32 ties can swap a rank).
Headline: ``speedup_vs_cpu`` per backend (single-query p50 and batched throughput) and ``overhead_vs_raw``
(our p50 over the raw library's p50 on the same device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from index.vectors import SlotVectorIndex


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def time_single(search, queries: np.ndarray) -> list[float]:
    search(queries[:1])  # warm-up: kernels, allocator, BLAS threads
    out = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :])
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_batched(search, queries: np.ndarray, batch: int, repeats: int = 3) -> float:
    search(queries[:batch])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(queries), batch):
            search(queries[s:s + batch])
        rates.append(len(queries) / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def raw_numpy(matrix: np.ndarray, k: int):
    def search(q: np.ndarray) -> np.ndarray:
        scores = q @ matrix.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1)
    return search


def raw_torch(matrix: np.ndarray, k: int):
    import torch

    m = torch.from_numpy(matrix).cuda()

    def search(q: np.ndarray) -> np.ndarray:
        return torch.topk(torch.from_numpy(q).cuda() @ m.T, k, dim=1).indices.cpu().numpy()
    return search


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200, help="single queries timed per backend")
    p.add_argument("--batch", type=int, default=256, help="queries per call in the batched figure")
    p.add_argument("--upsert-batch", type=int, default=10_000)
    p.add_argument("--backends", default="cpu,gpu", help="SlotVectorIndex backends: cpu, gpu, faiss-cpu, auto")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    log(f"{args.items:,} unit vectors of dim {args.dim}")
    base = unit(rng, args.items, args.dim)
    ids = [f"item-{i}" for i in range(args.items)]
    queries = unit(rng, max(args.queries, args.batch * 4), args.dim)
    k = args.k

    exact = raw_numpy(base, k)
    truth = np.vstack([exact(queries[s:s + args.batch]) for s in range(0, len(queries), args.batch)])
    raw = {"numpy": {"query_ms_p50": pct(time_single(exact, queries[:args.queries]), 50),
                     "batch_queries_per_s": time_batched(exact, queries, args.batch)}}
    log(f"raw numpy: p50 {raw['numpy']['query_ms_p50']} ms")
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        rt = raw_torch(base, k)
        raw["torch-cuda"] = {"query_ms_p50": pct(time_single(rt, queries[:args.queries]), 50),
                             "batch_queries_per_s": time_batched(rt, queries, args.batch)}
        log(f"raw torch: p50 {raw['torch-cuda']['query_ms_p50']} ms")

    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            idx = SlotVectorIndex(args.dim, capacity=1024, backend=backend)
        except (RuntimeError, ImportError) as e:  # e.g. 'gpu' on a machine without one: say so, measure the rest
            log(f"{backend}: skipped ({e})")
            results[backend] = {"skipped": str(e)}
            continue
        t0 = time.perf_counter()
        for s in range(0, args.items, args.upsert_batch):
            idx.apply(dict(zip(ids[s:s + args.upsert_batch], base[s:s + args.upsert_batch], strict=True)))
        build = time.perf_counter() - t0

        def ours(q: np.ndarray, idx=idx):
            return idx.search_latest(q, k)
        single = time_single(ours, queries[:args.queries])
        got = [idx.search_latest(queries[s:s + args.batch], k).ids for s in range(0, len(queries), args.batch)]
        got_ids = [int(i.split("-")[1]) for rows in got for row in rows for i in row]
        got_arr = np.array(got_ids).reshape(len(queries), k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got_arr, truth, strict=True)]))
        path = idx.search_path
        results[backend] = {
            "search_path": path,
            "build_s": round(build, 2),
            "upserts_per_s": round(args.items / build, 1),
            "query_ms": {"p50": pct(single, 50), "p99": pct(single, 99)},
            "batch_queries_per_s": time_batched(ours, queries, args.batch),
            "recall_at_10_vs_numpy": round(recall, 4),
        }
        raw_key = "torch-cuda" if path.startswith("torch-cuda") else "numpy" if path == "numpy" else None
        if raw_key in raw:
            results[backend]["overhead_vs_raw"] = round(results[backend]["query_ms"]["p50"]
                                                        / raw[raw_key]["query_ms_p50"], 2)
        log(f"{backend} ({path}): {json.dumps(results[backend])}")
        del idx

    cpu = results.get("cpu", {})
    speedup = {}
    if "query_ms" in cpu:
        for b, r in results.items():
            if b != "cpu" and "query_ms" in r:
                speedup[b] = {"single_query_p50": round(cpu["query_ms"]["p50"] / r["query_ms"]["p50"], 1),
                              "batched": round(r["batch_queries_per_s"] / cpu["batch_queries_per_s"], 1)}
    print(json.dumps({
        "benchmark": "vector_search",
        "items": args.items, "dim": args.dim, "k": k, "batch": args.batch,
        "backends": results,
        "raw": raw,
        "speedup_vs_cpu": speedup,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else None},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
