"""`driftrag eval`: the paper's offline experiment on a replayed stream (hit rate per update strategy).

    driftrag eval --events engagements.jsonl --items items.jsonl --out DIR

replays the files through the dataflow (``DIR/replay``: see `driftrag replay`), then scores, on the clustered
positive engagements it produced, the tables a recommender could serve: frozen at the start, refreshed every 2
days, daily, the continuous streaming table, and the hybrid (streaming RAG over a base reset at the fine-tune
times the cadence controller chose in that replay). Writes ``DIR/report.json`` (``hit_rate`` per strategy for
the adaptive successor estimate, ``by_half_life.<h>`` for each fixed half-life it combines, per day, paired
differences with 95% intervals, the ``--period``-over-period Jaccard of each pair's top-5 successors) and
``DIR/hit_rate.png``. Definitions: :mod:`operators.evaluation`.

No future content: unless ``--codebook-dir`` is given, the replay's codebook is built (``DIR/codebook``) from the
content events dated inside the warm-up only, and its version is recorded in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from operators.evaluation import DAY_MS, PERIODS, EvalConfig, evaluate, plot_report
from streams.contract import ContentEvent, Engagement, RawMessage, Validator
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
    p.add_argument("--period", choices=tuple(PERIODS), default="day",
                   help="period of the Jaccard of top-5 successors (default day); its support floor scales with it")
    p.add_argument("--k", type=int, help="clusters of the warm-up codebook (default: settings.clusters.k)")
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


def warmup_items(events: Path, items: Path, warmup_ms: int, out: Path, validator: Validator) -> dict[str, Any]:
    """Write to ``out`` the content lines of ``items`` dated before the first valid engagement + ``warmup_ms``
    (a codebook built from them knows no future content); returns what was kept."""
    first = None
    with events.open("rb") as f:
        for n, line in enumerate(f):
            e = validator.validate(RawMessage(validator.engagements_topic, 0, n, None, line.rstrip(b"\r\n")))
            if isinstance(e, Engagement):
                first = e.ts_ms if first is None else min(first, e.ts_ms)
    if first is None:
        raise ValueError(f"no valid engagement in {events}")
    cut, kept = first + warmup_ms, 0
    with items.open("rb") as f, out.open("wb") as w:
        for n, line in enumerate(f):
            e = validator.validate(RawMessage(validator.items_topic, 0, n, None, line.rstrip(b"\r\n")))
            if isinstance(e, ContentEvent) and e.ts_ms < cut:
                w.write(line.rstrip(b"\r\n") + b"\n")
                kept += 1
    return {"items_before_ms": cut, "items": kept}


def warmup_codebook(args: argparse.Namespace, settings: Settings, warmup_ms: int) -> dict[str, Any]:
    """Build ``DIR/codebook`` from the warm-up's content events only; returns its version and provenance."""
    from streams import clusters_cli

    store = args.out / "codebook"
    src = args.out / "warmup_items.jsonl"
    kept = warmup_items(args.events, args.items, warmup_ms, src, Validator.from_settings(settings))
    ns = argparse.Namespace(clusters_command="build", items=src, k=args.k, sample=None, seed=0, keywords=8,
                            backend=args.backend, model=args.model, gpu="auto", no_activate=False, dir=store)
    with contextlib.redirect_stdout(sys.stderr):  # its summary line; stdout keeps only eval's own
        clusters_cli.run(ns, settings)
    from index.codebooks import CodebookStore

    meta = CodebookStore(store).load_metadata()
    return {"version": meta.get("version"), "dir": str(store), "built_from": "content events dated in the warm-up",
            **kept, "k": meta.get("k")}


def finetune_times(replay_dir: Path) -> list[int]:
    path = replay_dir / "cadence.jsonl"
    if not path.is_file():
        return []
    return [int(e["ts"]) for e in map(orjson.loads, path.read_bytes().splitlines()) if e["kind"] == "fine_tune"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    if (args.events is None) == (args.from_replay is None):
        raise ValueError("give --events (to replay) or --from-replay DIR (an existing replay), not both")
    config = EvalConfig(warmup_ms=int(args.warmup_days * DAY_MS), next_n=args.next_n, min_support=args.min_support,
                        period_ms=PERIODS[args.period])
    args.out.mkdir(parents=True, exist_ok=True)
    replay_dir = args.from_replay
    codebook: dict[str, Any] | None = None
    if replay_dir is None:
        from streams.replay import replay

        codebook_dir = args.codebook_dir
        if codebook_dir is None and args.items is not None:
            codebook = warmup_codebook(args, settings, config.warmup_ms)
            codebook_dir = Path(codebook["dir"])
        elif codebook_dir is not None:
            codebook = {"dir": str(codebook_dir), "built_from": "given (--codebook-dir)"}
        replay_dir = args.out / "replay"
        replay(argparse.Namespace(events=args.events, items=args.items, out=replay_dir, backend=args.backend,
                                  model=args.model, codebook_dir=codebook_dir, no_drift=False,
                                  finetune_cost=args.finetune_cost, progress_every=args.progress_every), settings)
        if codebook is not None:
            (replay_dir / "codebook.json").write_text(json.dumps(codebook) + "\n")
    elif (replay_dir / "codebook.json").is_file():
        codebook = json.loads((replay_dir / "codebook.json").read_text())
    events_file = replay_dir / "events.jsonl"
    if not events_file.is_file():
        raise FileNotFoundError(f"{events_file} not found: is {replay_dir} a `driftrag replay --out` directory?")
    engagements = positive_engagements(events_file)
    fts = finetune_times(replay_dir)
    print(f"[driftrag] eval: {len(engagements):,} positive engagements, {len(fts)} fine-tune(s) chosen by the "
          f"cadence controller; scoring 5 strategies at the adaptive default and {len(config.half_lives_ms)} "
          "fixed half-lives", file=sys.stderr, flush=True)
    report: dict[str, Any] = evaluate(engagements, fts, config)
    report["source"] = {"replay": str(replay_dir), "events": str(args.events) if args.events else None,
                        "items": str(args.items) if args.items else None}
    report["codebook"] = codebook
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_report(report, args.out / "hit_rate.png")
    line = {"report": str(args.out / "report.json"), "plot": str(args.out / "hit_rate.png"),
            "predictions": report["predictions"], "hit_rate": report["hit_rate"], "winner": report["winner"],
            "jaccard_top5_mean": report["jaccard_top5"]["mean"], "finetune_ms": fts}
    print(json.dumps(line), flush=True)
    return 0
