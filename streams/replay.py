"""`driftrag replay`: the same dataflow over files, in event-time order, in one process (brief: "Offline replay").

    driftrag replay --events engagements.jsonl --items items.jsonl --out DIR

writes what the live system would have produced: ``alerts.jsonl`` (drift-alerts), ``cadence.jsonl`` (RAG refresh
and fine-tune signals), ``successors.json`` (every pair's successors with counts), ``clusters.json``,
``dead_letter.jsonl``, ``summary.json``, plus ``events.jsonl`` (each valid engagement with its cluster) and
``items.jsonl`` (each content event's cluster). The files are merged by event time (content first on ties),
every text is embedded before the stream starts and one worker runs the flow, so the result is a function of the
files alone: replaying twice, or streaming the same events through Kafka, gives the same successors and alerts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streams.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=Path, required=True, metavar="FILE.jsonl", help="engagement events (JSONL)")
    p.add_argument("--items", type=Path, metavar="FILE.jsonl", help="content events (JSONL)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--backend", help="embedding backend: auto, onnx, onnx-int8, torch (default: settings)")
    p.add_argument("--model", help="sentence-transformers model name or path (default: all-MiniLM-L6-v2)")
    p.add_argument("--codebook-dir", type=Path,
                   help="codebook store (default: settings.clusters.codebook_dir; without one, the clusters are "
                   "bootstrapped from --items)")
    p.add_argument("--no-drift", action="store_true", help="no drift detection (and so no cadence signals)")
    p.add_argument("--finetune-cost", type=float, metavar="UNITS",
                   help="the cadence controller's cost of a fine-tune (default: settings.cadence.finetune_cost)")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")


# The files a replay writes into its --out directory.
REPLAY_OUTPUTS = frozenset({"events.jsonl", "items.jsonl", "alerts.jsonl", "cadence.jsonl", "dead_letter.jsonl",
                            "successors.json", "clusters.json", "summary.json"})


def job_args(args: argparse.Namespace) -> argparse.Namespace:
    """The `driftrag run` arguments a replay stands for: its files, one worker, no API, no recovery."""
    from streams import job

    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    ns = parser.parse_args(["--events", str(args.events), "--out", str(args.out), "--no-api",
                            "--workers-per-process", "1", "--progress-every", str(args.progress_every)])
    ns.items, ns.replay = args.items, True
    ns.backend, ns.model, ns.codebook_dir, ns.no_drift = args.backend, args.model, args.codebook_dir, args.no_drift
    return ns


def replay(args: argparse.Namespace, settings: Settings) -> dict:
    """Run the replay; returns the summary (also written to ``DIR/summary.json``)."""
    from streams.job import Job

    for name in ("events", "items"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"--{name} file not found: {path}")
    # A replay writes its files afresh (no recovery store to resume from); the sinks append, so a second replay
    # into the same directory would mix two runs' records in every file.
    if args.out.is_dir():
        held = sorted(p.name for p in args.out.iterdir() if p.name in REPLAY_OUTPUTS)
        if held:
            raise ValueError(f"--out {args.out} already holds a replay's output ({', '.join(held)}); a replay "
                             "writes its files afresh: choose another directory or remove them")
    cost = getattr(args, "finetune_cost", None)
    if cost is not None:
        if not cost > 0:
            raise ValueError(f"--finetune-cost must be > 0, got {cost}")
        settings = settings.model_copy(update={"cadence": settings.cadence.model_copy(
            update={"finetune_cost": cost})})
    job = Job(job_args(args), settings)
    print(f"[driftrag] replaying {args.events}" + (f" and {args.items}" if args.items else "")
          + f" in event-time order into {args.out}", file=sys.stderr, flush=True)
    return job.run()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.job import JOB_STOPS, stopped

    try:
        summary = replay(args, settings)
    except JOB_STOPS as e:
        return stopped("driftrag replay", e)
    print(json.dumps(summary), flush=True)
    return 0
