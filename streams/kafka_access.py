"""Fail fast when Kafka refuses the job's credentials: one clear line, not a client retrying forever.

librdkafka treats a failed SASL login or TLS handshake like a broker that is away: it logs the failure and tries
again, for ever, while the job, ``serve`` or ``generate`` wait on it. :func:`check_access` runs one metadata
request before a command starts its clients and turns an authentication or TLS error into
:class:`KafkaAccessError`, which the CLI prints as one line before exiting non-zero. A broker that does not answer
at all is left to the command's own handling (the job waits for a broker that is restarting).
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.settings import KafkaSettings

__all__ = ["ACCESS_ERRORS", "KafkaAccessError", "check_access"]

# Refusals a retry cannot fix: the credentials, the mechanism or the TLS setup are wrong.
ACCESS_ERRORS = frozenset({
    KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.ILLEGAL_SASL_STATE,
})


class KafkaAccessError(RuntimeError):
    """Kafka refused this client: wrong credentials, SASL mechanism or TLS settings."""


def _who(kafka: KafkaSettings) -> str:
    cfg = kafka.client_config
    user = cfg.get("sasl.username")
    parts = [cfg.get("security.protocol", "PLAINTEXT")]
    if user:
        parts.append(f"user {user!r} ({cfg.get('sasl.mechanisms', cfg.get('sasl.mechanism', 'GSSAPI'))})")
    return ", ".join(parts)


def check_access(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Raise :class:`KafkaAccessError` if the brokers of ``kafka`` refuse its client config within ``timeout_s``.

    Returns once a metadata request succeeds, or when ``timeout_s`` passes with no refusal (an unreachable
    broker is not an access error). Secrets never appear in the message."""
    errors: list[KafkaError] = []
    # log_level 0: librdkafka's own retry lines would bury the one line this check prints.
    probe = Producer(kafka.client(**{"error_cb": errors.append, "log_level": 0, "client.id": "driftrag-check"}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                probe.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                return
            except KafkaException:
                pass
            probe.poll(0.05)  # serves error_cb
            refused = [e for e in errors if e.code() in ACCESS_ERRORS]
            if refused:
                detail = refused[0].str().split(": ", 1)[-1]
                raise KafkaAccessError(f"Kafka at {kafka.bootstrap_servers} refused {_who(kafka)}: {detail} "
                                       "(check DRIFTRAG_KAFKA__CLIENT_CONFIG)")
            if time.monotonic() >= deadline:
                return
    finally:
        probe.flush(0)
