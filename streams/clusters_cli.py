"""`driftrag clusters build|show|list`: bootstrap, inspect and list interest-cluster codebooks.

``build`` reads content events (the contract's JSONL: one ``items`` message value per line), keeps the last
event per item, samples at most ``--sample`` items, embeds their texts, clusters them into a codebook and saves
it as the new current version of the store (``--out``, default ``settings.clusters.codebook_dir``). The running
job keeps the codebook it loaded; a new one is picked up where the job (re)loads ``CURRENT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from index.codebooks import CodebookStore
from streams.contract import ContentEvent, RawMessage, Validator

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="clusters_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build a codebook from content events and make it current")
    build.add_argument("--items", type=Path, required=True, metavar="FILE.jsonl",
                       help="content events, one JSON object per line (invalid lines are skipped and counted)")
    build.add_argument("--k", type=int, help="number of clusters (default: settings.clusters.k)")
    build.add_argument("--sample", type=int, help="items to cluster at most (default: settings.clusters.sample)")
    build.add_argument("--seed", type=int, default=0, help="sampling and k-means seed")
    build.add_argument("--keywords", type=int, default=8, help="keywords per cluster")
    build.add_argument("--backend", help="embedding backend: auto, onnx, onnx-int8, torch "
                                         "(default: settings.embedding.backend, else auto)")
    build.add_argument("--model", help="embedding model (default: settings.embedding.model, else 'default')")
    build.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto", help="FAISS k-means on the GPU")
    build.add_argument("--no-activate", action="store_true", help="save the version without making it current")
    show = sub.add_parser("show", help="print a codebook's metadata and keywords as JSON")
    show.add_argument("--version", help="version to show (default: the current one)")
    sub.add_parser("list", help="list stored versions; the current one is marked with *")
    for p in (build, show, sub.choices["list"]):
        p.add_argument("--out", "--dir", dest="dir", type=Path, metavar="DIR",
                       help="codebook store (default: settings.clusters.codebook_dir)")


def run(args: argparse.Namespace, settings: Any) -> int:
    store = CodebookStore(args.dir or settings.clusters.codebook_dir)
    if args.clusters_command == "build":
        return _build(args, settings, store)
    if args.clusters_command == "show":
        print(json.dumps(store.load_metadata(args.version), indent=2))
        return 0
    current = store.current_version()
    for v in store.versions():
        print(f"{'*' if v == current else ' '} {v}")
    return 0


def _say(msg: str) -> None:
    print(f"clusters: {msg}", file=sys.stderr, flush=True)


def read_items(path: Path, validator: Validator) -> tuple[dict[str, str], Counter[str]]:
    """item_id -> text (the last valid event per item wins, as an update would), and invalid lines by reason."""
    if not path.is_file():
        raise FileNotFoundError(f"items file not found: {path}")
    texts: dict[str, str] = {}
    invalid: Counter[str] = Counter()
    with path.open("rb") as f:
        for n, line in enumerate(f):
            event = validator.validate(RawMessage(validator.items_topic, 0, n, None, line.rstrip(b"\r\n")))
            if isinstance(event, ContentEvent):
                texts[event.item_id] = event.text
            else:
                invalid[getattr(event, "reason", "invalid")] += 1
    return texts, invalid


def sample_items(texts: dict[str, str], n: int, seed: int) -> list[str]:
    """At most ``n`` texts, a seeded uniform sample without replacement, in file order."""
    values = list(texts.values())
    if len(values) <= n:
        return values
    keep = np.sort(np.random.default_rng(seed).choice(len(values), size=n, replace=False))
    return [values[i] for i in keep.tolist()]


def _build(args: argparse.Namespace, settings: Any, store: CodebookStore) -> int:
    from operators.clusters import build_codebook
    from operators.embedding import make_embedder, model_id

    k = args.k if args.k is not None else settings.clusters.k
    n_sample = args.sample if args.sample is not None else settings.clusters.sample
    if k < 1 or n_sample < 1:
        raise ValueError(f"--k and --sample must be >= 1, got {k} and {n_sample}")
    embedding = getattr(settings, "embedding", None)
    backend = args.backend or getattr(embedding, "backend", "auto")
    model = args.model or getattr(embedding, "model", "default")
    t0 = time.monotonic()
    items, invalid = read_items(args.items, Validator.from_settings(settings))
    _say(f"read {len(items)} items from {args.items} ({sum(invalid.values())} invalid lines skipped)")
    texts = sample_items(items, n_sample, args.seed)
    if len(texts) < k:
        raise ValueError(f"{len(texts)} valid items in {args.items}: need at least k={k}")
    embedder = make_embedder(backend=backend, model=model)
    t_embed = time.monotonic()
    vectors = embedder.encode(texts)
    embed_s = time.monotonic() - t_embed
    _say(f"embedded {len(texts)} texts with {embedder.name} in {embed_s:.1f} s")
    t_kmeans = time.monotonic()
    gpu = {"auto": None, "yes": True, "no": False}[args.gpu]
    codebook = build_codebook(vectors, texts, k, model=model_id(model), seed=args.seed,
                              top_n_keywords=args.keywords, gpu=gpu)
    cluster_s = time.monotonic() - t_kmeans
    path = store.save(codebook, activate=not args.no_activate)
    _say(f"saved {codebook.version} to {path}" + ("" if args.no_activate else " (current)"))
    summary = {
        "version": codebook.version, "path": str(path), "current": store.current_version() == codebook.version,
        "k": codebook.k, "dim": codebook.dim, "model": codebook.model, "embedder": embedder.name,
        "items": len(items), "sampled": len(texts), "invalid_lines": dict(sorted(invalid.items())),
        "novelty_threshold": round(codebook.novelty_threshold, 6), "sizes": list(codebook.sizes),
        "keywords": [list(kw) for kw in codebook.keywords],
        "seconds": {"embed": round(embed_s, 3), "cluster": round(cluster_s, 3),
                    "total": round(time.monotonic() - t0, 3)},
    }
    print(json.dumps(summary))
    return 0
