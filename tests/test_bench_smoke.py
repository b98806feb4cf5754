"""The issue-16 benchmarks run end to end on a tiny workload and print the JSON their README tables are read from.

Figures are not checked (no timing assertions): only that each script finishes, exits 0 and reports every key a
README row quotes, so a change that breaks a benchmark fails here rather than in the next session's measuring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_pipeline_bench_file_part_reports_its_keys():
    r = _bench("pipeline.py", "--events", "3000", "--repeats", "1", "--skip", "kafka,scaleout,freshness,index")
    f = r["details"]["file"]
    assert r["file_events_per_s"] > 0 and f["messages"] > 3000
    for key in ("file_no_drift_events_per_s", "cold_file_events_per_s", "restart_from_store_file_events_per_s",
                "file_validate_only_events_per_s"):
        assert f[key] > 0, key
    assert r["aims"]["file_events_per_s"] == 100_000 and r["aims"]["kafka_vs_file_ratio"] == 0.8
    assert r["kafka_vs_file_ratio"] is None and r["scaleout_2_workers_ratio"] is None  # parts skipped: no figure


@pytest.mark.slow
def test_scale_bench_reports_per_k_index_size_and_user_count():
    r = _bench("scale.py", "--ks", "16", "--events", "3000", "--items-per-topic", "20", "--users", "300",
               "--index-sizes", "3000", "--queries", "20", "--context-queries", "50", "--context-seconds", "5",
               "--user-counts", "500,2000")
    job = r["clusters"]["16"]
    assert job["messages"] > 3000 and job["events_per_s"] > 0 and 0 < job["drift_share"] < 1
    assert job["live_pairs"] > 0 and job["drift_state_snapshot"]["pickle_bytes"] > 0
    ix = r["index"]["3000"]
    assert ix["upserts_per_s"] > 0 and 0 <= ix["approx"]["recall_at_10"] <= 1 and ix["snapshot"]["bytes"] > 0
    for n in ("500", "2000"):
        u = r["users"][n]
        assert u["same_triples"] is True and u["events_per_s_ratio"] > 0
        assert u["driftrag"]["users_in_state"] <= int(n) and u["driftrag"]["state_pickle_bytes_per_user"] > 0
        assert u["driftrag"]["triples"] == u["per_user_keys"]["triples"] > 0
    assert set(r["ratios"]["users_2000_vs_500"]) == {"events_per_s", "rss_bytes_per_user"}


@pytest.mark.slow
def test_drift_eval_bench_scores_driftrag_and_its_peers():
    """bench/drift_eval.py (the drift detection figures against ADWIN, Page-Hinkley and KSWIN) on two small
    families: every detector reports the figures the README quotes."""
    r = _bench("drift_eval.py", "--calib-seeds", "11", "--eval-seeds", "201", "--families", "drifting,retail",
               "--events", "6000")
    for name in ("driftrag", "adwin", "pagehinkley", "kswin"):
        for key in ("recall", "precision", "f1", "false_alarms_per_1000_cluster_hours", "delay_median_h"):
            assert key in r[name], (name, key)
    assert r["driftrag"]["drifts"] > 0 and set(r["families"]) >= {"drifting", "retail"}
