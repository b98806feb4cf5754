"""`driftrag export-ft`: a supervised fine-tuning dataset [(c1, c2) -> c_next] from the successor state.

    driftrag export-ft --from DIR --out ft.jsonl [--since TS]     # a replay's or a run's --out directory
    driftrag export-ft --out ft.jsonl [--since TS]                # the live state: the index changelog topic

One JSON object per line: ``prompt``, ``completion`` (the paper's format: pair with keywords -> next cluster),
plus ``pair``, ``next``, ``count`` (the state's decayed count), ``share``, ``support``, ``ts_ms``. Filters and
balance: see :mod:`operators.finetune`. ``--since`` takes the ``ts`` of the last ``fine_tune`` cadence event
(epoch ms or RFC 3339): only pairs whose state moved since then are exported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from operators.finetune import finetune_samples
from streams.contract import parse_ts
from streams.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl", help="dataset to write")
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="successor state of a `driftrag replay` / `driftrag run --out` directory "
                   "(default: the live state, read from the Kafka index changelog topic)")
    p.add_argument("--since", help="only pairs updated at or after this event time (epoch ms or RFC 3339)")
    p.add_argument("--min-support", type=float, default=5.0, help="decayed transitions a pair needs (default 5)")
    p.add_argument("--min-count", type=float, default=1.0, help="decayed count a successor needs (default 1)")
    p.add_argument("--per-pair", type=int, default=3, help="at most this many successors per pair (default 3)")
    p.add_argument("--bootstrap-servers", help="Kafka brokers (default: settings.kafka.bootstrap_servers)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (default: settings.kafka.topic_prefix)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the changelog to be read")


def state_from_dir(d: Path) -> tuple[list[dict[str, Any]], dict[int, str], str | None]:
    """(pair states, cluster labels, codebook version) from ``successors.json`` and ``clusters.json`` in ``d``."""
    succ, clus = d / "successors.json", d / "clusters.json"
    for f in (succ, clus):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: --from needs the --out directory of `driftrag replay` or "
                                    "`driftrag run`")
    pairs = json.loads(succ.read_text())
    clusters = json.loads(clus.read_text())
    labels = {int(c["cluster"]): c["label"] for c in clusters["clusters"]}
    return pairs, labels, clusters.get("codebook")


def state_from_changelog(settings: Settings, timeout_s: float) -> tuple[list[dict[str, Any]], dict[int, str],
                                                                       str | None]:
    """The live successor state: the index changelog topic read to its end into an in-process index."""
    from index.live import LiveIndex
    from index.service import ChangelogFollower

    k = settings.kafka
    live = LiveIndex()
    follower = ChangelogFollower(live, k.client(), k.topic("index_mutations")).start()
    deadline = time.monotonic() + timeout_s
    try:
        while not follower.caught_up.wait(1.0):
            if follower.error is not None:
                raise follower.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog {k.topic('index_mutations')} not read to its end in {timeout_s:.0f} s "
                                   f"({follower.applied:,} mutations so far)")
    finally:
        follower.stop(snapshot=False)
    if not live.ready:
        raise FileNotFoundError(f"no codebook in {k.topic('index_mutations')}: has the stream job run?")
    pairs = [dict(p) for p in live.pairs.values()]
    labels = {c: live.label(c) for c in range(live.codebook["k"])}
    return pairs, labels, live.codebook["version"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_dir is not None:
        pairs, labels, codebook = state_from_dir(args.from_dir)
        where = str(args.from_dir)
    else:
        kafka = settings.kafka.with_args(args)
        settings = settings.model_copy(update={"kafka": kafka})
        pairs, labels, codebook = state_from_changelog(settings, args.timeout)
        where = f"{kafka.topic('index_mutations')} on {kafka.bootstrap_servers}"
    since = None
    if args.since is not None:
        raw = args.since.strip()
        try:
            since = parse_ts(int(raw) if raw.lstrip("-").isdigit() else raw, "--since")
        except Exception as e:  # noqa: BLE001 - the contract's own error, as one line
            raise ValueError(str(e)) from None
    samples, report = finetune_samples(pairs, labels, min_support=args.min_support, min_count=args.min_count,
                                       per_pair=args.per_pair, since_ms=since, codebook=codebook)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    with tmp.open("wb") as f:
        for s in samples:
            f.write(orjson.dumps(s) + b"\n")
    tmp.replace(args.out)  # a reader never sees half a dataset
    report = {"out": str(args.out), "source": where, "codebook": codebook, "since_ms": since, **report}
    print(f"[driftrag] export-ft: {report['samples']:,} samples from {report['pairs_out']:,} of "
          f"{report['pairs_in']:,} pairs -> {args.out}", file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 0
