"""What a `driftrag run` reports: the summary (stdout, ``summary.json``), the progress lines, and the
``successors.json`` / ``clusters.json`` files, from the job's tallies and tables.

:class:`JobReport` reads a :class:`streams.job.Job` (its counts, pair table, codebook, live index) and writes
nothing into it; the job builds one before its dataflow and asks it at the progress ticks and at the end.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from streams.errors import ERRORS
from streams.transitions_stage import PairState

__all__ = ["JobReport", "say"]


def say(msg: str) -> None:
    """A progress line on stderr (stdout is the job's summary)."""
    print(f"[driftrag] {msg}", file=sys.stderr, flush=True)


def _unresolved() -> int:
    return int(REGISTRY.get_sample_value("driftrag_engagements_unresolved_total") or 0)


def _embedding_lookups() -> dict[str, int]:
    """Content-stage lookups so far in this process: hit (memory), store (on disk), miss (the model ran)."""
    return {r: int(REGISTRY.get_sample_value("driftrag_embedding_cache_total", {"result": r}) or 0)
            for r in ("hit", "store", "miss")}


class JobReport:
    """The summary and progress of one job. Process-wide metrics it reports (engagements unresolved, embedding
    lookups) are taken as differences from when the report was made, so several jobs in one process each report
    their own."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self._unresolved_at_start = _unresolved()
        self._lookups_at_start = _embedding_lookups()

    def summary(self, seconds: float) -> dict[str, Any]:
        job = self.job
        c = job.counts.snapshot()
        dead = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("dead_letter:")}
        valid = c.get("engagements", 0) + c.get("items", 0)
        total = valid + sum(dead.values())
        return {
            "mode": "replay" if job.replay else job.mode,
            "messages": total,
            "engagements": c.get("engagements", 0),
            "content_events": c.get("items", 0),
            "dead_letter": sum(dead.values()),
            "dead_letter_by_reason": dead,
            # Valid records a dataflow step failed on (also dead-lettered, reason processing_error), by step.
            "processing_errors": ERRORS.count,
            "processing_errors_by_step": dict(sorted(ERRORS.by_step.items())),
            "seconds": round(seconds, 3),
            "messages_per_s": round(total / seconds, 1) if seconds > 0 else None,
            **self._cluster_summary(c),
        }

    def _cluster_summary(self, c: dict[str, int]) -> dict[str, Any]:
        job = self.job
        if job.clustering is None:
            return {}
        sizes = {int(k.split(":", 1)[1]): v for k, v in c.items() if k.startswith("cluster_items:")}
        top = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        return {
            "codebook": job.codebook.version,
            "items_assigned": c.get("items_assigned", 0),
            "novel_items": c.get("novel_items", 0),
            "engagements_clustered": c.get("clustered_engagements", 0),
            # What fell out of the bounded wait for content during this run (the metric is process-wide).
            "engagements_unresolved": _unresolved() - self._unresolved_at_start,
            # Content texts in the stream: vector from memory, from the on-disk store, or embedded by the model.
            "embedding_lookups": {r: n - self._lookups_at_start[r] for r, n in _embedding_lookups().items()},
            **({"warm_cache": job.warm_cache} if job.warm_cache else {}),
            "top_clusters": [{"cluster": k, "label": job.codebook.label(k), "items": n} for k, n in top],
            "triples": c.get("triples", 0),
            "pairs": len(job.pairs),
            "busiest_pairs": [self.pair_json(p) for p in self.busiest_pairs(3)],
            "alerts": sum(v for k, v in c.items() if k.startswith("alert:")),
            "cadence": {"rag_refresh": c.get("cadence:rag_refresh", 0),
                        "pairs_refreshed": c.get("cadence_pairs_refreshed", 0),
                        "fine_tune": c.get("cadence:fine_tune", 0), "fine_tune_ms": list(job.finetunes)},
            "alerts_by_kind": {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("alert:")},
            **self._index_summary(),
        }

    def _index_summary(self) -> dict[str, Any]:
        live = self.job.live
        if live is None:
            return {}
        lags = sorted(live.freshness_ms)
        pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 1)) if lags else (lambda q: None)
        out = {k: v for k, v in live.summary().items() if k != "offsets"}
        return {"index": {**out, "freshness_p50_ms": pick(0.5), "freshness_p99_ms": pick(0.99)}}

    def busiest_pairs(self, n: int | None = None) -> list[PairState]:
        """The ``n`` pairs with the most support (None: all), ties by pair."""
        with self.job._pairs_lock:
            return sorted(self.job.pairs.values(), key=lambda s: (-s.support, s.pair))[:n]

    def clusters_json(self) -> dict[str, Any]:
        """The codebook's clusters with what this run saw of them: items assigned, engagements, drift status."""
        job = self.job
        c = job.counts.snapshot()
        drift = {} if job.live is None else job.live.drift
        cb = job.codebook
        return {"codebook": cb.version, "model": cb.model, "k": cb.k, "clusters": [
            {"cluster": i, "label": cb.label(i), "keywords": list(cb.keywords[i]),
             "items": c.get(f"cluster_items:{i}", 0), "engagements": c.get(f"cluster_engagements:{i}", 0),
             "drift": drift.get(i)} for i in range(cb.k)]}

    def pair_json(self, st: PairState, top_k: int | None = -1) -> dict[str, Any]:
        """A pair's state as JSON: its ``top_k`` successors (default: settings.transitions.top_k; None: all)."""
        label = self.job.codebook.label
        k = self.job.settings.transitions.top_k if top_k == -1 else top_k
        return {"pair": list(st.pair), "labels": [label(st.pair[0]), label(st.pair[1])],
                "support": round(st.support, 2), "ts_ms": st.ts_ms, "half_life": st.half_life,
                "weights": {label_: round(w, 4) for label_, w in st.weights},
                "support_by_half_life": {label_: round(n, 2)
                                         for (label_, _), n in zip(st.weights, st.supports, strict=False)},
                "successors": [{"cluster": s.cluster, "label": label(s.cluster), "score": round(s.score, 4),
                                "count": round(s.count, 2), "trend": round(s.trend, 4)}
                               for s in st.successors[:k]]}

    def write(self, out: Path, summary: dict[str, Any]) -> None:
        """``summary.json``, and with clusters ``successors.json`` (every pair) and ``clusters.json``, in ``out``."""
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.job.clustering is not None:
            pairs = [self.pair_json(p, top_k=None) for p in self.busiest_pairs()]
            (out / "successors.json").write_text(json.dumps(pairs, indent=1) + "\n")
            (out / "clusters.json").write_text(json.dumps(self.clusters_json(), indent=1) + "\n")

    def progress(self, t0: float, stop: threading.Event) -> None:
        """A progress line every ``--progress-every`` seconds until ``stop`` (run in a daemon thread)."""
        every = self.job.args.progress_every
        while not stop.wait(every):
            s = self.summary(time.monotonic() - t0)
            print(
                f"[driftrag] {s['seconds']:.0f}s: {s['messages']:,} messages "
                f"({s['engagements']:,} engagements, {s['content_events']:,} content, "
                f"{s['dead_letter']:,} dead-letter) {s['messages_per_s'] or 0:,.0f} msg/s",
                file=sys.stderr, flush=True,
            )
            self.job._show_context()
