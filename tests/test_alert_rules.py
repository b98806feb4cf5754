"""The Prometheus alert rules (deploy/prometheus/alerts.yml): `promtool check rules`, their unit tests
(`promtool test rules` on alerts_test.yml), `promtool check config` on prometheus.yml, and that the unit tests
can fail: each deliberate break of a rule makes them fail. Every dashboard query must parse as PromQL too.

promtool comes with Debian's `prometheus` package (`apt-get install prometheus`; .ci/run installs it); without it
these tests fail rather than skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "alerts.yml"
RULE_TESTS = PROM_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "driftrag.json"
REQUIRED_ALERTS = {"DriftCritical", "ConsumerLagGrowing", "DeadLetterRateHigh", "JobDown", "IndexStale"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus), "
                    "which provides /usr/bin/promtool; .ci/run does this in CI")
    return path


def run(promtool: str, *args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_check(promtool):
    r = run(promtool, "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_rules_unit_tests_pass(promtool):
    r = run(promtool, "test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_prometheus_config_check(promtool):
    # also resolves rule_files relative to the config, as the server does
    r = run(promtool, "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "rule files found" in r.stdout


def test_alerts_are_labelled_and_documented():
    by_name = {r["alert"]: r for r in rules()}
    assert set(by_name) >= REQUIRED_ALERTS
    for name, r in by_name.items():
        assert r["labels"]["severity"] in ("warning", "critical"), name
        for key in ("summary", "description", "runbook"):
            assert r["annotations"].get(key, "").strip(), f"{name} has no {key}"
    assert by_name["DriftCritical"]["labels"]["severity"] == "critical"
    assert by_name["JobDown"]["labels"]["severity"] == "critical"


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing, quiet = set(), set()
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {r["alert"] for r in rules()}
    assert names <= firing, f"never tested firing: {names - firing}"
    assert names <= quiet, f"never tested quiet: {names - quiet}"


# Each mutation breaks one rule in a way a real mistake could; the unit tests must notice every one.
MUTATIONS = {
    "drift: critical level moved to 3": ("max by (kind) (driftrag_drift_score_max) >= 2",
                                         "max by (kind) (driftrag_drift_score_max) >= 3"),
    "drift: a run's first critical missed": ('unless driftrag_drift_alerts_total{severity="critical"} offset 15m',
                                             'unless driftrag_drift_alerts_total{severity="critical"}'),
    "drift: warnings counted": ('increase(driftrag_drift_alerts_total{severity="critical"}[15m])',
                                "increase(driftrag_drift_alerts_total[15m])"),
    "lag: growth not required": ("sum by (topic) (deriv(driftrag_consumer_lag_messages[10m])) > 0",
                                 "sum by (topic) (deriv(driftrag_consumer_lag_messages[10m])) > -1e9"),
    "dead letters: ratio 50%": ("> 0.05\n", "> 0.5\n"),
    "dead letters: no valid series breaks it": ("(sum(rate(driftrag_events_valid_total[5m])) or vector(0))",
                                                "sum(rate(driftrag_events_valid_total[5m]))"),
    "job down: dataflow state ignored": ('up{job="driftrag-job"} == 0 or driftrag_dataflow_running == 0',
                                         'up{job="driftrag-job"} == 0'),
    "index stale: quiet stream fires": ("and on ()\n            sum(driftrag_consumer_lag_messages) > 0",
                                        "and on ()\n            sum(driftrag_consumer_lag_messages) >= 0"),
    "index stale: changelog lag ignored": ("max by (instance) (driftrag_changelog_lag_messages) > 0",
                                           "max by (instance) (driftrag_changelog_lag_messages) >= 0"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_unit_tests_catch_a_broken_rule(promtool, tmp_path, name):
    old, new = MUTATIONS[name]
    text = RULES.read_text()
    assert text.count(old) == 1, f"mutation {name!r} no longer matches alerts.yml"
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert run(promtool, "check", "rules", RULES.name, cwd=tmp_path).returncode == 0  # still a valid rule
    r = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0, f"the unit tests pass with {name!r}"
    assert "FAILED" in r.stdout + r.stderr


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    # Grafana's $__rate_interval / $__range are substituted before the query reaches Prometheus.
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    assert exprs
    group = {"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": re.sub(r"\$__(rate_interval|range|interval)", "5m", e)}
        for i, e in enumerate(exprs)]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [group]}))
    r = run(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
