"""Drift detection benchmark (issue #5): driftrag's DriftMonitor beside River's ADWIN and PageHinkley and an
always-alarm baseline, on generator streams with planted drifts, in one run. Prints one JSON object.

    python bench/drift_eval.py [--seed 7] [--calib-seed 11] [--check-seed 13] [--events 100000]
    python bench/drift_eval.py --calibrate     # only print the calibrated thresholds (DriftConfig defaults)

Set-up, stated:

- streams: the generator's default drifting scenario (``--seed``), a stationary one for calibration
  (``--calib-seed``) and a held-out stationary one for the "no critical alert" check (``--check-seed``), all
  with GeneratorConfig defaults except ``events``;
- clusters from the ground truth's item -> cluster map (the eval measures detection, not embedding);
- item vectors: item texts embedded with ``make_embedder("auto")`` (cached per text); ``novel`` = the item's
  best cosine to its cluster's earlier items is under ``NOVEL_COS``;
- triples: a TransitionTracker per user over positive engagements;
- thresholds: :func:`operators.drift.calibrate` on the calibration stream (target ``--target`` false alarms per
  1,000 cluster-hours, with the floors below) — these are the DriftConfig defaults;
- River peers: per (cluster, kind), fed the same per-window signal that the monitor computes at each hourly
  evaluation (engagement: current positive rate; volume: log current share; transition: JSD of the cluster's
  busiest-scoring pair vs its reference; content: mean cosine of fresh items to the reference centroid); each
  ``drift_detected`` is one alarm. always_alarm: an alarm at every evaluation that has a signal;
- matching: an alarm matches a planted drift of the same kind and cluster (transition: the pair's second
  cluster, which is the alert's cluster) when start_ms <= ts <= end_ms + tolerance; the first match is a
  detection, later ones are duplicates; unmatched alarms are false alarms. precision = detections / alarms;
  cluster-hours = n_clusters x stream hours; delays from the drift's start (events = engagements in between);
- updates_per_s: driftrag = input events (engagements, items, triples) per second of monitor time, evaluations
  included; River = window values per second of detector time (their unit is one value per cluster-kind-hour).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from operators.drift import HOUR_MS, DriftConfig, DriftMonitor, calibrate  # noqa: E402
from operators.transitions import TransitionTracker  # noqa: E402
from streams.contract import ContentEvent, Engagement, RawMessage, Validator  # noqa: E402
from streams.generator import GeneratorConfig, WorkloadGenerator  # noqa: E402

KINDS = ("transition", "engagement", "content", "volume")
DAY_MS = 24 * HOUR_MS
NOVEL_COS = 0.6
FLOORS = {"transition": 0.25, "engagement": 0.05, "content": 0.03, "volume": 0.5}  # minimal effect sizes


def log(msg: str) -> None:
    print(f"[drift_eval] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- the stream


class Embeddings:
    def __init__(self) -> None:
        self._embedder: Any = None
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> None:
        todo = sorted({t for t in texts if t not in self.cache})
        if not todo:
            return
        if self._embedder is None:
            from operators.embedding import make_embedder
            self._embedder = make_embedder("auto")
        t0 = time.perf_counter()
        vecs = self._embedder.encode(todo)
        log(f"embedded {len(todo)} texts in {time.perf_counter() - t0:.1f}s")
        self.cache.update(zip(todo, vecs, strict=True))


def load_stream(cfg: GeneratorConfig, emb: Embeddings) -> tuple[list[tuple], dict[str, Any]]:
    """Events in order: ("e", ts, cluster, positive, user) | ("i", ts, cluster, vector, novel)."""
    gen = WorkloadGenerator(cfg)
    gt = gen.ground_truth()
    item_cluster = {k: int(v) for k, v in gt["items"].items()}
    val = Validator()
    events: list[Any] = []
    for n, m in enumerate(gen.messages()):
        ev = val.validate(RawMessage(m.topic, 0, n, m.key, m.value))
        if isinstance(ev, Engagement) and ev.item_id in item_cluster:
            events.append(("e", ev.ts_ms, item_cluster[ev.item_id], ev.positive, ev.user_id))
        elif isinstance(ev, ContentEvent) and ev.item_id in item_cluster:
            events.append(("i", ev.ts_ms, item_cluster[ev.item_id], ev.text, False))
    emb.encode([e[3] for e in events if e[0] == "i"])
    seen: dict[int, list[np.ndarray]] = defaultdict(list)
    for i, e in enumerate(events):
        if e[0] == "i":
            v = emb.cache[e[3]]
            prev = seen[e[2]]
            novel = bool(prev) and float(np.max(np.stack(prev) @ v)) < NOVEL_COS
            prev.append(v)
            events[i] = ("i", e[1], e[2], v, novel)
    return events, gt


def signal_of(kind: str, r: dict[str, Any]) -> float:
    """The per-window value River's detectors see."""
    if kind == "engagement":
        return float(r["rate_after"])
    if kind == "volume":
        return float(np.log(r["share_after"] + 1e-4))
    if kind == "transition":
        return float(r["js"])
    return float(r["cos_after"])


def run_monitor(events: list[tuple], cfg: DriftConfig) -> dict[str, Any]:
    """Feed the monitor; collect its alerts, per-evaluation results and timing."""
    mon = DriftMonitor(cfg)
    trackers: dict[str, TransitionTracker] = defaultdict(TransitionTracker)
    alerts, windows = [], []  # windows: (ts, {(cluster, kind): result})
    last_eval = None
    t_mon = 0.0
    perf = time.perf_counter
    for e in events:
        t0 = perf()
        if e[0] == "e":
            _, ts, c, pos, user = e
            out = mon.on_engagement(c, ts, pos)
            if pos:
                tr = trackers[user].update(c)
                if tr is not None:
                    out += mon.on_triple(tr[0], tr[1], tr[2], ts)
        else:
            out = mon.on_item(e[2], e[1], e[3], e[4])
        t_mon += perf() - t0
        alerts += out
        if mon._evaluated != last_eval:
            last_eval = mon._evaluated
            windows.append((last_eval, dict(mon._last)))
    return {"alerts": alerts, "windows": windows, "seconds": t_mon, "updates": mon.updates, "monitor": mon}


def score_series(windows: list[tuple]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    series: dict[str, dict[int, list[tuple[int, float]]]] = {k: defaultdict(list) for k in KINDS}
    for ts, res in windows:
        for (c, kind), r in res.items():
            series[kind][c].append((ts, r["score"]))
    return series


def run_river(windows: list[tuple], which: str) -> tuple[list[tuple[int, str, int]], int, float]:
    from river import drift
    make = {"adwin": drift.ADWIN, "pagehinkley": drift.PageHinkley}[which]
    dets: dict[tuple[int, str], Any] = {}
    alarms, n, secs = [], 0, 0.0
    perf = time.perf_counter
    for ts, res in windows:
        for key, r in res.items():
            x = signal_of(key[1], r)
            t0 = perf()
            d = dets.get(key)
            if d is None:
                d = dets[key] = make()
            d.update(x)
            hit = d.drift_detected
            secs += perf() - t0
            n += 1
            if hit:
                alarms.append((key[0], key[1], ts))
    return alarms, n, secs


def run_river_per_event(events: list[tuple], which: str) -> tuple[list[tuple[int, str, int]], int, float]:
    """A second River set-up: per-event streams instead of per-window values (stated in the output).

    engagement: per cluster, the positive indicator of each engagement; volume: per cluster, for every
    engagement, whether it is in that cluster; transition: per second cluster of the pair, whether c_next is the
    pair's most frequent successor so far; content: per cluster, each new item's cosine to the centroid of the
    cluster's earlier items.
    """
    from river import drift
    make = {"adwin": drift.ADWIN, "pagehinkley": drift.PageHinkley}[which]
    dets: dict[tuple[int, str], Any] = {}
    alarms: list[tuple[int, str, int]] = []
    n, secs = 0, 0.0
    perf = time.perf_counter
    clusters = sorted({e[2] for e in events})
    trackers: dict[str, TransitionTracker] = defaultdict(TransitionTracker)
    pair_counts: dict[tuple[int, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    centroids: dict[int, np.ndarray] = {}

    def feed(c: int, kind: str, x: float, ts: int) -> None:
        nonlocal n, secs
        t0 = perf()
        d = dets.get((c, kind))
        if d is None:
            d = dets[(c, kind)] = make()
        d.update(x)
        hit = d.drift_detected
        secs += perf() - t0
        n += 1
        if hit:
            alarms.append((c, kind, ts))

    for e in events:
        ts, c = e[1], e[2]
        if e[0] == "e":
            feed(c, "engagement", float(e[3]), ts)
            for k in clusters:
                feed(k, "volume", float(k == c), ts)
            if e[3]:
                tr = trackers[e[4]].update(c)
                if tr is not None:
                    counts = pair_counts[(tr[0], tr[1])]
                    if counts:
                        mode = max(counts, key=lambda k: (counts[k], -k))
                        feed(tr[1], "transition", float(tr[2] == mode), ts)
                    counts[tr[2]] += 1
        else:
            v = e[3]
            cen = centroids.get(c)
            if cen is not None:
                feed(c, "content", float(v @ cen / (np.linalg.norm(cen) or 1.0)), ts)
                centroids[c] = cen + v
            else:
                centroids[c] = v.astype(np.float64)
    return alarms, n, secs


# --------------------------------------------------------------------------------------------------- scoring


def evaluate(alarms: list[tuple[int, str, int]], drifts: list[dict], eng_ts: list[int], cluster_hours: float,
             tol_ms: int) -> dict[str, Any]:
    found: dict[str, int] = {}
    false, dup = 0, 0
    per_kind = {k: {"alarms": 0, "false_alarms": 0} for k in KINDS}
    for c, kind, ts in sorted(alarms, key=lambda a: a[2]):
        per_kind[kind]["alarms"] += 1
        hit = next((d for d in drifts if d["kind"] == kind and d["cluster"] == c
                    and d["start_ms"] <= ts <= d["end_ms"] + tol_ms), None)
        if hit is None:
            false += 1
            per_kind[kind]["false_alarms"] += 1
        elif hit["id"] in found:
            dup += 1
        else:
            found[hit["id"]] = ts
    recall = len(found) / len(drifts) if drifts else 0.0
    precision = len(found) / len(alarms) if alarms else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    delays_ms = [found[d["id"]] - d["start_ms"] for d in drifts if d["id"] in found]
    delays_ev = [bisect.bisect_right(eng_ts, found[d["id"]]) - bisect.bisect_left(eng_ts, d["start_ms"])
                 for d in drifts if d["id"] in found]

    def q(xs: list[float], p: float) -> float | None:
        return float(np.percentile(xs, p)) if xs else None

    for k in KINDS:
        ds = [d for d in drifts if d["kind"] == k]
        per_kind[k]["recall"] = sum(d["id"] in found for d in ds) / len(ds) if ds else None
    return {
        "recall": round(recall, 4), "precision": round(precision, 4), "f1": round(f1, 4),
        "false_alarms": false, "duplicates": dup, "alarms": len(alarms),
        "false_alarms_per_1000_cluster_hours": round(1000 * false / cluster_hours, 4),
        "delay_median_events": q(delays_ev, 50), "delay_p90_events": q(delays_ev, 90),
        "delay_median_hours": None if not delays_ms else round(q(delays_ms, 50) / HOUR_MS, 2),
        "delay_p90_hours": None if not delays_ms else round(q(delays_ms, 90) / HOUR_MS, 2),
        "detected": {d["id"]: (None if d["id"] not in found else round((found[d["id"]] - d["start_ms"]) / HOUR_MS, 2))
                     for d in drifts},
        "per_kind": per_kind,
    }


def calibrated_config(calib_seed: int, events: int, target: float, emb: Embeddings) -> tuple[DriftConfig, dict]:
    cfg = GeneratorConfig(seed=calib_seed, scenario="stationary", events=events)
    stream, _ = load_stream(cfg, emb)
    base = DriftConfig()
    run = run_monitor(stream, base)
    hours = cfg.span_ms / HOUR_MS
    warning, critical = calibrate(score_series(run["windows"]), cluster_hours=cfg.n_clusters * hours,
                                  target_per_1000h=target, rearm_fraction=base.rearm_fraction,
                                  cooldown_ms={k: base.cooldown(k) for k in KINDS}, floors=FLOORS)
    info = {"seed": calib_seed, "scenario": "stationary", "events": events, "target_per_1000_cluster_hours": target,
            "floors": FLOORS, "warning": warning, "critical": critical,
            "method": "smallest level within an even share of the false-alarm budget per kind (AlertGate "
                      "episodes on the stationary score series) x1.25, at least the floor; critical = "
                      "max(2 x warning, 1.25 x largest stationary score)"}
    return DriftConfig(warning=warning, critical=critical), info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--calib-seed", type=int, default=11)
    ap.add_argument("--check-seed", type=int, default=13)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--target", type=float, default=0.5, help="false alarms per 1,000 cluster-hours to calibrate to")
    ap.add_argument("--tolerance-days", type=float, default=2.0)
    ap.add_argument("--calibrate", action="store_true", help="only calibrate and print the thresholds")
    ap.add_argument("--defaults", action="store_true", help="use DriftConfig defaults instead of calibrating")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    emb = Embeddings()
    if args.defaults:
        dcfg, calib = DriftConfig(), {"source": "DriftConfig defaults"}
    else:
        log(f"calibrating on stationary seed {args.calib_seed}")
        dcfg, calib = calibrated_config(args.calib_seed, args.events, args.target, emb)
    if args.calibrate:
        print(json.dumps(calib, indent=2))
        return 0

    gcfg = GeneratorConfig(seed=args.seed, events=args.events)
    log(f"drifting stream seed {args.seed}")
    stream, gt = load_stream(gcfg, emb)
    drifts = gt["drifts"]
    eng_ts = [e[1] for e in stream if e[0] == "e"]
    hours = gcfg.span_ms / HOUR_MS
    cluster_hours = gcfg.n_clusters * hours
    tol = int(args.tolerance_days * DAY_MS)
    ours = run_monitor(stream, dcfg)
    seen_ids: set[str] = set()  # an escalation (same alert_id) is not a new alarm
    our_alarms = []
    for a in ours["alerts"]:
        if a.alert_id not in seen_ids:
            seen_ids.add(a.alert_id)
            our_alarms.append((a.cluster, a.kind, a.ts_ms))
    result: dict[str, Any] = {}
    result["driftrag"] = evaluate(our_alarms, drifts, eng_ts, cluster_hours, tol)
    result["driftrag"]["updates_per_s"] = round(ours["updates"] / ours["seconds"], 1)
    result["driftrag"]["updates_unit"] = "input events (engagements, items, triples) incl. evaluation"
    result["driftrag"]["alerts"] = [{"id": a.alert_id, "severity": a.severity, "score": round(a.score, 4),
                                     "reference": a.reference} for a in ours["alerts"]]
    for name in ("adwin", "pagehinkley"):
        alarms, n, secs = run_river(ours["windows"], name)
        result[name] = evaluate(alarms, drifts, eng_ts, cluster_hours, tol)
        result[name]["updates_per_s"] = round(n / secs, 1) if secs else None
        result[name]["updates_unit"] = "window values (one per cluster-kind-hour)"
    result["river_per_event"] = {}
    for name in ("adwin", "pagehinkley"):
        alarms, n, secs = run_river_per_event(stream, name)
        r = evaluate(alarms, drifts, eng_ts, cluster_hours, tol)
        r.pop("detected")
        r["updates_per_s"] = round(n / secs, 1) if secs else None
        r["updates_unit"] = "per-event values (see run_river_per_event)"
        result["river_per_event"][name] = r
    always = [(c, k, ts) for ts, res in ours["windows"] for (c, k) in res]
    result["always_alarm"] = evaluate(always, drifts, eng_ts, cluster_hours, tol)
    result["always_alarm"]["updates_per_s"] = None
    for name in ("adwin", "pagehinkley", "always_alarm"):
        result[name].pop("detected")

    log(f"stationary check seed {args.check_seed}")
    scfg = GeneratorConfig(seed=args.check_seed, scenario="stationary", events=args.events)
    sstream, _ = load_stream(scfg, emb)
    srun = run_monitor(sstream, dcfg)
    sh = scfg.n_clusters * scfg.span_ms / HOUR_MS
    n_alerts = len({a.alert_id for a in srun["alerts"]})
    stationary = {"seed": args.check_seed, "alerts": n_alerts,
                  "critical_alerts": sum(a.severity == "critical" for a in srun["alerts"]),
                  "false_alarms_per_1000_cluster_hours": round(1000 * n_alerts / sh, 4),
                  "by_kind": {k: sum(a.kind == k for a in srun["alerts"]) for k in KINDS}}
    d = result["driftrag"]
    out = {
        **result,
        "aims": {
            "recall>=0.9": d["recall"] >= 0.9,
            "false_alarms<=1/1000h": d["false_alarms_per_1000_cluster_hours"] <= 1.0,
            "f1>adwin": d["f1"] > result["adwin"]["f1"],
            "f1>pagehinkley": d["f1"] > result["pagehinkley"]["f1"],
            "f1>river_per_event": all(d["f1"] > r["f1"] for r in result["river_per_event"].values()),
            "stationary_no_critical": stationary["critical_alerts"] == 0,
        },
        "stationary_check": stationary,
        "setup": {"seed": args.seed, "events": args.events, "n_clusters": gcfg.n_clusters, "days": gcfg.days,
                  "cluster_hours": cluster_hours, "tolerance_days": args.tolerance_days, "novel_cos": NOVEL_COS,
                  "drifts": [{k: x[k] for k in ("id", "cluster", "pair", "start_ms", "end_ms")} for x in drifts],
                  "thresholds": {"warning": dcfg.warning, "critical": dcfg.critical}, "calibration": calib,
                  "windows_ms": dcfg.window_ms, "reference_ms": dcfg.reference_ms,
                  "cooldown_ms": {k: dcfg.cooldown(k) for k in KINDS},
                  "runtime_s": round(time.perf_counter() - t_start, 1)},
    }
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
