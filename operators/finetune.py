"""Fine-tuning samples from the successor state: [(c1, c2) -> c_next] in a prompt/completion format.

As in the paper, a sample teaches the model one observed move: a user whose last two distinct interest clusters
were c1 then c2 went on to c_next. Filters, in order (each a stated rule, counted in the export's report):

- a pair needs ``min_support`` decayed transitions (rarer pairs are noise, and RAG covers them anyway);
- a successor needs ``min_count`` decayed observations;
- balanced across pairs: at most ``per_pair`` successors per pair (its most frequent), so the busiest pairs do
  not crowd out the rest; each sample carries its count and its share of the pair, for weighting.

>>> pairs = [{"pair": [1, 2], "support": 12.0, "ts_ms": 5, "successors": [
...     {"cluster": 3, "count": 9.0, "score": 0.75}, {"cluster": 4, "count": 2.0, "score": 0.17},
...     {"cluster": 5, "count": 1.0, "score": 0.08}]},
...     {"pair": [2, 3], "support": 2.0, "ts_ms": 5, "successors": [{"cluster": 1, "count": 2.0, "score": 1.0}]}]
>>> samples, report = finetune_samples(pairs, {1: "jazz, bass", 2: "film", 3: "bikes", 4: "yarn"},
...                                    min_support=5, min_count=1.5, per_pair=3)
>>> [(s["pair"], s["next"], s["count"]) for s in samples], report["skipped_pairs_support"]
([([1, 2], 3, 9.0), ([1, 2], 4, 2.0)], 1)
>>> samples[0]["completion"]
'cluster 3 (bikes)'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["PROMPT", "finetune_samples", "prompt_for"]

PROMPT = ("A user's two most recent interest clusters, oldest first, are cluster {c1} ({l1}) and cluster {c2} "
          "({l2}). Which interest cluster, other than these two, will the user engage with next? Answer with the "
          "cluster id and its keywords.")


def prompt_for(c1: int, c2: int, label: Callable[[int], str]) -> str:
    return PROMPT.format(c1=c1, c2=c2, l1=label(c1), l2=label(c2))


def finetune_samples(pairs: Iterable[Mapping[str, Any]], labels: Mapping[int, str] | Callable[[int], str], *,
                     min_support: float = 5.0, min_count: float = 1.0, per_pair: int = 3, since_ms: int | None = None,
                     codebook: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Samples from pair states ``{"pair", "support", "ts_ms", "successors": [{"cluster", "count", ...}]}`` (the
    shape of ``successors.json`` and of the index's ``pair:`` mutations), and a report of what was kept.

    ``since_ms``: only pairs whose state changed at or after this event time (what moved since the last
    fine-tune). Counts are the state's decayed counts at its ``ts_ms``, copied unchanged; ``half_life`` is the
    pair's effective time scale when the state has one (the adaptive estimate's, e.g. ``"7d"``, ``"none"``)."""
    for name, v in (("min_support", min_support), ("min_count", min_count)):
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    if isinstance(per_pair, bool) or not isinstance(per_pair, int) or per_pair < 1:
        raise ValueError(f"per_pair must be an int >= 1, got {per_pair!r}")
    label = labels if callable(labels) else (lambda c: labels.get(c) or f"cluster {c}")
    samples: list[dict[str, Any]] = []
    report = {"pairs_in": 0, "pairs_out": 0, "skipped_pairs_since": 0, "skipped_pairs_support": 0,
              "skipped_successors_count": 0, "skipped_successors_balance": 0}
    for p in sorted(pairs, key=lambda p: (-float(p["support"]), tuple(p["pair"]))):
        report["pairs_in"] += 1
        c1, c2 = (int(c) for c in p["pair"])
        if since_ms is not None and int(p["ts_ms"]) < since_ms:
            report["skipped_pairs_since"] += 1
            continue
        if float(p["support"]) < min_support:
            report["skipped_pairs_support"] += 1
            continue
        succ = sorted(p["successors"], key=lambda s: (-float(s["count"]), int(s["cluster"])))
        kept = [s for s in succ if float(s["count"]) >= min_count and int(s["cluster"]) not in (c1, c2)]
        report["skipped_successors_count"] += len(succ) - len(kept)
        report["skipped_successors_balance"] += max(0, len(kept) - per_pair)
        if not kept:
            continue
        report["pairs_out"] += 1
        prompt = prompt_for(c1, c2, label)
        for s in kept[:per_pair]:
            c = int(s["cluster"])
            samples.append({
                "prompt": prompt, "completion": f"cluster {c} ({label(c)})",
                "pair": [c1, c2], "next": c, "count": float(s["count"]),
                "share": round(float(s["count"]) / float(p["support"]), 6) if float(p["support"]) else 0.0,
                "support": float(p["support"]), "ts_ms": int(p["ts_ms"]),
                **({"half_life": str(p["half_life"])} if p.get("half_life") else {}),
                **({"codebook": codebook} if codebook else {}),
            })
    report["samples"] = len(samples)
    return samples, report
