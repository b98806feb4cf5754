"""Choose the adaptive successor estimate's own parameters on tuning replays (never the README table's seeds).

    python bench/adaptive_tune.py DIR [DIR ...]      # each DIR: a `driftrag eval --out` (or `replay --out`) dir

For every grid point (scoring rule, score half-life, back-off, prior, learning rate) it replays each directory's
positive engagements with the streaming strategy only (the evaluation's rule: predict the pair's top-1 before its
triple lands, a hit when it is among the next 3 novel clusters, after the report's warm-up) and prints, per
directory, the adaptive hit rate minus the best fixed half-life's. The chosen point maximises the worst of those
margins.

The defaults (quadratic score, learning rate 10, back-off 200) came from, on seeds 11, 13, 17, 19, 23:

    python bench/adaptive_tune.py T/s{11,13,17,19,23}/stationary/eval T/s{11,13,17,19,23}/shifting/eval \
        T/s{11,13,17,19}/{drifting,slow}/eval T/s11/retail/eval --score brier --learning-rate 5 10 20 \
        --backoff 100 200 300 --score-half-life-days 14
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS, SCORES, AdaptiveSuccessorTable, half_life_label
from operators.evaluation import DAY_MS, _truth
from operators.transitions import TransitionTracker
from streams.eval_cli import positive_engagements


def streaming_hits(events: list[tuple[str, int, int]], tables: dict[str, AdaptiveSuccessorTable], warmup_ms: int,
                   min_support: float = 3.0, next_n: int = 3) -> tuple[int, dict[str, int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for u, c, _ in events:
        s = seqs[u]
        if not s or s[-1] != c:
            s.append(c)
    start = events[0][2] + warmup_ms
    trackers: dict[str, TransitionTracker[int]] = {}
    pos: dict[str, int] = {}
    n, hits = 0, dict.fromkeys(tables, 0)
    for u, c, ts in events:
        tr = trackers.setdefault(u, TransitionTracker())
        h2 = tr.h2
        triple = tr.update(c)
        if c == h2:
            continue
        i = pos[u] = pos.get(u, -1) + 1
        if h2 is not None and ts >= start:
            truth = _truth(seqs[u], i, next_n)
            if truth:
                n += 1
                for name, t in tables.items():
                    if t.top1((h2, c), ts, min_support) in truth:
                        hits[name] += 1
        if triple is not None:
            for t in tables.values():
                t.update(triple, ts)
    return n, hits


def _name(g: tuple) -> str:
    return f"adaptive {g[4]} {g[0]}d b{g[1]} p{g[2]} e{g[3]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--score-half-life-days", type=float, nargs="+", default=[7.0, 14.0, 30.0, math.inf])
    p.add_argument("--backoff", type=float, nargs="+", default=[100.0, 200.0, 300.0])
    p.add_argument("--prior", type=float, nargs="+", default=[1.0])
    p.add_argument("--learning-rate", type=float, nargs="+", default=[10.0])
    p.add_argument("--score", choices=SCORES, nargs="+", default=["brier"])
    args = p.parse_args()
    grid = list(itertools.product(args.score_half_life_days, args.backoff, args.prior, args.learning_rate,
                                  args.score))
    margins: dict[tuple, list[float]] = defaultdict(list)
    for d in args.dirs:
        replay = d / "replay" if (d / "replay").is_dir() else d
        report = json.loads((d / "report.json").read_text()) if (d / "report.json").is_file() else {}
        warmup = report.get("config", {}).get("warmup_ms", 2 * DAY_MS)
        events = positive_engagements(replay / "events.jsonl")
        tables = {half_life_label(h): AdaptiveSuccessorTable((h,)) for h in DEFAULT_HALF_LIVES_MS}
        for g in grid:
            sh, b, pr, eta, sc = g
            tables[_name(g)] = AdaptiveSuccessorTable(
                score_half_life_ms=sh * DAY_MS, backoff=b, prior=pr, learning_rate=eta, score=sc)
        n, hits = streaming_hits(events, tables, warmup)
        best_fixed = max(hits[half_life_label(h)] for h in DEFAULT_HALF_LIVES_MS) / n
        fixed = {half_life_label(h): round(hits[half_life_label(h)] / n, 5) for h in DEFAULT_HALF_LIVES_MS}
        print(json.dumps({"dir": str(d), "points": n, "fixed": fixed}), flush=True)
        for g in grid:
            rate = hits[_name(g)] / n
            margins[g].append(round(rate - best_fixed, 5))
            print(json.dumps({"dir": str(d), "score": g[4], "score_half_life_days": g[0], "backoff": g[1],
                              "prior": g[2], "learning_rate": g[3], "adaptive": round(rate, 5),
                              "minus_best_fixed": round(rate - best_fixed, 5)}))
    best = max(grid, key=lambda g: (min(margins[g]), sum(margins[g])))
    print(json.dumps({"chosen": {"score": best[4], "score_half_life_days": best[0], "backoff": best[1],
                                 "prior": best[2], "learning_rate": best[3]},
                      "worst_margin": min(margins[best]), "margins": margins[best]}))


if __name__ == "__main__":
    main()
