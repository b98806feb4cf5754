"""The drift dashboard: the index's alert log and pair history (seeded, exact), the files and API routes it uses,
and the page itself in headless Chromium (Debian ``chromium`` driven by Playwright) against a running
``driftrag run`` service filled by a file replay with a planted drift.

Set ``DRIFTRAG_DASHBOARD_PNG=docs/dashboard.png`` to also write the README's screenshot (256 colours)."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from index.dashboard import ASSETS, CSP
from index.http import create_app
from index.live import BadRequest, LiveIndex, NotFound
from index.mutations import codebook_mutation, drift_mutation, pair_mutation
from streams.generator import GeneratorConfig, write_files
from tests.conftest import stop_process

HOUR = 3_600_000


def _alert(aid: str, cluster: int, severity: str, ts: int, score: float = 1.0) -> dict:
    return {"alert_id": aid, "cluster": cluster, "kind": "volume", "score": score, "threshold": 0.5,
            "severity": severity, "window": {"start": ts - HOUR, "end": ts}, "evidence": {"share_after": 0.1},
            "reference": {"policy": "rolling"}, "ts": ts}


def _index() -> LiveIndex:
    live = LiveIndex(backend="cpu", min_support=1.0)
    cent = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    live.apply([codebook_mutation(np.array(cent, np.float32), [["a"], ["b"], ["c"]], version="v1", model="m")])
    return live


# -- the index: alert log and pair history ---------------------------------------------------------------------


def test_alert_log_keeps_opened_escalated_and_closed_alerts_newest_first():
    live = _index()
    a1w, a1c = _alert("x1", 1, "warning", 10 * HOUR), _alert("x1", 1, "critical", 11 * HOUR, 2.0)
    a2 = _alert("x2", 2, "warning", 12 * HOUR)
    live.apply([drift_mutation(1, scores={"volume": 1.2}, alerts=[a1w], reference={}, ts_ms=10 * HOUR)])
    live.apply([drift_mutation(1, scores={"volume": 2.0}, alerts=[a1c], reference={}, ts_ms=11 * HOUR)])
    live.apply([drift_mutation(2, scores={"volume": 1.1}, alerts=[a2], reference={}, ts_ms=12 * HOUR)])
    live.apply([drift_mutation(1, scores={"volume": 0.1}, alerts=[], reference={}, ts_ms=13 * HOUR)])
    out = live.recent_alerts(10)
    assert [(r["alert_id"], r["status"]) for r in out["alerts"]] == [("x2", "open"), ("x1", "closed")]
    x1 = out["alerts"][1]
    assert (x1["severity"], x1["opened_ts"], x1["closed_ts"]) == ("critical", 10 * HOUR, 13 * HOUR)
    assert [s["severity"] for s in x1["severities"]] == ["warning", "critical"]
    assert x1["evidence"] == {"share_after": 0.1} and x1["label"] == "b"
    assert live.recent_alerts(1)["alerts"][0]["alert_id"] == "x2" and out["total"] == 2
    with pytest.raises(BadRequest):
        live.recent_alerts(0)


def test_alert_log_is_bounded_and_still_lists_open_alerts_it_did_not_see_open():
    live = _index()
    live.alerts_seen.size = 3
    for i in range(6):
        live.apply([drift_mutation(0, scores={"volume": 1.0}, alerts=[_alert(f"y{i}", 0, "warning", i * HOUR)],
                                   reference={}, ts_ms=i * HOUR)])
    assert [r["alert_id"] for r in live.recent_alerts(50)["alerts"]] == ["y5", "y4", "y3"]
    restored = _index()  # e.g. restored from a snapshot: drift status set without the log
    restored.drift[2] = {"scores": {"volume": 1.0}, "alerts": [_alert("z", 2, "warning", HOUR)], "reference": {},
                         "ts_ms": HOUR}
    assert [(r["alert_id"], r["status"]) for r in restored.recent_alerts(5)["alerts"]] == [("z", "open")]


def _pair(c1: int, c2: int, shares: dict[int, float], ts: int, support: float = 10.0):
    succ = [{"cluster": c, "count": s * support, "score": s, "trend": 0.0} for c, s in shares.items()]
    return pair_mutation(c1, c2, successors=succ, support=support, half_life_ms=1e12, ts_ms=ts, ingest_ms=0)


def test_pair_history_one_point_per_bucket_and_columnar_series():
    live = _index()
    live.apply([_pair(0, 1, {2: 0.9, 0: 0.1}, 1 * HOUR)])
    live.apply([_pair(0, 1, {2: 0.8, 0: 0.2}, 1 * HOUR + 60_000)])  # same 2 h bucket: replaces the point
    live.apply([_pair(0, 1, {2: 0.6, 1: 0.4}, 3 * HOUR)])
    live.apply([_pair(0, 1, {2: 0.1, 1: 0.9}, 2 * HOUR + 1)])  # older than the last point, another bucket: ignored
    h = live.pair_history(0, 1, k=5)
    assert h["history"]["ts_ms"] == [1 * HOUR + 60_000, 3 * HOUR]
    series = {s["cluster"]: s["shares"] for s in h["history"]["successors"]}
    # the current successors are those of the newest mutation applied (full state per key)
    assert [s["cluster"] for s in h["successors"]] == [1, 2]
    assert series == {1: [None, 0.4], 2: [0.8, 0.6], 0: [0.2, None]}
    assert h["labels"] == ["a", "b"]
    with pytest.raises(NotFound):
        live.pair_history(1, 0)
    with pytest.raises(NotFound):
        live.pair_history(0, 7)  # not a cluster
    with pytest.raises(BadRequest):
        live.pair_history(0, 1, k=21)


def test_pair_history_keeps_the_most_recently_updated_pairs_and_few_points():
    live = _index()
    live.pair_shares.max_pairs, live.pair_shares.max_points = 2, 3
    for i in range(5):
        live.apply([_pair(0, 1, {2: 1.0}, i * 2 * HOUR)])
    assert live.pair_history(0, 1)["history"]["ts_ms"] == [4 * HOUR, 6 * HOUR, 8 * HOUR]
    live.apply([_pair(1, 2, {0: 1.0}, HOUR), _pair(2, 0, {1: 1.0}, HOUR)])
    assert len(live.pair_history(1, 2)["history"]["ts_ms"]) == 1
    evicted = live.pair_history(0, 1)  # the least recently updated pair's history went; its successors did not
    assert evicted["history"]["ts_ms"] == [] and [s["cluster"] for s in evicted["successors"]] == [2]
    assert set(live.pair_shares) == {(1, 2), (2, 0)}
    ranked = live.busiest_pairs(2)
    assert ranked["total"] == 3 and len(ranked["pairs"]) == 2
    assert ranked["pairs"][0]["top_successor"]["cluster"] in (0, 1, 2)


# -- the routes ------------------------------------------------------------------------------------------------


def test_dashboard_files_are_served_with_types_and_a_self_only_policy():
    live = _index()
    live.apply([_pair(0, 1, {2: 1.0}, HOUR)])
    with TestClient(create_app(live)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CSP and "default-src 'self'" in CSP
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page loads nothing from elsewhere"
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline: CSP allows none
        for name, media_type in ASSETS.items():
            r = client.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media_type, name
            assert r.headers["content-security-policy"] == CSP
        assert f'src="/dashboard/static/{"uPlot.iife.min.js"}"' in page.text
        for bad in ("index.html/../x", "..%2Fhttp.py", "nope.js"):
            r = client.get(f"/dashboard/static/{bad}")
            assert r.status_code == 404 and set(r.json()) == {"error", "detail"}, bad
        assert client.get("/v1/alerts?limit=0").json()["error"] == "bad_request"
        assert client.get("/v1/alerts?limit=x").status_code == 400
        assert client.get("/v1/pairs?limit=1001").status_code == 400
        assert client.get("/v1/pairs/0/1?k=0").json()["error"] == "bad_request"
        assert client.get("/v1/pairs/x/1").json()["error"] == "not_found"
        assert client.get("/v1/pairs/1/0").status_code == 404
        assert client.get("/v1/pairs/0/1").json()["successors"][0]["cluster"] == 2


# -- the page in headless Chromium against a replayed service ---------------------------------------------------


def _cut_lines(src: Path, dst: Path, cut_ms: int) -> None:
    """Keep the lines whose event time is at most ``cut_ms`` (the generator writes epoch ms or RFC 3339)."""
    with src.open("rb") as f, dst.open("wb") as g:
        for line in f:
            ts = orjson.loads(line).get("ts")
            if isinstance(ts, str):
                ts = int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
            if ts <= cut_ms:
                g.write(line)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`driftrag run` over files cut 12 h after the planted abrupt volume drift (a new cluster that trends): it
    is the strongest drift at the end of the replay. Yields the URL and that cluster in the codebook's numbers."""
    data, cut, out = (tmp_path_factory.mktemp(n) for n in ("data", "cut", "out"))
    cfg = GeneratorConfig(seed=7, events=60_000)
    write_files(cfg, data)
    gt = orjson.loads((data / "ground_truth.json").read_bytes())
    (planted,) = [d for d in gt["drifts"] if (d["kind"], d["mode"]) == ("volume", "abrupt")]
    for name in ("engagements.jsonl", "items.jsonl"):
        _cut_lines(data / name, cut / name, planted["start_ms"] + 12 * HOUR)
    log = tmp_path_factory.mktemp("log") / "run.log"
    args = ["run", "--events", str(cut / "engagements.jsonl"), "--items", str(cut / "items.jsonl"), "--port", "0",
            "--host", "127.0.0.1", "--keep-serving", "--out", str(out), "--progress-every", "60",
            "--codebook-dir", str(tmp_path_factory.mktemp("codebooks"))]
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 600
        while "still serving" not in (text := log.read_text()):
            assert proc.poll() is None, f"driftrag run exited ({proc.returncode}):\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"the replay did not finish in 600 s:\n{text[-3000:]}"
            time.sleep(0.5)
        url = re.search(r"still serving (http://\S+)", text).group(1)
        votes: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for line in (out / "items.jsonl").read_bytes().splitlines():
            it = orjson.loads(line)
            if it["item_id"] in gt["items"]:
                votes[gt["items"][it["item_id"]]][it["cluster"]] += 1
        ours = votes[planted["cluster"]].most_common(1)[0][0]
        yield {"url": url, "cluster": ours, "planted": planted}
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_the_api_lists_the_planted_alert_with_its_evidence(service):
    with httpx.Client(base_url=service["url"], timeout=30) as c:
        ranking = c.get("/v1/drift").json()["clusters"]
        assert ranking[0]["cluster"] == service["cluster"], ranking[:3]
        alerts = c.get("/v1/alerts", params={"limit": 100}).json()["alerts"]
        opened = [a["opened_ts"] for a in alerts]
        assert opened == sorted(opened, reverse=True)
        mine = [a for a in alerts if a["cluster"] == service["cluster"] and a["kind"] == "volume"]
        assert mine and mine[0]["status"] == "open"
        ev = mine[0]["evidence"]  # no reference traffic, whichever of the two volume tests fired first
        before = ev["count_before"] if ev["test"] == "log_share_ratio" else ev["tests"]["share_cusum"]["reference"][1]
        assert before == 0
        assert service["planted"]["start_ms"] <= mine[0]["opened_ts"]
        pairs = c.get("/v1/pairs", params={"limit": 5}).json()["pairs"]
        supports = [p["support"] for p in pairs]
        assert len(pairs) == 5 and supports == sorted(supports, reverse=True)
        h = c.get(f"/v1/pairs/{pairs[0]['pair'][0]}/{pairs[0]['pair'][1]}").json()["history"]
        assert len(h["ts_ms"]) > 10 and all(len(s["shares"]) == len(h["ts_ms"]) for s in h["successors"])


def _browser(playwright):  # noqa: ANN001, ANN202
    """Debian's chromium (CI installs it: .ci/run); ``DRIFTRAG_CHROMIUM`` names another binary. Missing: a failure."""
    path = os.environ.get("DRIFTRAG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"headless Chromium is required for the dashboard test and {path} does not exist: "
                    "apt-get install chromium (or set DRIFTRAG_CHROMIUM to a Chromium binary)")
    return playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])


@pytest.mark.slow
def test_the_dashboard_in_headless_chromium(service, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the dashboard test needs Playwright: pip install -e '.[dev]' (or pip install playwright)")
    with httpx.Client(base_url=service["url"], timeout=30) as c:
        fresh = c.get("/v1/drift").json()["freshness"]
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            page.goto(service["url"] + "/dashboard")
            page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 1", timeout=30_000)

            first = page.locator("#ranking tbody tr").first
            assert first.get_attribute("data-cluster") == str(service["cluster"])
            assert first.locator("td.kw").inner_text().strip()  # its keywords
            alert = page.locator(f'#alerts li[data-cluster="{service["cluster"]}"][data-kind="volume"]').first
            assert alert.count() == 1
            evidence = alert.locator("dl.evidence").inner_text()
            assert "window" in evidence and ("share_after" in evidence or "share_cusum" in evidence)
            watermark = datetime.fromtimestamp(fresh["watermark_ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
            assert page.inner_text("#watermark") == watermark
            assert page.inner_text("#version") != "-" and page.inner_text("#lag") != "-"
            assert page.locator("#cluster-title").inner_text().startswith(f"{service['cluster']}:")
            assert page.locator("#successors tbody tr").count() >= 1
            assert page.locator("#pair-chart canvas").count() == 1 and page.locator("#alert-chart canvas").count() == 1
            assert "error" not in (page.get_attribute("#status", "class") or "")

            # a typed token goes with every API call as a bearer token (this service has none configured)
            page.fill("#token", "s3cret")
            with page.expect_request(lambda r: "/v1/drift" in r.url) as req:
                page.click("#auth button")
            assert req.value.headers.get("authorization") == "Bearer s3cret"
            page.wait_for_function("() => Number(document.body.dataset.refreshes) >= 2", timeout=30_000)
            assert page.evaluate("sessionStorage.getItem('driftrag-token')") == "s3cret"
            page.fill("#token", "")
            page.click("#auth button")
            page.wait_for_function("() => Number(document.body.dataset.refreshes) >= 3", timeout=30_000)

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not problems, problems
            target = os.environ.get("DRIFTRAG_DASHBOARD_PNG")
            if target:
                from PIL import Image
                Image.open(shot).convert("RGB").quantize(256).save(target, optimize=True)
        finally:
            browser.close()


def test_the_dashboard_asks_for_a_token_when_the_api_needs_one(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the dashboard test needs Playwright: pip install -e '.[dev]' (or pip install playwright)")
    from index.http import serve_in_thread
    from streams.settings import IndexSettings

    token = "s3cret-token-0123456789abcdef"
    live = _index()
    live.apply([_pair(0, 1, {2: 1.0}, HOUR),
                drift_mutation(2, scores={"volume": 1.5}, alerts=[_alert("v", 2, "warning", HOUR)], reference={},
                               ts_ms=HOUR)])
    app = create_app(live, settings=IndexSettings(tokens=[f"ui:read:{token}"]))
    with serve_in_thread(app, "127.0.0.1", 0) as server, sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/dashboard")  # the page itself is public
            page.wait_for_selector("#status.error")
            assert "needs a token" in page.inner_text("#status")
            page.fill("#token", token)
            page.click("#auth button")
            page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 1", timeout=30_000)
            assert page.locator("#ranking tbody tr").first.get_attribute("data-cluster") == "2"
            assert page.locator('#alerts li[data-alert-id="v"]').count() == 1
            assert page.inner_text("#watermark") == "1970-01-01 01:00 UTC"
            assert not errors, errors
        finally:
            browser.close()
