"""The paper's offline hit-rate experiment: replay positive engagements and compare table update strategies.

A table maps each user pair (c1, c2) (last two distinct positive clusters, brief: 'Transitions') to a predicted
next novel cluster. Every time a user moves to a new cluster c (pair (h2, c)), each strategy predicts the top-1
successor of that pair from its own table as it is at that moment, never c1 or c2; the point is a hit when the
prediction is among the first ``next_n`` distinct later clusters of that user (consecutive duplicates removed,
c1 and c2 left out). The triple emitted by the same engagement reaches the tables only after the predictions.

Successor estimates: the adaptive default (:class:`~operators.adaptive_successors.AdaptiveSuccessorTable`: counts
at each of ``half_lives_ms`` per pair, mixed by each half-life's decayed quadratic score) and each of those
half-lives alone (``by_half_life``), all through the production code and scored in one pass on the same points. For each
estimate, the strategies (a snapshot is a lookup table of top-1 per pair, built from the streaming estimate read
at the snapshot time, with rows below ``min_support`` left out):

- ``streaming``: the live estimate, updated on every triple;
- ``refresh_1d`` / ``refresh_2d``: the snapshot taken at every day / every other day from ``start_ms``;
- ``frozen``: the snapshot taken at ``start_ms``, never refreshed;
- ``hybrid``: the snapshot at the last fine-tune time <= t (before any: the one at ``start_ms``) plus a RAG
  estimate of the triples since that fine-tune; its top-1 when its pair support >= ``min_support``; where that
  support is thin (or before any fine-tune) the live estimate's top-1 when its support reaches
  ``min_support``, else the snapshot's answer. (Before this fallback, a thin RAG layer handed the point to the
  fine-tune-time table and the hybrid scored below streaming wherever no fine-tune happened.)

A pair without a row (or with too little support) falls back to the strategy's own global successor counts
(without c1, c2); with none, the point is a miss. Ties go to the smallest cluster id.

One user walks 1, 2, 3, 1, 2, 3 with no warm-up: the only point a table can answer is the second visit of (1, 2).

>>> evs = [("u", c, ts) for ts, c in enumerate([1, 2, 3, 1, 2, 3])]
>>> r = evaluate(evs, config=EvalConfig(warmup_ms=0, min_support=0.5))
>>> r["triples"], r["predictions"], r["hits"]["streaming"], r["hits"]["frozen"], r["hit_rate"]["hybrid"]
(4, 4, 1, 0, 0.25)
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from operators.adaptive_successors import DEFAULT_HALF_LIVES_MS, AdaptiveSuccessorTable, half_life_label
from operators.transitions import TransitionTracker

__all__ = ["ADAPTIVE", "DAY_MS", "PAIRED", "PERIODS", "STRATEGIES", "EvalConfig", "evaluate", "plot_report"]

DAY_MS = 86_400_000
ADAPTIVE = "adaptive"
STRATEGIES = ("frozen", "refresh_2d", "refresh_1d", "streaming", "hybrid")
# Paired differences reported (first minus second): the paper's ordering, and the hybrid against both ends.
PAIRED = (("streaming", "refresh_2d"), ("refresh_2d", "frozen"), ("refresh_1d", "refresh_2d"),
          ("streaming", "frozen"), ("hybrid", "frozen"), ("hybrid", "streaming"))
_Z95 = 1.959963984540054
_TOP_K_JACCARD = 5

Pair = tuple[int, int]

DEFINITIONS = {
    "hit": "A point is a hit when the predicted cluster (never c1 or c2) is among the first next_n distinct clusters "
           "of the user's later positive sequence, consecutive duplicates and c1, c2 removed.",
    "strategies": {
        "frozen": "Lookup table built once from the decayed counts at start_ms and never refreshed.",
        "refresh_2d": "Lookup table rebuilt from the decayed counts every 2 days from start_ms.",
        "refresh_1d": "Lookup table rebuilt from the decayed counts every day from start_ms.",
        "streaming": "Decayed successor counts updated on every triple and read at the prediction time.",
        "hybrid": "Lookup table at the last fine-tune (start_ms before any) plus decayed RAG counts of the triples "
                  "since then, whose pair top-1 wins when its support reaches min_support; where that support is "
                  "thin (or before any fine-tune), the live counts' top-1 when theirs reaches it, else the "
                  "table's row.",
    },
    "adaptive": "Counts at each fixed half-life per pair, mixed by weights from each half-life's decayed quadratic "
                "(Brier) score on the pair's own transitions, backed off to its source cluster's "
                "(operators.adaptive_successors).",
}


PERIODS = {"day": DAY_MS, "week": 7 * DAY_MS, "month": 30 * DAY_MS}


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one replay; every field is checked here (``ValueError`` naming the field).

    ``half_lives_ms``: the fixed half-lives (``None``: no decay) the adaptive default combines; each is also
    scored on its own (``by_half_life``). ``jaccard_min_support``: transitions a pair needs in a one-day period
    for the Jaccard; a period of d days needs ``jaccard_min_support * sqrt(d)``.
    """

    warmup_ms: int = 2 * DAY_MS
    next_n: int = 3
    min_support: float = 3.0
    period_ms: int = DAY_MS
    jaccard_min_support: int = 20
    half_lives_ms: tuple[int | None, ...] = tuple(None if h == math.inf else int(h) for h in DEFAULT_HALF_LIVES_MS)

    def __post_init__(self) -> None:
        for name, low in (("warmup_ms", 0), ("next_n", 1), ("period_ms", 1), ("jaccard_min_support", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        v = self.min_support
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"min_support must be a finite number >= 0, got {v!r}")
        hl = self.half_lives_ms
        if not hl or len(set(hl)) != len(hl) or any(
                h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1) for h in hl):
            raise ValueError(f"half_lives_ms must be distinct ints >= 1 or None (no decay), got {hl!r}")

    @property
    def jaccard_floor(self) -> float:
        return self.jaccard_min_support * math.sqrt(self.period_ms / DAY_MS)


def _ranking(weights: dict[int, float]) -> tuple[int, ...]:
    return tuple(k for k, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])))


def _first_not_in(ranking: Iterable[int], pair: Pair) -> int | None:
    return next((c for c in ranking if c != pair[0] and c != pair[1]), None)


class _Snapshot:
    """A lookup table: top-1 per pair with enough support at ``as_of_ms``, plus the global ranking."""

    __slots__ = ("as_of_ms", "ranking", "rows")

    def __init__(self, as_of_ms: int, rows: dict[Pair, int], ranking: tuple[int, ...]) -> None:
        self.as_of_ms, self.rows, self.ranking = as_of_ms, rows, ranking

    def predict(self, pair: Pair) -> int | None:
        top = self.rows.get(pair)
        return top if top is not None else _first_not_in(self.ranking, pair)


def _row(table: AdaptiveSuccessorTable, pair: Pair, now_ms: int, min_support: float) -> int | None:
    """The pair's own top-1 when its support reaches ``min_support``, else None (no global fallback)."""
    counts = table.row(pair, now_ms, min_support)
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None  # type: ignore[return-value]


def _snapshot(table: AdaptiveSuccessorTable, now_ms: int, min_support: float) -> _Snapshot:
    rows = {p: top for p in table.pairs() if (top := _row(table, p, now_ms, min_support)) is not None}
    return _Snapshot(now_ms, rows, _ranking(table.global_counts(now_ms)))  # type: ignore[arg-type]


class _Estimator:
    """One successor estimate (adaptive, or one fixed half-life) and the five strategies' tables built from it."""

    __slots__ = ("make", "rag", "snaps", "stream")

    def __init__(self, half_lives_ms: tuple[float, ...]) -> None:
        self.make = lambda: AdaptiveSuccessorTable(half_lives_ms)
        self.stream = self.make()
        self.rag: AdaptiveSuccessorTable | None = None  # counts since the last fine-tune; None before any
        self.snaps: dict[str, _Snapshot | None] = dict.fromkeys(("frozen", "refresh_2d", "refresh_1d", "hybrid"))

    def predict(self, pair: Pair, ts: int, ms: float) -> dict[str, int | None]:
        stream, snaps = self.stream, self.snaps
        hybrid = _row(self.rag, pair, ts, ms) if self.rag is not None else None
        if hybrid is None:  # thin (or no) RAG since the fine-tune: the live counts, then the base's own row
            hybrid = _row(stream, pair, ts, ms)
        if hybrid is None:
            hybrid = snaps["hybrid"].predict(pair)  # type: ignore[union-attr]
        return {"frozen": snaps["frozen"].predict(pair),  # type: ignore[union-attr]
                "refresh_2d": snaps["refresh_2d"].predict(pair),  # type: ignore[union-attr]
                "refresh_1d": snaps["refresh_1d"].predict(pair),  # type: ignore[union-attr]
                "streaming": stream.top1(pair, ts, ms),  # type: ignore[dict-item]
                "hybrid": hybrid}


def _truth(seq: list[int], i: int, n: int) -> list[int]:
    """First ``n`` distinct clusters after position ``i`` of a deduplicated sequence, without seq[i-1], seq[i]."""
    c1, c2 = seq[i - 1], seq[i]
    out: list[int] = []
    for j in range(i + 1, len(seq)):
        x = seq[j]
        if x != c1 and x != c2 and x not in out:
            out.append(x)
            if len(out) == n:
                break
    return out


def _wilson(hits: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    p, z2 = hits / n, _Z95 * _Z95
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den
    return [round(max(0.0, centre - half), 5), round(min(1.0, centre + half), 5)]


def _paired(outcomes: Counter[int], ia: int, ib: int, n: int) -> dict[str, Any] | None:
    """Hit rate of bit ``ia`` minus bit ``ib`` on the same points, with a 95% interval from the discordant points
    (McNemar): the comparison that says whether a small difference between strategies is more than noise."""
    if n == 0:
        return None
    ia, ib = 1 << ia, 1 << ib
    only_a = sum(v for m, v in outcomes.items() if m & ia and not m & ib)
    only_b = sum(v for m, v in outcomes.items() if m & ib and not m & ia)
    diff = (only_a - only_b) / n
    half = _Z95 * math.sqrt(max(0.0, only_a + only_b - n * diff * diff)) / n
    return {"diff": round(diff, 5), "ci95": [round(diff - half, 5), round(diff + half, 5)],
            "only_first_hit": only_a, "only_second_hit": only_b}


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _rate(hits: int, n: int) -> float | None:
    return round(hits / n, 5) if n else None


def _top_set(counts: Counter[int]) -> set[int]:
    return {c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_K_JACCARD]}


def _jaccard(per_pair: dict[Pair, dict[int, Counter[int]]], t0: int, end: int, cfg: EvalConfig) -> dict[str, Any]:
    """Jaccard of top-5 successor sets of each pair between consecutive periods (undecayed counts), for pairs
    with at least ``cfg.jaccard_floor`` transitions in both periods."""
    n_periods = (end - t0) // cfg.period_ms + 1
    values: list[list[float]] = [[] for _ in range(n_periods)]
    m = cfg.jaccard_floor
    for by_period in per_pair.values():
        for k, cur in by_period.items():
            prev = by_period.get(k - 1)
            if prev is not None and prev.total() >= m and cur.total() >= m:
                a, b = _top_set(prev), _top_set(cur)
                values[k].append(len(a & b) / len(a | b))
    flat = [v for vs in values for v in vs]
    per_period = [{"start_ms": t0 + k * cfg.period_ms, "day": _day(t0 + k * cfg.period_ms), "pairs": len(values[k]),
                   "mean": round(sum(values[k]) / len(values[k]), 5) if values[k] else None}
                  for k in range(1, n_periods)]
    return {"mean": round(sum(flat) / len(flat), 5) if flat else None, "pairs_compared": len(flat),
            "period_ms": cfg.period_ms, "min_support": round(m, 3), "per_period": per_period}


def _check_events(engagements: Iterable[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    events = list(engagements)
    last = None
    for i, ev in enumerate(events):
        if not (isinstance(ev, tuple | list) and len(ev) == 3):
            raise ValueError(f"engagement {i} must be (user_id, cluster, ts_ms), got {ev!r}")
        _, c, ts = ev
        if isinstance(c, bool) or not isinstance(c, int) or isinstance(ts, bool) or not isinstance(ts, int):
            raise ValueError(f"engagement {i}: cluster and ts_ms must be ints, got {ev!r}")
        if last is not None and ts < last:
            raise ValueError(f"engagement {i} is out of event-time order: ts_ms {ts} < {last}")
        last = ts
    return events


def _label(h: int | None) -> str:
    return half_life_label(math.inf if h is None else h)


def evaluate(engagements: Iterable[tuple[str, int, int]], finetune_ms: Sequence[int] = (),
             config: EvalConfig | None = None) -> dict[str, Any]:
    """Replay positive engagements ``(user_id, cluster, ts_ms)`` (event-time order) and score every strategy, for
    the adaptive successor estimate (``hit_rate``) and for each fixed half-life it combines (``by_half_life``),
    all in one pass over the same points.

    Points before ``start_ms`` (first ts + ``warmup_ms``) and points with no later novel cluster are not
    evaluated. Returns a JSON-ready report; rates and intervals are None where nothing was evaluated.
    """
    cfg = config if config is not None else EvalConfig()
    events = _check_events(engagements)
    for f in finetune_ms:
        if isinstance(f, bool) or not isinstance(f, int):
            raise ValueError(f"finetune_ms must hold int epoch milliseconds, got {f!r}")
    fts = sorted(set(finetune_ms))
    t0, end = (events[0][2], events[-1][2]) if events else (None, None)
    start = t0 + cfg.warmup_ms if t0 is not None else None
    n_days = (end - start) // DAY_MS + 1 if events and end >= start else 0
    per_pair: dict[Pair, dict[int, Counter[int]]] = defaultdict(lambda: defaultdict(Counter))

    seqs: dict[str, list[int]] = defaultdict(list)  # each user's positive clusters, consecutive duplicates removed
    for u, c, _ in events:
        s = seqs[u]
        if not s or s[-1] != c:
            s.append(c)

    hls = tuple(math.inf if h is None else float(h) for h in cfg.half_lives_ms)
    names = (ADAPTIVE, *(_label(h) for h in cfg.half_lives_ms))
    ests = {ADAPTIVE: _Estimator(hls), **{names[i + 1]: _Estimator((h,)) for i, h in enumerate(hls)}}
    combos = [(e, s) for e in names for s in STRATEGIES]  # bit i of a point's mask: combos[i] hit
    day_n = [0] * n_days
    day_hits = {combo: [0] * n_days for combo in combos}
    ms, n_next = cfg.min_support, cfg.next_n
    trackers: dict[str, TransitionTracker[int]] = {}
    pos: dict[str, int] = {}
    next_day, fi, n_triples = 0, 0, 0
    outcomes: Counter[int] = Counter()  # which (estimate, strategy) hit, as a bit mask per point
    for u, c, ts in events:
        while True:  # boundaries up to ts, in time order: each snapshot holds the triples before it
            bd = start + next_day * DAY_MS
            if fi < len(fts) and fts[fi] <= ts and fts[fi] <= bd:
                for est in ests.values():
                    est.snaps["hybrid"], est.rag = _snapshot(est.stream, fts[fi], ms), est.make()
                fi += 1
            elif bd <= ts:
                for est in ests.values():
                    snap = _snapshot(est.stream, bd, ms)
                    est.snaps["refresh_1d"] = snap
                    if next_day % 2 == 0:
                        est.snaps["refresh_2d"] = snap
                    if next_day == 0:
                        est.snaps["frozen"] = snap
                        if est.snaps["hybrid"] is None:
                            est.snaps["hybrid"] = snap
                next_day += 1
            else:
                break

        tracker = trackers.get(u)
        if tracker is None:
            tracker = trackers[u] = TransitionTracker()
        h2 = tracker.h2
        triple = tracker.update(c)
        if c == h2:
            continue
        i = pos[u] = pos.get(u, -1) + 1
        if h2 is not None and ts >= start:
            truth = _truth(seqs[u], i, n_next)
            if truth:
                pair = (h2, c)
                d = (ts - start) // DAY_MS
                day_n[d] += 1
                mask, bit = 0, 0
                for e in names:
                    for s, p in ests[e].predict(pair, ts, ms).items():
                        if p is not None and p in truth:
                            day_hits[(e, s)][d] += 1
                            mask |= 1 << bit
                        bit += 1
                outcomes[mask] += 1
        if triple is not None:  # after the predictions: no peeking
            n_triples += 1
            for est in ests.values():
                est.stream.update(triple, ts)
                if est.rag is not None:
                    est.rag.update(triple, ts)
            per_pair[(triple[0], triple[1])][(ts - t0) // cfg.period_ms][triple[2]] += 1

    n = sum(day_n)
    hits = {combo: sum(v) for combo, v in day_hits.items()}
    bit_of = {combo: i for i, combo in enumerate(combos)}
    rate = {e: {s: _rate(hits[(e, s)], n) for s in STRATEGIES} for e in names}
    fixed = names[1:]
    winner = {}
    for s in STRATEGIES:
        best = max(names, key=lambda e: (hits[(e, s)], e == ADAPTIVE))
        winner[s] = best if n else None
    per_day = [{"day": _day(start + d * DAY_MS), "start_ms": start + d * DAY_MS, "predictions": day_n[d],
                "hit_rate": {s: _rate(day_hits[(ADAPTIVE, s)][d], day_n[d]) for s in STRATEGIES},
                "by_half_life": {e: {s: _rate(day_hits[(e, s)][d], day_n[d]) for s in STRATEGIES} for e in fixed}}
               for d in range(n_days)]
    jac = _jaccard(per_pair, t0, end, cfg) if events else {"mean": None, "pairs_compared": 0, "per_period": []}
    final = ests[ADAPTIVE].stream
    eff = Counter(_label(final.effective_half_life_ms(p, end)) for p in final.pairs()) if events else Counter()
    return {
        "hit_rate": rate[ADAPTIVE],
        "by_half_life": {e: rate[e] for e in fixed},
        "winner": winner,
        "adaptive_minus_fixed": {e: {s: _paired(outcomes, bit_of[(ADAPTIVE, s)], bit_of[(e, s)], n)
                                     for s in STRATEGIES} for e in fixed},
        "adaptive": {"half_lives": list(fixed),
                     "pairs_by_effective_half_life": {e: eff.get(e, 0) for e in fixed}},
        "hits": {s: hits[(ADAPTIVE, s)] for s in STRATEGIES},
        "predictions": n,
        "per_day": per_day,
        "ci95": {s: _wilson(hits[(ADAPTIVE, s)], n) for s in STRATEGIES},
        "paired": {f"{a}-{b}": _paired(outcomes, bit_of[(ADAPTIVE, a)], bit_of[(ADAPTIVE, b)], n)
                   for a, b in PAIRED},
        "jaccard_top5": jac,
        "finetune_ms": fts,
        "start_ms": start,
        "end_ms": end,
        "users": len(seqs),
        "triples": n_triples,
        "config": {**asdict(cfg), "half_lives_ms": list(cfg.half_lives_ms)},
        "definitions": {"hit": DEFINITIONS["hit"], "strategies": dict(DEFINITIONS["strategies"]),
                        "adaptive": DEFINITIONS["adaptive"]},
    }


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Write a PNG of ``evaluate``'s report: per-day hit rate per strategy with fine-tune times (dashed), and
    below it the per-period mean Jaccard of top-5 successors. Uses matplotlib's Agg canvas (no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a main dependency
        raise ImportError("plot_report needs matplotlib: pip install 'matplotlib>=3.8,<4'") from exc

    def nan(v: float | None) -> float:
        return float("nan") if v is None else v

    path = Path(path)
    start = report["start_ms"] or 0
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_j = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    days = report["per_day"]
    xs = [(d["start_ms"] - start) / DAY_MS + 0.5 for d in days]
    for s in STRATEGIES:
        ax.plot(xs, [nan(d["hit_rate"][s]) for d in days], marker="o", ms=3, label=s)
    for i, f in enumerate(report["finetune_ms"]):
        ax.axvline((f - start) / DAY_MS, color="grey", ls="--", lw=1, label="fine-tune" if i == 0 else None)
    rates = ", ".join(f"{s} {r:.3f}" if r is not None else f"{s} n/a" for s, r in report["hit_rate"].items())
    ax.set_title(f"Hit rate (overall, n={report['predictions']}): {rates}", fontsize=9)
    ax.set_ylabel(f"hit rate (next {report['config']['next_n']})")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    per = report["jaccard_top5"]["per_period"]
    period = report["config"]["period_ms"]
    ax_j.plot([(p["start_ms"] + period / 2 - start) / DAY_MS for p in per], [nan(p["mean"]) for p in per],
              marker="s", ms=3, color="black")
    ax_j.set_ylim(-0.05, 1.05)
    ax_j.set_ylabel("Jaccard top-5")
    ax_j.set_xlabel(f"days since evaluation start ({_day(start)} UTC)")
    ax_j.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=100)
    return path
