"""Idempotent topic provisioning: `driftrag topics create|list`.

Partitions, retention and cleanup policy come from ``settings.kafka.topics``. Existing topics keep their
partitions (Kafka cannot shrink them, and growing them would move keys); their retention and cleanup policy are
brought in line with the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.settings import KafkaSettings, TopicSpec

log = logging.getLogger(__name__)


def _configs(spec: TopicSpec) -> dict[str, str]:
    return {"retention.ms": str(spec.retention_ms), "cleanup.policy": spec.cleanup_policy}


def _admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.client())


def ensure_topics(kafka: KafkaSettings, logical: Iterable[str] | None = None, timeout_s: float = 30) -> dict[str, str]:
    """Create missing topics, align configs of existing ones; ``{physical_name: created|exists|updated}``."""
    names = list(kafka.topics) if logical is None else list(logical)
    specs = {kafka.topic(n): kafka.topics[n] for n in names}
    admin = _admin(kafka)
    existing = admin.list_topics(timeout=timeout_s).topics
    result: dict[str, str] = {}
    to_create = [
        NewTopic(name, num_partitions=spec.partitions, replication_factor=kafka.replication_factor,
                 config=_configs(spec))
        for name, spec in specs.items() if name not in existing
    ]
    if to_create:
        for name, fut in admin.create_topics(to_create, request_timeout=timeout_s).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won the race
                    raise
    for name, spec in specs.items():
        if name not in result:
            result[name] = "updated" if _align_configs(admin, name, spec, timeout_s) else "exists"
            have = existing.get(name)
            if have is not None and len(have.partitions) != spec.partitions:
                log.warning("topic %s has %d partitions, config says %d: left as is (changing it moves keys)",
                            name, len(have.partitions), spec.partitions)
    _wait_for_leaders(admin, {n: specs[n].partitions for n, r in result.items() if r == "created"}, timeout_s)
    return result


def _align_configs(admin: AdminClient, name: str, spec: TopicSpec, timeout_s: float) -> bool:
    res = ConfigResource(ResourceType.TOPIC, name)
    current = admin.describe_configs([res], request_timeout=timeout_s)[res].result()
    want = _configs(spec)
    changes = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
        for k, v in want.items() if _normal(k, current[k].value) != _normal(k, v)
    ]
    if not changes:
        return False
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=changes)
    admin.incremental_alter_configs([res], request_timeout=timeout_s)[res].result()
    return True


def _normal(key: str, value: str | None) -> str | None:
    # "compact,delete" and "delete,compact" are the same policy: no endless "updated" over the order.
    if key == "cleanup.policy" and value is not None:
        return ",".join(sorted(v.strip() for v in value.split(",")))
    return value


def _wait_for_leaders(admin: AdminClient, partitions: dict[str, int], timeout_s: float) -> None:
    """New topics are usable once every partition has a leader in the metadata."""
    deadline = time.monotonic() + timeout_s
    pending = dict(partitions)
    while pending:
        md = admin.list_topics(timeout=timeout_s).topics
        for name, n in list(pending.items()):
            t = md.get(name)
            if t is not None and t.error is None and len(t.partitions) == n and all(
                    p.leader >= 0 for p in t.partitions.values()):
                del pending[name]
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout_s}s: {sorted(pending)}")
            time.sleep(0.2)


def delete_topics(kafka: KafkaSettings, physical_names: Iterable[str], timeout_s: float = 30) -> None:
    """Delete topics (ones already gone are fine) and wait until the metadata no longer lists them."""
    names = list(physical_names)
    if not names:
        return
    admin = _admin(kafka)  # must outlive the futures: a destroyed client fails them
    for fut in admin.delete_topics(names, request_timeout=timeout_s).values():
        try:
            fut.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    deadline = time.monotonic() + timeout_s
    while set(names) & set(admin.list_topics(timeout=timeout_s).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics still listed {timeout_s}s after deletion: {sorted(names)}")
        time.sleep(0.2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["create", "list"], nargs="?", default="create")
    p.add_argument("--bootstrap-servers", help="Kafka brokers (default: settings.kafka.bootstrap_servers)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (default: settings.kafka.topic_prefix)")


def run(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    kafka = settings.kafka.with_args(args)
    try:
        if args.action == "create":
            print(json.dumps(ensure_topics(kafka)))
        else:
            md = _admin(kafka).list_topics(timeout=30).topics
            print(json.dumps({n: len(t.partitions) for n, t in sorted(md.items()) if not n.startswith("__")}))
    except (KafkaException, TimeoutError) as e:
        print(f"driftrag topics: error talking to {kafka.bootstrap_servers}: {e}", file=sys.stderr)
        return 1
    return 0
