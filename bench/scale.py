"""Scale benchmark (issue 16, item 3): the job at K = 16, 256, 2,048 interest clusters and the live index at 10^5
(and, with a flag, 10^6) items. Prints one JSON object on stdout; progress goes to stderr as ``[bench] ...`` lines.

    python bench/scale.py                                    # K 16,256,2048, index 1e5, users 1e5,1e6: ~10 min
    python bench/scale.py --index-sizes 100000,1000000       # also 10^6 items (~+4 min, ~5 GB RAM)
    python bench/scale.py --events 300000 --items-per-topic 600 --users 100000 --ks 16,256,2048,4096

Per K (``clusters``): one workload (the generator's 28 topics, ``--items-per-topic`` items each, ``--events``
engagements, seed 7) is generated, its catalogue embedded once (warm embeddings, as ``bench/pipeline.py``), and
for each K a codebook of K clusters is k-means'd over those same item vectors (``build_codebook``, ``nredo=1``)
and saved; the job (``driftrag run --events F --items F --no-api``, 1 worker, drift on) then runs on the same
files with that codebook. The generator's ground truth has at most 28 clusters, so K > 28 cannot come from it: a
codebook of K is the cheapest faithful way (the job's own item -> cluster path, the same events for every K, only
the clusters differ, so memory differences are the per-cluster and per-pair state). Each job runs in a child
process: ``peak_rss_mb`` is its high-water mark (``VmHWM``: embedding model, catalogue, index, the same for every
K), ``run_peak_rss_mb`` the high-water mark of ``job.run()`` alone (reset just before it, Linux ``clear_refs``),
``run_rss_growth_mb`` that minus the RSS before the run: the job's state. ``drift_share`` is the drift steps'
(``drift_observations``, ``monitor_drift``, ``decide_cadence``, ...) share of the job's wall time, by
``bench/profile_pipeline.py``'s per-step timers. ``live_pairs``: pairs in the live index after the run.
``snapshot``: ``LiveIndex.save_snapshot`` of the job's index (bytes on disk, seconds). ``context_ms``:
``LiveIndex.context(clusters=[c1, c2])`` called in process (not over HTTP) for ``--context-queries`` pairs drawn
from the live pairs (at most ``--context-seconds``), with the answer cache off (every answer computed); ``sources``
counts how each was answered (the pair's own successors, neighbour pairs, or the global blend over every pair).
``drift_state_snapshot``: the drift steps' state (the ordering step's hold and cadence clock, the cadence decisions
with their mirror of C_p, the one shard and the combiner at one worker) as Bytewax's ``snapshot`` last handed it
(what a recovery snapshot pickles), pickled once after the run: bytes and seconds.

Per index size (``index``): N synthetic unit vectors of dim 384 around 256 centres (cos ~0.7 to their centre:
structure like embeddings, so an IVF index has clusters to find), applied to a ``LiveIndex`` (the service's
in-process index, backend as the service's default) as ``item:`` mutations in batches of 1,000 (``upserts_per_s``:
``LiveIndex.apply`` alone, mutations built outside the timer), plus a codebook of those 256 centres and 4,096
pairs. ``exact``: the index's own search (``search_latest``, k=10, one query at a time). ``approx``: the same
vectors in a ``SlotVectorIndex`` in approximate mode (FAISS ``IndexIVFFlat``, nlist ~4 sqrt(N), nprobe 16; build
includes training), recall@10 against the exact answer. ``context_ms``: ``LiveIndex.context(history=[3 item
ids])`` in process, cache off. ``snapshot``: ``save_snapshot`` bytes and seconds. Children again, for peak RSS
(reset after the first batch, which loads the vector backend).

``ratios``: events/s K=256 / K=16 and K=2048 / K=256; the run's RSS growth per live pair at each K (flat means
memory linear in pairs; it also holds the per-cluster state) and per pair added between consecutive K; index
figures 10^6 / 10^5 where both ran. ``cliffs`` names every ratio past its line: from one K to the next, events/s
below 0.5x, context p99 above 2x, RSS per live pair above 2x; from one index size to the next, upserts/s below
0.5x, exact p99 or snapshot seconds above 1.5x the size ratio, approximate or context p99 above the size ratio.

Per user count (``users``, ``--user-counts``): the job's transition-rule step (``mine_triples``: users per shard)
alone in a Bytewax flow, fed ``--per-user`` positive engagements per user (random users and clusters, generated as
the flow reads them), and the peer, the same rule with one Bytewax key per user (``op.stateful_batch``), each in
a child: events/s, run RSS growth per user, the state's pickled bytes per user, ``same_triples``, and the ratios.

Budget: the default (K 16/256/2048 at 100,000 events, index 10^5, users 10^5 and 10^6) is sized for ~10 minutes
on 2 cores; 10^6 items is ``--index-sizes 100000,1000000`` (``not_run`` says so when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.index_upsert import percentiles  # noqa: E402
from bench.pipeline import build_codebook_dir, log, make_job  # noqa: E402
from bench.profile_pipeline import StepTimes, instrument  # noqa: E402  (the per-step timers)

DIM, CENTRES, BATCH = 384, 256, 1_000


def rss_mb() -> dict[str, float]:
    """Resident set now and its high-water mark (``VmRSS``, ``VmHWM`` of ``/proc/self/status``), MiB."""
    f = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(f[v].split()[0]) / 1024, 1) for k, v in (("now", "VmRSS"), ("peak", "VmHWM"))}


def reset_peak_rss() -> float:
    """Reset the high-water mark to the current RSS (Linux ``clear_refs`` 5); returns the RSS then, MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mb()["now"]


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def timed_snapshot(live: Any, d: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    snap = live.save_snapshot(d)
    return {"bytes": dir_bytes(snap), "seconds": round(time.perf_counter() - t0, 3)}


def timed_context(live: Any, requests: list[dict[str, Any]], budget_s: float) -> dict[str, Any]:
    """Latency of ``live.context`` over ``requests`` (stopping after ``budget_s``), with the answers' ``source``
    (exact pair, neighbour pairs, global: the fallbacks cost more)."""
    live.context_cache_entries = 0  # every answer computed, none from the per-version cache
    for r in requests[:10]:  # warm-up
        live.context(**r)
    ms, sources, end = [], Counter(), time.perf_counter() + budget_s
    for r in requests:
        t0 = time.perf_counter()
        sources[live.context(**r)["source"]] += 1
        ms.append((time.perf_counter() - t0) * 1e3)
        if t0 > end:
            break
    return {**percentiles(ms), "queries": len(ms), "sources": dict(sources)} if ms else {}


# ------------------------------------------------------------------------------------------------ per K (child)


class Timers(StepTimes):
    """``bench/profile_pipeline.py``'s per-step timers, also keeping the last state each stateful step handed to
    Bytewax's ``snapshot`` (what a recovery snapshot pickles), to pickle once after the run, outside the timer."""

    def __init__(self) -> None:
        super().__init__()
        self.last_state: dict[str, Any] = {}

    def timed(self, step: str, fn: Any, name: str | None = None) -> Any:
        inner = super().timed(step, fn, name)
        if not (name or "").endswith(".snapshot"):
            return inner

        def keep(*args: Any, **kwargs: Any) -> Any:
            self.last_state[step] = out = inner(*args, **kwargs)
            return out
        return keep

    def state_snapshot(self, *steps: str) -> dict[str, Any] | None:
        """The pickled size and time of the last state of ``steps`` together (each has one key at one worker)."""
        if not any(step in self.last_state for step in steps):
            return None
        t0 = time.perf_counter()
        n = sum(len(pickle.dumps(self.last_state[step], protocol=pickle.HIGHEST_PROTOCOL))
                for step in steps if step in self.last_state)
        calls = max(c for (st, f), c in self.calls.items() if st in steps and f.endswith(".snapshot"))
        secs = sum(x for (st, f), x in self.seconds.items() if st in steps and f.endswith(".snapshot"))
        return {"pickle_bytes": n, "pickle_seconds": round(time.perf_counter() - t0, 3), "calls_in_run": calls,
                "snapshot_seconds_in_run": round(secs, 3)}


def child_job(a: argparse.Namespace) -> dict[str, Any]:
    from operators.embedding_cache import EmbeddingCache

    work = Path(a.work)
    texts = json.loads((work / "texts.json").read_text())
    vectors = np.load(work / "vectors.npy")
    cache = EmbeddingCache(max(len(texts), 50_000))
    for t, v in zip(texts, vectors, strict=True):
        cache.put(t, v)
    data = work / "data"
    job = make_job(["--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"), "--no-api",
                    "--codebook-dir", str(work / f"codebook-{a.k}")], cache)
    job.clustering.embedder_factory().encode(["warm up"])  # model loaded before the timer, as bench/pipeline.py
    times = Timers()
    instrument(job.flow, times)
    process_peak, before = rss_mb()["peak"], reset_peak_rss()
    t0 = time.perf_counter()
    summary = job.run()
    wall = time.perf_counter() - t0
    run_peak = rss_mb()["peak"]
    drift_s = sum(s for (step, _), s in times.seconds.items() if "drift" in step or "cadence" in step)
    live = job.live
    rng = np.random.default_rng(1)
    pairs = list(live.pairs)
    picks = rng.choice(len(pairs), size=min(a.context_queries, len(pairs)), replace=False) if pairs else []
    ctx = timed_context(live, [{"clusters": list(pairs[i])} for i in picks], a.context_seconds)
    snap = timed_snapshot(live, work / f"snap-{a.k}")
    shutil.rmtree(work / f"snap-{a.k}", ignore_errors=True)
    return {"k": job.codebook.k, "messages": summary["messages"], "seconds": round(wall, 2),
            "events_per_s": round(summary["messages"] / wall), "drift_share": round(drift_s / wall, 4),
            "live_pairs": len(live.pairs), "index_items": len(live.items) if live.items is not None else 0,
            "peak_rss_mb": max(process_peak, run_peak), "run_peak_rss_mb": run_peak, "rss_before_run_mb": before,
            "run_rss_growth_mb": round(run_peak - before, 1), "snapshot": snap,
            # the drift steps' state: the ordering step (hold, cadence clock), the cadence decisions (with their
            # mirror of C_p), the shard and the combiner
            "drift_state_snapshot": times.state_snapshot("monitor_drift", "decide_cadence", "drift_shards",
                                                         "combine_drift"),
            "context_ms": ctx}


def prepare_clusters(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from index.codebooks import CodebookStore
    from operators.clusters import build_codebook
    from operators.embedding import model_id
    from streams.clusters_cli import read_items
    from streams.contract import Validator
    from streams.generator import GeneratorConfig, write_files
    from streams.vocabulary import TOPICS

    gen = GeneratorConfig(seed=7, events=a.events, n_clusters=len(TOPICS), items_per_cluster=a.items_per_topic,
                          n_users=a.users, bad_fraction=0.01)
    log(f"generating {a.events:,} events, {len(TOPICS)} topics x {a.items_per_topic} items, {a.users:,} users")
    files = write_files(gen, work / "data")
    t0 = time.perf_counter()
    _, cache = build_codebook_dir(work / "data" / "items.jsonl", work / "codebook-default")
    texts = list(read_items(work / "data" / "items.jsonl", Validator())[0].values())
    vectors = np.stack([cache.get(t) for t in texts]).astype(np.float32)
    log(f"embedded {len(texts):,} catalogue texts in {time.perf_counter() - t0:.1f}s")
    (work / "texts.json").write_text(json.dumps(texts))
    np.save(work / "vectors.npy", vectors)
    for k in a.ks:
        t0 = time.perf_counter()
        cb = build_codebook(vectors, texts, k, model=model_id("default"), nredo=1)
        CodebookStore(work / f"codebook-{k}").save(cb)
        log(f"codebook K={k}: {time.perf_counter() - t0:.1f}s, sizes {min(cb.sizes)}..{max(cb.sizes)}")
    return {"messages": files["messages"], "engagements": files["engagements"], "catalogue_items": len(texts),
            "topics": len(TOPICS), "users": a.users}


# -------------------------------------------------------------------------------------- per index size (child)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def child_index(a: argparse.Namespace) -> dict[str, Any]:
    from index.live import LiveIndex
    from index.mutations import codebook_mutation, item_mutation, pair_mutation
    from index.vectors import SlotVectorIndex
    from streams.settings import Settings

    n, rng = a.n, np.random.default_rng(3)
    centres = unit(rng.standard_normal((CENTRES, DIM), dtype=np.float32))
    live = LiveIndex(backend=Settings().index.backend)
    live.apply([codebook_mutation(centres, [[f"w{c}"] for c in range(CENTRES)], version="scale", model="synthetic")])
    ts = 1_767_225_600_000
    upsert_s, vectors = 0.0, np.empty((n, DIM), np.float32)
    for s in range(0, n, BATCH):
        m = min(BATCH, n - s)
        cl = rng.integers(0, CENTRES, m)
        v = unit(centres[cl] + rng.standard_normal((m, DIM), dtype=np.float32) / np.sqrt(DIM))
        vectors[s:s + m] = v
        muts = [item_mutation(f"i{s + j}", cluster=int(cl[j]), distance=0.3, novel=False, text=f"item {s + j}",
                              ts_ms=ts + s + j, ingest_ms=0, vector=v[j]) for j in range(m)]
        if s == 0:  # the first batch creates the vector index (its backend probe may import torch): start-up
            live.apply(muts)
            before = reset_peak_rss()
            continue
        t0 = time.perf_counter()
        live.apply(muts)
        upsert_s += time.perf_counter() - t0
    timed = n - min(BATCH, n)
    log(f"index {n:,}: {timed / upsert_s:,.0f} upserts/s")
    pairs = {(int(x), int(y)) for x, y in rng.integers(0, CENTRES, (4096, 2)) if x != y}
    live.apply([pair_mutation(c1, c2, successors=[{"cluster": int(c), "count": 5.0, "score": 0.3, "trend": 0.0}
                                                  for c in rng.choice(CENTRES, 3, replace=False)],
                              support=15.0, half_life_ms=86_400_000, ts_ms=ts + n, ingest_ms=0) for c1, c2 in pairs])
    queries = unit(centres[rng.integers(0, CENTRES, a.queries)]
                   + rng.standard_normal((a.queries, DIM), dtype=np.float32) / np.sqrt(DIM))
    exact_ms, exact_ids = [], []
    live.items.search_latest(queries[:1], 10)
    for q in queries:
        t0 = time.perf_counter()
        hits = live.items.search_latest(q, 10)
        exact_ms.append((time.perf_counter() - t0) * 1e3)
        exact_ids.append(set(hits.ids[0]))
    t0 = time.perf_counter()
    approx = SlotVectorIndex.from_arrays([f"i{j}" for j in range(n)], vectors, 0, backend=live.backend,
                                         approx_threshold=1, nprobe=a.nprobe)
    approx_build = time.perf_counter() - t0
    approx_ms, hit = [], 0
    for q, truth in zip(queries, exact_ids, strict=True):
        t0 = time.perf_counter()
        found = approx.search_latest(q, 10)
        approx_ms.append((time.perf_counter() - t0) * 1e3)
        hit += len(truth & set(found.ids[0]))
    approx_info = {"search_path": approx.search_path, "build_s": round(approx_build, 2), "nprobe": a.nprobe,
                   "recall_at_10": round(hit / (10 * len(queries)), 4), "query_ms": percentiles(approx_ms)}
    del approx
    log(f"index {n:,}: exact p99 {percentiles(exact_ms)['p99']} ms, approx {approx_info}")
    ctx = timed_context(live, [{"history": [f"i{j}" for j in rng.integers(0, n, 3)]}
                               for _ in range(a.context_queries)], a.context_seconds)
    snap_dir = Path(a.work) / f"snap-index-{n}"
    snap = timed_snapshot(live, snap_dir)
    shutil.rmtree(snap_dir, ignore_errors=True)
    return {"items": len(live.items), "upserts_per_s": round(timed / upsert_s),
            "exact": {"search_path": live.items.search_path, "query_ms": percentiles(exact_ms)},
            "approx": approx_info, "context_ms": ctx, "snapshot": snap, "pairs": len(live.pairs),
            "peak_rss_mb": rss_mb()["peak"], "rss_after_first_batch_mb": before}


# ------------------------------------------------------------------------------------------------ users


def user_engagements(users: int, per_user: int, batch: int) -> Any:
    """``users * per_user`` positive clustered engagements in event-time order, users interleaved (each engagement
    a random user of ``users`` and a random cluster of 16, seed 3), in batches of ``batch``: generated as the
    flow reads them, so the input never sits in memory whole."""
    from streams.content_stage import ClusteredEngagement
    from streams.contract import Engagement

    rng = np.random.default_rng(3)
    n = users * per_user
    for lo in range(0, n, batch):
        m = min(batch, n - lo)
        us, cs = rng.integers(users, size=m).tolist(), rng.integers(16, size=m).tolist()
        yield [ClusteredEngagement(Engagement(f"user-{u:07d}", f"item-{c}", "like", 1_700_000_000_000 + lo + i,
                                              True), c) for i, (u, c) in enumerate(zip(us, cs, strict=True))]


def per_user_key_flow(flow: Any, clustered: Any) -> Any:
    """The peer: the same rule with one Bytewax key per user, in the library's fastest per-key form
    (``op.stateful_batch``: one call per key and batch, the state a plain tuple; this job's step until 2026-12-02)."""
    import bytewax.operators as op
    from bytewax.operators import StatefulBatchLogic

    from streams.transitions_stage import track_user_clusters

    class PerUser(StatefulBatchLogic):
        def __init__(self, resume: tuple | None) -> None:
            self.state = resume

        def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
            state, out = self.state, []
            for ce in values:
                state, triples = track_user_clusters(state, ce)
                out += triples
            self.state = state
            return out, StatefulBatchLogic.RETAIN

        def snapshot(self) -> tuple | None:
            return self.state

    by_user = op.flat_map_batch("key_by_user", clustered, lambda b: [(ce.engagement.user_id, ce) for ce in b])
    return op.flat_map_batch("unkey", op.stateful_batch("track_user_clusters", by_user, PerUser),
                             lambda b: [t for _, t in b])


def child_users(a: argparse.Namespace) -> dict[str, Any]:
    """The transition rule's step alone (Bytewax, 1 worker) on ``--_n`` users: events/s, the run's RSS growth per
    user, the state's pickled bytes per user. ``--_peer``: one key per user instead of the job's user shards."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.testing import run_main

    from streams.transitions_stage import UserShardTransitions, mine_triples

    users, per_user = a.n, a.per_user

    class Batches(StatelessSourcePartition):
        def __init__(self) -> None:
            self.it = user_engagements(users, per_user, 1_000)

        def next_batch(self) -> list[Any]:
            b = next(self.it, None)
            if b is None:
                raise StopIteration
            return b

    class Source(DynamicSource):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Batches:
            return Batches()

    kept: list[Any] = []
    real_snapshot = UserShardTransitions.snapshot

    def snapshot(self: UserShardTransitions) -> dict[str, tuple]:  # the last state handed out, to weigh it
        kept[:] = [out := real_snapshot(self)]
        return out

    UserShardTransitions.snapshot = snapshot  # type: ignore[method-assign]
    flow = Dataflow("users")
    clustered = op.input("in", flow, Source())
    triples = per_user_key_flow(flow, clustered) if a.peer else mine_triples(clustered)
    n_triples = [0]
    op.inspect("count", triples, lambda _s, _t: n_triples.__setitem__(0, n_triples[0] + 1))
    before = reset_peak_rss()
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0
    growth = rss_mb()["peak"] - before
    out = {"users": users, "engagements": users * per_user, "triples": n_triples[0], "seconds": round(wall, 2),
           "events_per_s": round(users * per_user / wall), "run_rss_growth_mb": round(growth, 1),
           "run_rss_growth_bytes_per_user": round(growth * 2**20 / users)}
    if kept:
        out["state_pickle_bytes_per_user"] = round(len(pickle.dumps(kept[0], protocol=5)) / users, 1)
        out["users_in_state"] = len(kept[0])
    return out


def run_users(a: argparse.Namespace, counts: list[int], work: Path) -> dict[str, Any]:
    """Per user count: the job's step and the per-user-key peer, each in a child (its own peak RSS)."""
    out: dict[str, Any] = {}
    for n in counts:
        row: dict[str, Any] = {}
        for name, extra in (("driftrag", []), ("per_user_keys", ["--_peer"])):
            log(f"users {n:,}: {name}")
            row[name] = child(["--_child", "users", "--_n", str(n), "--per-user", str(a.per_user), *extra],
                              a.child_timeout, work / f"users-{n}-{name}.log")
            log(f"users {n:,} {name}: {json.dumps(row[name])}")
        ours, peer = row["driftrag"], row["per_user_keys"]
        if "error" not in ours and "error" not in peer:
            row["same_triples"] = ours["triples"] == peer["triples"]
            row["events_per_s_ratio"] = ratio(ours["events_per_s"], peer["events_per_s"], 2)
            row["rss_per_user_ratio"] = ratio(ours["run_rss_growth_bytes_per_user"],
                                              peer["run_rss_growth_bytes_per_user"], 2)
        out[str(n)] = row
    return out


# ------------------------------------------------------------------------------------------------ main


def child(argv: list[str], timeout: float, log_file: Path) -> dict[str, Any]:
    """This script in a child process (its own peak RSS); its stderr (the job's lines) goes to ``log_file``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        with log_file.open("w") as err:
            out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over --child-timeout {timeout:.0f}s"}
    if out.returncode != 0:
        log(f"child failed:\n{log_file.read_text()[-3000:]}")
        return {"error": f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(a: float | None, b: float | None, n: int = 3) -> float | None:
    return round(a / b, n) if a and b else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="16,256,2048", help="cluster counts (codebook K)")
    p.add_argument("--events", type=int, default=100_000, help="engagement events of the K workload")
    p.add_argument("--items-per-topic", type=int, default=150, help="catalogue items per generator topic (x28)")
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--index-sizes", default="100000", help="live index sizes (items); 1000000 is a flag, see doc")
    p.add_argument("--queries", type=int, default=200, help="vector queries per index size")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--context-queries", type=int, default=2_000)
    p.add_argument("--context-seconds", type=float, default=20.0, help="time limit of each context measurement")
    p.add_argument("--child-timeout", type=float, default=600, help="seconds per child before it is abandoned")
    p.add_argument("--user-counts", default="100000,1000000", help="users of the transition-rule runs ('' : none)")
    p.add_argument("--per-user", type=int, default=3, help="engagements per user in the users runs")
    p.add_argument("--_child", choices=["job", "index", "users"], help=argparse.SUPPRESS)
    p.add_argument("--_peer", dest="peer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_work", dest="work", help=argparse.SUPPRESS)
    p.add_argument("--_k", dest="k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_n", dest="n", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.ks = [int(x) for x in a.ks.split(",") if x]
    if a._child:
        print(json.dumps({"job": child_job, "index": child_index, "users": child_users}[a._child](a)))
        return 0
    t_start = time.monotonic()
    sizes = [int(float(x)) for x in a.index_sizes.split(",") if x.strip()]
    user_counts = [int(float(x)) for x in a.user_counts.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="driftrag-scale-"))
    common = ["--_work", str(work), "--context-queries", str(a.context_queries), "--context-seconds",
              str(a.context_seconds)]
    try:
        workload = prepare_clusters(a, work) if a.ks else {}
        clusters = {}
        for k in a.ks:
            log(f"job at K={k}")
            clusters[str(k)] = r = child(["--_child", "job", "--_k", str(k), *common], a.child_timeout,
                                         work / f"job-{k}.log")
            log(f"K={k}: {json.dumps(r)}")
        index = {}
        for n in sizes:
            log(f"index at {n:,} items")
            index[str(n)] = child(["--_child", "index", "--_n", str(n), "--queries", str(a.queries),
                                   "--nprobe", str(a.nprobe), *common], a.child_timeout, work / f"index-{n}.log")
            log(f"{n:,} items: {json.dumps(index[str(n)])}")
        users = run_users(a, user_counts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios: dict[str, Any] = {"run_rss_growth_bytes_per_live_pair": {
        k: round(r["run_rss_growth_mb"] * 2**20 / r["live_pairs"]) for k, r in clusters.items() if r.get("live_pairs")}}
    for lo, hi in zip(a.ks, a.ks[1:], strict=False):
        x, y = clusters[str(lo)], clusters[str(hi)]
        ratios[f"events_per_s_k{hi}_vs_k{lo}"] = ratio(y.get("events_per_s"), x.get("events_per_s"))
        ratios[f"live_pairs_k{hi}_vs_k{lo}"] = ratio(y.get("live_pairs"), x.get("live_pairs"), 1)
        dp = (y.get("live_pairs") or 0) - (x.get("live_pairs") or 0)
        if dp > 0 and "run_peak_rss_mb" in x and "run_peak_rss_mb" in y:
            ratios[f"run_peak_rss_bytes_per_added_pair_k{lo}_to_k{hi}"] = round(
                (y["run_peak_rss_mb"] - x["run_peak_rss_mb"]) * 2**20 / dp)
        ratios[f"context_p99_k{hi}_vs_k{lo}"] = ratio(y.get("context_ms", {}).get("p99"),
                                                      x.get("context_ms", {}).get("p99"), 2)
    for lo, hi in zip(sizes, sizes[1:], strict=False):
        x, y = index[str(lo)], index[str(hi)]
        if "error" in x or "error" in y:
            continue
        ratios[f"index_{hi}_vs_{lo}"] = {
            "size": hi / lo, "upserts_per_s": ratio(y["upserts_per_s"], x["upserts_per_s"]),
            "exact_p99": ratio(y["exact"]["query_ms"]["p99"], x["exact"]["query_ms"]["p99"], 2),
            "approx_p99": ratio(y["approx"]["query_ms"]["p99"], x["approx"]["query_ms"]["p99"], 2),
            "context_p99": ratio(y["context_ms"]["p99"], x["context_ms"]["p99"], 2),
            "snapshot_seconds": ratio(y["snapshot"]["seconds"], x["snapshot"]["seconds"], 2)}
    cliffs = []
    for key, v in ratios.items():
        if key.startswith("events_per_s_k") and v is not None and v < 0.5:
            cliffs.append(f"{key} = {v}")
        if key.startswith("context_p99_k") and v is not None and v > 2:
            cliffs.append(f"{key} = {v}")
    per_pair = list(ratios["run_rss_growth_bytes_per_live_pair"].values())
    for b0, b1 in zip(per_pair, per_pair[1:], strict=False):
        if b0 > 0 and b1 / b0 > 2:
            cliffs.append(f"run RSS growth per live pair {b0:,} -> {b1:,} bytes")
    for key, v in ratios.items():
        if key.startswith("index_"):
            size = v["size"]
            lines = {"upserts_per_s": (v["upserts_per_s"], 0.5, "<"), "exact_p99": (v["exact_p99"], 1.5 * size, ">"),
                     "snapshot_seconds": (v["snapshot_seconds"], 1.5 * size, ">"),
                     "approx_p99": (v["approx_p99"], size, ">"), "context_p99": (v["context_p99"], size, ">")}
            cliffs += [f"{key} {name} = {x} ({op} {line:g})" for name, (x, line, op) in lines.items()
                       if x is not None and (x < line if op == "<" else x > line)]
    done_users = [n for n in user_counts if "error" not in users[str(n)]["driftrag"]]
    for lo, hi in zip(done_users, done_users[1:], strict=False):
        x, y = users[str(lo)]["driftrag"], users[str(hi)]["driftrag"]
        ratios[f"users_{hi}_vs_{lo}"] = r = {
            "events_per_s": ratio(y["events_per_s"], x["events_per_s"]),
            "rss_bytes_per_user": ratio(y["run_rss_growth_bytes_per_user"], x["run_rss_growth_bytes_per_user"])}
        if r["events_per_s"] is not None and r["events_per_s"] < 0.5:
            cliffs.append(f"users {lo:,} -> {hi:,}: events/s x{r['events_per_s']}")
        if r["rss_bytes_per_user"] is not None and r["rss_bytes_per_user"] > 2:
            cliffs.append(f"users {lo:,} -> {hi:,}: RSS per user x{r['rss_bytes_per_user']}")
    out = {"benchmark": "scale", "workload": {**workload, "events": a.events, "seed": 7}, "clusters": clusters,
           "index": index, "users": users, "ratios": ratios, "cliffs": cliffs,
           "not_run": [] if 1_000_000 in sizes else ["index at 1,000,000 items: --index-sizes 100000,1000000 "
                                                     "(not in the default ~10 min budget on 2 cores)"],
           "budget": "default run ~10 min on 2 cores", "wall_seconds": round(time.monotonic() - t_start, 1),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
