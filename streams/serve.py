"""`driftrag serve`: the query service. Follows the index-mutations changelog into a live index and serves it.

Start-up: restore the newest snapshot of ``--snapshot-dir`` (if any), then read the changelog from the offsets
that snapshot includes; ``/readyz`` turns 200 once the service has caught up with the topic as it was at start.
Snapshots are saved every ``--snapshot-interval`` seconds, on shutdown, and on ``POST /v1/admin/snapshot`` (an
admin token). Any number of replicas can follow the same topic, each with its own snapshot directory.

Access: bearer tokens from ``DRIFTRAG_INDEX__TOKENS`` / ``--token-file`` (index/access.py). Without tokens the
service starts only on a loopback host, unless ``--allow-anonymous``: otherwise one error line, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from streams.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka brokers (default: settings.kafka.bootstrap_servers)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (default: settings.kafka.topic_prefix)")
    p.add_argument("--host", help="listen address (default: settings.index.host)")
    p.add_argument("--port", type=int, help="listen port (default: settings.index.port)")
    p.add_argument("--snapshot-dir", type=Path, help="index snapshots (default: settings.index.snapshot_dir)")
    p.add_argument("--snapshot-interval", type=float, help="seconds between snapshots (default: settings)")
    p.add_argument("--fresh", action="store_true", help="ignore existing snapshots: rebuild from the changelog")
    p.add_argument("--no-text-search", action="store_true",
                   help="do not load the embedding model; /v1/search then takes vectors only")
    p.add_argument("--token-file", type=Path,
                   help="bearer tokens, one name:scope:token a line (default: settings.index.token_file)")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="serve without tokens on a non-loopback host (anyone who can reach it can query it)")


def _settings(args: argparse.Namespace, settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(update={k: v for k, v in {
        "bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.topic_prefix}.items() if v is not None})
    index = settings.index.model_copy(update={k: v for k, v in {
        "host": args.host, "port": args.port, "snapshot_dir": args.snapshot_dir,
        "snapshot_interval_s": args.snapshot_interval, "token_file": getattr(args, "token_file", None),
        "allow_anonymous": True if getattr(args, "allow_anonymous", False) else None,
        "text_search": False if args.no_text_search else None}.items() if v is not None})
    return settings.model_copy(update={"kafka": kafka, "index": index})


def build_live_index(settings: Settings, fresh: bool = False):  # noqa: ANN201
    """The service's LiveIndex: restored from the newest snapshot unless ``fresh`` or there is none."""
    from index.live import LiveIndex
    from index.service import LazyEncoder
    from operators.embedding import make_embedder

    ix, es = settings.index, settings.embedding
    encoder = LazyEncoder(lambda: make_embedder(es.backend, es.model, batch_size=es.batch_size))
    kwargs = {"backend": ix.backend, "approx_threshold": ix.approx_threshold, "min_support": ix.min_support,
              "encoder": encoder if ix.text_search else None}
    if not fresh:
        try:
            live = LiveIndex.load_snapshot(ix.snapshot_dir, **kwargs)
            print(f"[driftrag] restored index snapshot from {ix.snapshot_dir}: version {live.version}, "
                  f"{live.summary()['items']:,} items, {len(live.pairs):,} pairs", file=sys.stderr, flush=True)
            return live
        except FileNotFoundError:
            pass
    return LiveIndex(**kwargs)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from index.access import TokenTable, check_exposure, load_tokens
    from index.http import create_app, serve
    from index.service import ChangelogFollower

    settings = _settings(args, settings)
    ix, k = settings.index, settings.kafka
    # Before anything slow: a bad token entry or an exposed host without tokens is one line and exit status 2.
    tokens = load_tokens(ix.tokens, ix.token_file)
    check_exposure(ix.host, TokenTable(tokens), ix.allow_anonymous)
    access = (f"{len(tokens)} token(s): " + ", ".join(f"{t.name} ({t.scope})" for t in tokens)) if tokens \
        else "anonymous (no tokens)"
    live = build_live_index(settings, fresh=args.fresh)
    topic = k.topic("index_mutations")
    follower = ChangelogFollower(live, k.client(), topic, snapshot_dir=ix.snapshot_dir,
                                 snapshot_interval_s=ix.snapshot_interval_s).start()
    print(f"[driftrag] query service on http://{ix.host}:{ix.port}, following {topic} on {k.bootstrap_servers}; "
          f"access: {access}", file=sys.stderr, flush=True)
    try:
        app = create_app(live, readiness=follower.readiness, settings=ix, snapshot_dir=ix.snapshot_dir)
        serve(app, host=ix.host, port=ix.port)
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal: a normal stop
        pass
    finally:
        follower.stop(snapshot=True)
        print(f"[driftrag] stopped at index version {live.version}; snapshot in {ix.snapshot_dir}",
              file=sys.stderr, flush=True)
    return 0
