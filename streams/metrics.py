"""Prometheus metrics of the stream job. Label values come from closed sets, so cardinality stays bounded."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_VALID = Counter("driftrag_events_valid_total", "Events that passed the contract", ["kind"])
DEAD_LETTERS = Counter("driftrag_dead_letter_total", "Messages routed to dead-letter, by reason", ["reason"])
