"""Live-index update benchmark: upserts/s and single-query latency of ``SlotVectorIndex`` beside FAISS
``IndexIDMap2(IndexFlatIP)`` updated by ``remove_ids`` + ``add_with_ids``, on the same seeded updates, in one run.
Prints one JSON object.

    python bench/index_upsert.py [--items 200000] [--dim 384] [--batch 100] [--batches 500] [--idmap-seconds 20]
                                 [--backend cpu|faiss-cpu|gpu|auto] [--approx-threshold N] [--nprobe 16]

Updates come in batches (as a stream would send them): ``--update-fraction`` of each batch re-embeds existing ids,
the rest are new ids. FAISS gets the same batches in the same order until ``--idmap-seconds`` have passed (its
updates are O(N) each, so it sees a prefix); rates are per update. Headline keys: ``upserts_per_s``,
``upsert_speedup_vs_idmap2``, ``query_ms`` (p50/p99, k=10, one query at a time) and ``recall_at_10`` against
numpy brute force over the state each index should hold. ``search_path`` says what searched ours (``numpy``,
``faiss-cpu``, ``faiss-gpu`` or ``torch-cuda``, ``+ivf`` when approximate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import faiss
import numpy as np

from index.vectors import SlotVectorIndex


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_batches(rng, items: int, dim: int, batch: int, batches: int, update_fraction: float):
    """[(int ids (batch,), vectors (batch, dim))]: re-embeds of existing ids and brand-new ids."""
    out, next_id = [], items
    n_upd = round(batch * update_fraction)
    for _ in range(batches):
        upd = rng.choice(next_id, size=n_upd, replace=False)
        new = np.arange(next_id, next_id + batch - n_upd)
        next_id += batch - n_upd
        out.append((np.concatenate([upd, new]).astype(np.int64), unit(rng, batch, dim)))
    return out, next_id


def truth(base: np.ndarray, batches, total_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors by int id, alive mask) after ``batches`` are applied to ``base``."""
    mat = np.zeros((total_ids, base.shape[1]), dtype=np.float32)
    mat[: len(base)] = base
    alive = np.zeros(total_ids, dtype=bool)
    alive[: len(base)] = True
    for ids, vecs in batches:
        mat[ids] = vecs
        alive[ids] = True
    return mat, alive


def recall(found: list[list[int]], mat: np.ndarray, alive: np.ndarray, queries: np.ndarray, k: int) -> float:
    live = np.flatnonzero(alive)
    scores = queries @ mat[live].T
    top = live[np.argpartition(-scores, k - 1, axis=1)[:, :k]]
    return float(np.mean([len(set(f) & set(t.tolist())) / k for f, t in zip(found, top, strict=True)]))


def percentiles(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batches", type=int, default=500)
    p.add_argument("--update-fraction", type=float, default=0.8)
    p.add_argument("--idmap-seconds", type=float, default=20.0)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backend", default="cpu", choices=["cpu", "faiss-cpu", "gpu", "auto"],
                   help="SlotVectorIndex backend (gpu: faiss-gpu where installed, else torch)")
    p.add_argument("--approx-threshold", type=int, default=None,
                   help="live items from which SlotVectorIndex searches an IVF index (default: always exact)")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per query in approximate mode")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    base = unit(rng, args.items, args.dim)
    batches, total_ids = make_batches(rng, args.items, args.dim, args.batch, args.batches, args.update_fraction)
    queries = unit(rng, args.queries, args.dim)
    log(f"{args.items} items, dim {args.dim}, {args.batches} batches of {args.batch}")

    # ours: build, then stream the update batches
    ours = SlotVectorIndex(args.dim, capacity=args.items + args.items // 4, backend=args.backend,
                           approx_threshold=args.approx_threshold, nprobe=args.nprobe)
    t0 = time.perf_counter()
    for start in range(0, args.items, 10_000):
        ours.apply({f"i{j}": base[j] for j in range(start, min(start + 10_000, args.items))})
    build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for ids, vecs in batches:
        ours.apply(dict(zip((f"i{j}" for j in ids.tolist()), vecs, strict=True)))
    ours_s = time.perf_counter() - t0
    ours_updates = args.batch * args.batches
    log(f"ours: {ours_updates / ours_s:,.0f} upserts/s")

    # FAISS IndexIDMap2(IndexFlatIP): remove_ids + add_with_ids per batch, for a time-limited prefix
    idmap = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    t0 = time.perf_counter()
    idmap.add_with_ids(base, np.arange(args.items, dtype=np.int64))
    build_idmap = time.perf_counter() - t0
    done, t0 = 0, time.perf_counter()
    for ids, vecs in batches:
        idmap.remove_ids(ids)
        idmap.add_with_ids(vecs, ids)
        done += 1
        if time.perf_counter() - t0 > args.idmap_seconds:
            break
    idmap_s = time.perf_counter() - t0
    idmap_updates = args.batch * done
    log(f"IndexIDMap2: {idmap_updates / idmap_s:,.0f} upserts/s over {done} batches")

    # single-query latency and recall against the state each should hold
    k = args.k
    ours_ms, ours_found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = ours.search_latest(q, k)
        ours_ms.append((time.perf_counter() - t) * 1e3)
        ours_found.append([int(i[1:]) for i in hits.ids[0]])
    idmap_ms, idmap_found = [], []
    for q in queries:
        t = time.perf_counter()
        _, labels = idmap.search(q[None, :], k)
        idmap_ms.append((time.perf_counter() - t) * 1e3)
        idmap_found.append(labels[0].tolist())
    mat, alive = truth(base, batches, total_ids)
    ours_recall = recall(ours_found, mat, alive, queries, k)
    mat, alive = truth(base, batches[:done], total_ids)
    idmap_recall = recall(idmap_found, mat, alive, queries, k)

    ours_rate, idmap_rate = ours_updates / ours_s, idmap_updates / idmap_s
    result = {
        "bench": "index_upsert",
        "items": args.items, "dim": args.dim, "batch": args.batch, "update_fraction": args.update_fraction,
        "backend": ours.backend, "search_path": ours.search_path, "approx_threshold": args.approx_threshold,
        "nprobe": args.nprobe if args.approx_threshold is not None else None, "k": k, "queries": args.queries,
        "updates": {"slot_vector_index": ours_updates, "faiss_idmap2": idmap_updates},
        "upserts_per_s": {"slot_vector_index": round(ours_rate), "faiss_idmap2": round(idmap_rate)},
        "upsert_speedup_vs_idmap2": round(ours_rate / idmap_rate, 1),
        "build_s": {"slot_vector_index": round(build_ours, 3), "faiss_idmap2": round(build_idmap, 3)},
        "query_ms": {"slot_vector_index": percentiles(ours_ms), "faiss_idmap2": percentiles(idmap_ms)},
        "recall_at_10": {"slot_vector_index": round(ours_recall, 4), "faiss_idmap2": round(idmap_recall, 4)},
        "live_items": len(ours), "capacity": ours.capacity, "version": ours.version,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                 "faiss": faiss.__version__},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
