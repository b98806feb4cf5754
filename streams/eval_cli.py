"""`driftrag eval`: the paper's offline experiment on a replayed stream (hit rate per update strategy).

    driftrag eval --events engagements.jsonl --items items.jsonl --out DIR

replays the files through the dataflow (``DIR/replay``: see `driftrag replay`), then scores, on the clustered
positive engagements it produced, the tables a recommender could serve: frozen at the start, refreshed every 2
days, daily, the continuous streaming table, and the hybrid (streaming RAG over a base reset at the fine-tune
times the cadence controller chose in that replay). Writes ``DIR/report.json`` (``hit_rate`` per strategy,
per day, paired differences with 95% intervals, the period-over-period Jaccard of each pair's top-5 successors)
and ``DIR/hit_rate.png``. Definitions: :mod:`operators.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from operators.evaluation import DAY_MS, EvalConfig, evaluate, plot_report
from streams.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=Path, metavar="FILE.jsonl", help="engagement events (JSONL) to replay")
    p.add_argument("--items", type=Path, metavar="FILE.jsonl", help="content events (JSONL)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report.json and hit_rate.png go here")
    p.add_argument("--from-replay", type=Path, metavar="DIR",
                   help="score an existing `driftrag replay --out` directory instead of replaying --events")
    p.add_argument("--next-n", type=int, default=3, help="a hit: the prediction is among the user's next N "
                   "novel positive clusters (default 3)")
    p.add_argument("--warmup-days", type=float, default=2.0, help="event time the tables only learn (default 2)")
    p.add_argument("--min-support", type=float, default=3.0, help="decayed transitions a pair row needs (default 3)")
    p.add_argument("--finetune-cost", type=float, metavar="UNITS",
                   help="the replay's cadence controller: cost of a fine-tune in its cost units (default: "
                   "settings.cadence.finetune_cost); scale it to the traffic of the stream you evaluate")
    p.add_argument("--backend", help="embedding backend for the replay (default: settings)")
    p.add_argument("--model", help="sentence-transformers model name or path for the replay")
    p.add_argument("--codebook-dir", type=Path, help="codebook store for the replay (default: settings)")
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between the replay's progress lines")


def positive_engagements(events_file: Path) -> list[tuple[str, int, int]]:
    """(user_id, cluster, ts_ms) of the positive clustered engagements a replay wrote, in event-time order."""
    out = []
    with events_file.open("rb") as f:
        for line in f:
            e = orjson.loads(line)
            if e.get("positive") and e.get("cluster") is not None:
                out.append((e["user_id"], int(e["cluster"]), int(e["ts_ms"])))
    out.sort(key=lambda x: x[2])  # stable: the replay's own order among equal times
    return out


def finetune_times(replay_dir: Path) -> list[int]:
    path = replay_dir / "cadence.jsonl"
    if not path.is_file():
        return []
    return [int(e["ts"]) for e in map(orjson.loads, path.read_bytes().splitlines()) if e["kind"] == "fine_tune"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    if (args.events is None) == (args.from_replay is None):
        raise ValueError("give --events (to replay) or --from-replay DIR (an existing replay), not both")
    config = EvalConfig(warmup_ms=int(args.warmup_days * DAY_MS), half_life_ms=settings.transitions.half_life_ms,
                        next_n=args.next_n, min_support=args.min_support)
    args.out.mkdir(parents=True, exist_ok=True)
    replay_dir = args.from_replay
    if replay_dir is None:
        from streams.replay import replay

        replay_dir = args.out / "replay"
        replay(argparse.Namespace(events=args.events, items=args.items, out=replay_dir, backend=args.backend,
                                  model=args.model, codebook_dir=args.codebook_dir, no_drift=False,
                                  finetune_cost=args.finetune_cost, progress_every=args.progress_every), settings)
    events_file = replay_dir / "events.jsonl"
    if not events_file.is_file():
        raise FileNotFoundError(f"{events_file} not found: is {replay_dir} a `driftrag replay --out` directory?")
    engagements = positive_engagements(events_file)
    fts = finetune_times(replay_dir)
    print(f"[driftrag] eval: {len(engagements):,} positive engagements, {len(fts)} fine-tune(s) chosen by the "
          "cadence controller; scoring 5 strategies", file=sys.stderr, flush=True)
    report: dict[str, Any] = evaluate(engagements, fts, config)
    report["source"] = {"replay": str(replay_dir), "events": str(args.events) if args.events else None,
                        "items": str(args.items) if args.items else None}
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_report(report, args.out / "hit_rate.png")
    line = {"report": str(args.out / "report.json"), "plot": str(args.out / "hit_rate.png"),
            "predictions": report["predictions"], "hit_rate": report["hit_rate"],
            "jaccard_top5_mean": report["jaccard_top5"]["mean"], "finetune_ms": fts}
    print(json.dumps(line), flush=True)
    return 0
