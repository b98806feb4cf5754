"""The drift alert of the brief (topic ``drift-alerts``, key = cluster id), as a value and as JSON.

>>> a = Alert("d-7-transition-1767300000000", 7, "transition", 0.8, 0.6, "critical", 1767290000000, 1767300000000,
...           {"pair": [3, 7], "top_before": [1, 2], "top_after": [5, 2]}, 1767300000000,
...           reference={"policy": "rolling", "since_ms": 1767200000000})
>>> key, value = a.to_kafka()
>>> key, orjson.loads(value)["window"], orjson.loads(value)["severity"]
(b'7', {'start': 1767290000000, 'end': 1767300000000}, 'critical')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["KINDS", "SEVERITIES", "Alert"]

KINDS = ("transition", "engagement", "content", "volume")
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class Alert:
    """One drift, alerted once (later alerts of the same drift only escalate its severity).

    ``score`` and ``threshold`` are in the detector's own units (stated in ``evidence["measure"]`` where it
    helps); ``window_*`` is the event-time window the score was computed over; ``reference`` says what it was
    compared against (the policy and since when)."""

    alert_id: str
    cluster: int
    kind: str
    score: float
    threshold: float
    severity: str
    window_start_ms: int
    window_end_ms: int
    evidence: dict[str, Any]
    ts_ms: int
    reference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind must be one of {KINDS}, got {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id, "cluster": self.cluster, "kind": self.kind,
            "score": round(float(self.score), 6), "threshold": round(float(self.threshold), 6),
            "severity": self.severity, "window": {"start": self.window_start_ms, "end": self.window_end_ms},
            "evidence": self.evidence, "reference": self.reference, "ts": self.ts_ms,
        }

    def to_kafka(self) -> tuple[bytes, bytes]:
        """(key, value) for the ``drift-alerts`` topic: keyed by cluster id, so one cluster's alerts stay in order."""
        return str(self.cluster).encode(), orjson.dumps(self.to_dict())
