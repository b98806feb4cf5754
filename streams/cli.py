"""The `driftrag` command: one dispatch over the subcommands, each implemented in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Any

from confluent_kafka import KafkaException
from pydantic import ValidationError

# subcommand -> (module with add_arguments(parser) and run(args, settings) -> int, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("streams.broker", "start, stop or inspect a local Apache Kafka broker (no Docker needed)"),
    "topics": ("streams.topics", "create (idempotently) or list the project's Kafka topics"),
    "generate": ("streams.generator", "write a synthetic workload (a scenario) to JSONL files or Kafka"),
    "run": ("streams.job", "run the stream job (Kafka, files, or --embedded with no Kafka)"),
    "replay": ("streams.replay", "run the same dataflow over event files in event-time order; write what it produced"),
    "clusters": ("streams.clusters_cli", "build, show or list interest-cluster codebooks"),
    "eval": ("streams.eval_cli", "the paper's offline hit-rate experiment on a replayed stream (report + plot)"),
    "export-ft": ("streams.export_ft", "write a fine-tuning dataset [(c1, c2) -> c_next] from the successor state"),
    "serve": ("streams.serve", "query service: follow the index changelog topic and serve the context API"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftrag",
        description="Real-time interest drift for LLM recommenders. Settings also come from DRIFTRAG_* "
        "environment variables (see README).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from streams.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        print(f"driftrag: invalid settings from the environment:\n{e}", file=sys.stderr)
        return 2
    previous = _stop_on_sigterm()
    try:
        if uses_kafka(args):
            from streams.kafka_access import check_access

            check_access(settings.kafka.with_args(args))
        return importlib.import_module(args._module).run(args, settings)
    except (ValueError, FileNotFoundError) as e:
        # Bad arguments or config: one clear line, no stack trace.
        print(f"driftrag {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KafkaException as e:
        where = settings.kafka.with_args(args).bootstrap_servers
        print(f"driftrag {args.command}: error: Kafka at {where}: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from streams.kafka_access import KafkaAccessError

        if not isinstance(e, KafkaAccessError):
            raise
        print(f"driftrag {args.command}: error: {e}", file=sys.stderr)  # credentials: no retry will help
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def uses_kafka(args: argparse.Namespace) -> bool:
    """Whether this command talks to Kafka (its client config is checked before it starts)."""
    if args.command in ("serve", "topics"):
        return True
    if args.command == "run":
        return not args.embedded and args.events is None
    if args.command == "generate":
        return bool(args.kafka)
    if args.command == "export-ft":
        return args.from_dir is None
    return False


def _stop_on_sigterm() -> Any:
    """SIGTERM (``docker stop``, Kubernetes, systemd) stops every command as Ctrl-C does: the job's dataflow ends
    cleanly and its summary is written; the query service snapshots and exits 0. Ctrl-C alone is not enough for a
    service: a shell starts background commands with SIGINT ignored. Returns the previous handler (None off the
    main thread, where none can be installed)."""
    try:
        return signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
