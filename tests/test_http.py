"""The query API end to end: a real uvicorn server in a thread, the real client, a LiveIndex filled by mutations."""

from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from index.client import DriftragClient, DriftragError
from index.http import create_app, serve_in_thread
from index.live import LiveIndex
from index.mutations import codebook_mutation, item_mutation, pair_mutation, stats_mutation

DIM = 8
KEYWORDS = [["hiking", "trail", "boots"], ["baking", "sourdough", "bread"], ["running", "marathon", "shoes"],
            ["coffee", "espresso", "beans"], ["jazz", "vinyl", "records"], ["chess", "openings", "puzzles"]]
K = len(KEYWORDS)
T0 = 1_700_000_000_000
HALF_LIFE = 1e15  # no decay within the test's event times


def succ(*rows: tuple[int, float, float]) -> list[dict]:
    total = sum(n for _, n, _ in rows)
    return [{"cluster": c, "count": n, "score": n / total, "trend": t} for c, n, t in rows]


# (0, 1): well supported; (2, 3): well supported; (0, 2): too little support of its own (backs off to neighbours)
PAIRS = {
    (0, 1): (10.0, succ((2, 6.0, 0.1), (3, 3.0, 0.3), (4, 1.0, -0.05))),
    (2, 3): (8.0, succ((4, 5.0, 0.0), (5, 3.0, 0.2))),
    (0, 2): (1.0, succ((5, 1.0, 0.0))),
}


def item_vector(c: int, j: int) -> np.ndarray:
    rng = np.random.default_rng(100 * c + j)
    v = np.eye(DIM, dtype=np.float32)[c] + 0.1 * rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def base_mutations() -> list:
    ms = [codebook_mutation(np.eye(K, DIM, dtype=np.float32), KEYWORDS, version="cb-1", model="test")]
    for c in range(K):
        for j in range(3):
            iid = f"c{c}-i{j}"
            ms.append(item_mutation(iid, cluster=c, distance=0.1, novel=False, text=f"{KEYWORDS[c][0]} item {j}",
                                    ts_ms=T0 + 10 * c + j, ingest_ms=0, vector=item_vector(c, j)))
            ms.append(stats_mutation(iid, cluster=c, engagements=j + 1, positive=j, first_seen_ms=T0,
                                     last_seen_ms=T0 + 10 * c + j, ingest_ms=0))
    for (a, b), (support, successors) in PAIRS.items():
        ms.append(pair_mutation(a, b, successors=successors, support=support, half_life_ms=HALF_LIFE,
                                ts_ms=T0 + 100, ingest_ms=0))
    return ms


def filled_index() -> LiveIndex:
    live = LiveIndex(backend="cpu", min_support=3.0)
    live.apply(base_mutations())
    return live


@pytest.fixture
def serve():
    """``serve(live, **create_app_kwargs) -> (client, server)``; every server and client is stopped after."""
    running = []

    def start(live: LiveIndex, **kwargs):
        server = serve_in_thread(create_app(live, **kwargs))
        client = DriftragClient(server.url, timeout=10)
        running.append((server, client))
        return client, server

    yield start
    for server, client in running:
        client.close()
        server.stop()
        assert not server.thread.is_alive()


@pytest.fixture(scope="module")
def api():
    live = filled_index()
    server = serve_in_thread(create_app(live))
    with DriftragClient(server.url, timeout=10) as client:
        yield client
    server.stop()


def raw(api: DriftragClient, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, api.base_url + path, timeout=10, **kwargs)


def assert_error(resp: httpx.Response, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == error and body["detail"], body
    return body


# ------------------------------------------------------------------------------------------------ context


def test_context_exact_pair(api):
    ctx = api.context(clusters=[0, 1], k=3, items_per_successor=2)
    assert ctx["source"] == "exact"
    assert ctx["pair"] == [0, 1] and ctx["labels"] == ["hiking, trail, boots", "baking, sourdough, bread"]
    assert [s["cluster"] for s in ctx["successors"]] == [2, 3, 4]
    assert [s["label"] for s in ctx["successors"]] == [", ".join(KEYWORDS[c]) for c in (2, 3, 4)]
    assert [s["score"] for s in ctx["successors"]] == [0.6, 0.3, 0.1]
    assert [s["count"] for s in ctx["successors"]] == [6.0, 3.0, 1.0]
    assert ctx["evidence"]["support"] == 10.0
    # two freshest items of each successor, freshest first
    assert [i["item_id"] for i in ctx["items"]] == ["c2-i2", "c2-i1", "c3-i2", "c3-i1", "c4-i2", "c4-i1"]
    assert all(i["cluster"] in (2, 3, 4) for i in ctx["items"])
    assert ctx["items"][0]["engagements"] == 3 and ctx["items"][0]["positive"] == 2
    assert ctx["freshness"]["watermark_ts"] == T0 + 100 and ctx["freshness"]["index_version"] >= 1
    prompt = ctx["prompt"]
    for c in (0, 1, 2, 3, 4):
        assert ", ".join(KEYWORDS[c]) in prompt
    assert "cluster 2" in prompt and "60% of next steps" in prompt and "c2-i2" in prompt
    assert prompt.index("running, marathon, shoes") < prompt.index("coffee, espresso, beans")


def test_context_k_and_items_per_successor(api):
    ctx = api.context(clusters=[0, 1], k=1, items_per_successor=0)
    assert [s["cluster"] for s in ctx["successors"]] == [2] and ctx["items"] == []
    ctx = api.context(clusters=[0, 1])  # defaults: k=3, 2 items per successor
    assert len(ctx["successors"]) == 3 and len(ctx["items"]) == 6


def test_context_trend_mode(api):
    ctx = api.context(clusters=[0, 1], mode="trend")
    assert [s["cluster"] for s in ctx["successors"]] == [3, 2, 4]
    assert [s["trend"] for s in ctx["successors"]] == [0.3, 0.1, -0.05]
    assert "rising share" in ctx["prompt"]


def test_context_backs_off_to_neighbor_pairs(api):
    ctx = api.context(clusters=[0, 2], k=5)  # (0, 2) has support 1 < 3
    assert ctx["source"] == "neighbor"
    assert sorted(map(tuple, ctx["evidence"]["pairs"])) == [(0, 1), (2, 3)]
    got = [s["cluster"] for s in ctx["successors"]]
    assert got and not {0, 2} & set(got)
    assert got[0] == 4  # 1 * 0.5 from (0, 1) + 5 * 0.5 from (2, 3): the most of any
    assert abs(sum(s["score"] for s in ctx["successors"]) - 1.0) < 1e-3
    assert all(i["cluster"] in got for i in ctx["items"])
    assert "most similar moves" in ctx["prompt"]


def test_context_unseen_pair_backs_off_to_neighbors(api):
    ctx = api.context(clusters=[1, 0])  # never observed; its vector is close to (0, 1) and (0, 2)
    assert ctx["source"] == "neighbor"
    assert not {0, 1} & {s["cluster"] for s in ctx["successors"]}


def test_context_global_fallback(api):
    ctx = api.context(clusters=[5, 4], k=5)  # orthogonal to every observed pair
    assert ctx["source"] == "global"
    assert [s["cluster"] for s in ctx["successors"]] == [2, 3]  # 4 and 5 (the query's own) are excluded
    assert "all users" in ctx["prompt"]


def test_context_from_history(api):
    # clusters 0, 0, 1, (unknown), 1 -> the last two distinct clusters are (0, 1)
    ctx = api.context(history=["c0-i0", "c0-i1", "c1-i0", "nope-1", "c1-i2", "nope-2"])
    assert ctx["pair"] == [0, 1] and ctx["source"] == "exact"
    assert [s["cluster"] for s in ctx["successors"]] == [2, 3, 4]
    assert ctx["unknown_items"] == ["nope-1", "nope-2"]
    # going back to an earlier cluster is a move too: 0 -> 1 -> 0 gives the pair (1, 0)
    assert api.context(history=["c0-i0", "c1-i0", "c0-i1"])["pair"] == [1, 0]
    # one known cluster: the pair is just [c2]
    one = api.context(history=["c2-i0", "c2-i1"])
    assert one["pair"] == [2] and "unknown_items" not in one
    assert 2 not in {s["cluster"] for s in one["successors"]}


def test_context_from_unknown_history_is_population_wide(api):
    ctx = api.context(history=["x", "y"])
    assert ctx["pair"] == [] and ctx["source"] == "global" and ctx["unknown_items"] == ["x", "y"]
    # summed over all pairs: 2: 6; 4: 1 + 5 (ties with 2, lower trend); 5: 3 + 1; 3: 3
    assert [s["cluster"] for s in ctx["successors"]] == [2, 4, 5]
    assert "unknown" in ctx["prompt"]


# ------------------------------------------------------------------------------------------------ search


def test_search_by_vector(api):
    q = np.eye(DIM, dtype=np.float32)[3]
    res = api.search(vector=q, k=4)  # a numpy array goes as a list
    scores = [i["score"] for i in res["items"]]
    assert len(res["items"]) == 4 and scores == sorted(scores, reverse=True)
    assert [i["cluster"] for i in res["items"][:3]] == [3, 3, 3]
    assert res["items"][0]["label"] == "coffee, espresso, beans"
    assert len(api.search(vector=q.tolist())["items"]) == 10  # default k
    exact = api.search(vector=item_vector(5, 1), k=1)["items"][0]
    assert exact["item_id"] == "c5-i1" and exact["score"] == pytest.approx(1.0, abs=1e-5)


def test_search_by_text_without_a_model_is_not_ready(api):
    with pytest.raises(DriftragError) as e:
        api.search(text="espresso")
    assert e.value.status == 503 and e.value.error == "not_ready"


TEXTS = {
    0: ["Trail running shoes for muddy mountain paths", "A beginner's guide to hiking in the Alps",
        "Waterproof boots tested on a week-long trek"],
    1: ["Sourdough starter: feeding schedule and troubleshooting", "How to bake a crusty baguette at home",
        "Why your bread dough does not rise"],
    2: ["Pulling the perfect espresso shot", "Light versus dark roast coffee beans compared",
        "Cold brew coffee recipe for summer"],
    3: ["Opening repertoire for club chess players", "Endgame puzzles that teach king activity",
        "What the world chess championship taught us about preparation"],
}


@pytest.fixture(scope="module")
def embedder():
    from operators.embedding import make_embedder

    return make_embedder("onnx")  # the default model, offline; the first use may export it to ONNX


def test_search_by_text_with_the_real_model(serve, embedder):
    live = LiveIndex(backend="cpu", encoder=lambda texts: embedder.encode(texts))
    ids = [(c, j) for c in TEXTS for j in range(len(TEXTS[c]))]
    vecs = embedder.encode([TEXTS[c][j] for c, j in ids])
    assert vecs.shape == (len(ids), 384)
    centroids = np.stack([vecs[[n for n, (c, _) in enumerate(ids) if c == cc]].mean(0) for cc in TEXTS])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    ms = [codebook_mutation(centroids, [["hiking"], ["baking"], ["coffee"], ["chess"]], version="cb-t", model="m")]
    ms += [item_mutation(f"t{c}-{j}", cluster=c, distance=0.1, novel=False, text=TEXTS[c][j], ts_ms=T0,
                         ingest_ms=0, vector=vecs[n]) for n, (c, j) in enumerate(ids)]
    live.apply(ms)
    client, _ = serve(live)
    for c, j in ids:
        top = client.search(text=TEXTS[c][j], k=3)["items"]
        assert top[0]["item_id"] == f"t{c}-{j}" and top[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    top = client.search(text="grinding beans for a latte", k=2)["items"]
    assert [i["cluster"] for i in top] == [2, 2] and top[0]["label"] == "coffee"


# ------------------------------------------------------------------------------------------------ clusters


def test_cluster(api):
    body = api.cluster(2)
    assert body["cluster"] == 2 and body["keywords"] == KEYWORDS[2] and body["label"] == "running, marathon, shoes"
    assert body["size"] == 3 and body["codebook_version"] == "cb-1"
    # pairs ending in 2: (0, 2), whose only successor is 5
    assert [s["cluster"] for s in body["top_successors"]] == [5] and body["pairs_ending_here"] == 1
    assert [s["cluster"] for s in api.cluster(1)["top_successors"]] == [2, 3, 4]


def test_cluster_errors(api):
    for cid in (6, 99, -1):
        with pytest.raises(DriftragError) as e:
            api.cluster(cid)
        assert e.value.status == 404 and e.value.error == "not_found" and "does not exist" in e.value.detail
    assert_error(raw(api, "GET", "/v1/clusters/abc"), 404, "not_found")
    assert_error(raw(api, "GET", "/v1/clusters/1.5"), 404, "not_found")
    assert_error(raw(api, "GET", "/v1/clusters/1?k=x"), 400, "bad_request")


# ------------------------------------------------------------------------------------------------ probes


def test_health_and_readiness(serve):
    live = LiveIndex(backend="cpu")
    client, server = serve(live)
    assert client.health() == {"status": "ok"}
    assert not client.ready()
    assert client.readiness()["error"] == "not_ready"
    assert_error(httpx.get(server.url + "/readyz"), 503, "not_ready")
    with pytest.raises(DriftragError) as e:
        client.context(clusters=[0, 1])
    assert e.value.status == 503 and e.value.error == "not_ready"
    with pytest.raises(DriftragError) as e:
        client.cluster(0)
    assert e.value.status == 503
    live.apply(base_mutations())
    assert client.ready()
    body = client.readiness()
    assert body["ready"] is True and body["codebook"] == "cb-1" and body["items"] == 18 and body["pairs"] == 3


def test_readiness_callback(serve):
    state = {"ok": False}
    client, server = serve(filled_index(), readiness=lambda: (state["ok"], "catching up: 1200 events behind"))
    assert not client.ready()
    assert assert_error(httpx.get(server.url + "/readyz"), 503, "not_ready")["detail"] == \
        "catching up: 1200 events behind"
    state["ok"] = True
    assert client.ready() and client.readiness()["ready"] is True


def test_readyz_reports_offsets(serve):
    live = filled_index()
    live.apply([], offsets={"driftrag.events": {0: 42, 1: 7}})
    client, _ = serve(live)
    assert client.readiness()["offsets"] == {"driftrag.events": {"0": 42, "1": 7}}


def test_metrics(api):
    api.context(clusters=[0, 1])
    text = api.metrics()
    assert "driftrag_index_mutations_total" in text and 'kind="item"' in text
    assert 'driftrag_http_requests_total{route="/v1/context",status="200"}' in text
    resp = raw(api, "GET", "/metrics")
    assert resp.headers["content-type"].startswith("text/plain")


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("body", "field"), [
    ({"history": "abc"}, "history"),
    ({"history": [1, 2]}, "history"),
    ({"clusters": [0, 1], "k": "3"}, "k"),
    ({"clusters": [0, 1], "k": 3.0}, "k"),
    ({"clusters": [0, 1], "k": True}, "k"),
    ({"clusters": ["0", 1]}, "clusters"),
    ({"clusters": [0, 1], "mode": 1}, "mode"),
    ({"clusters": [0, 1], "items_per_successor": "2"}, "items_per_successor"),
])
def test_context_wrong_types(api, body, field):
    detail = assert_error(raw(api, "POST", "/v1/context", json=body), 400, "bad_request")["detail"]
    assert detail.startswith(field)


@pytest.mark.parametrize("body", [
    {"clusters": [0, 1], "k": 0},
    {"clusters": [0, 1], "k": 51},
    {"clusters": [0, 1], "mode": "popular"},
    {"clusters": [0, 1], "items_per_successor": 21},
    {"clusters": [0, 1, 2]},
    {"clusters": []},
    {"clusters": [0, 1], "history": ["c0-i0"]},
    {},
    {"k": 3},
])
def test_context_checks_of_the_index(api, body):
    assert_error(raw(api, "POST", "/v1/context", json=body), 400, "bad_request")


def test_context_unknown_cluster_is_404(api):
    assert_error(raw(api, "POST", "/v1/context", json={"clusters": [0, 6]}), 404, "not_found")


def test_unknown_fields_are_ignored(api):
    resp = raw(api, "POST", "/v1/context", json={"clusters": [0, 1], "user": "u1", "extra": {"a": 1}})
    assert resp.status_code == 200 and resp.json()["source"] == "exact"


def test_json_without_content_type_is_accepted(api):
    resp = raw(api, "POST", "/v1/context", content=b'{"clusters": [0, 1]}')
    assert resp.status_code == 200


@pytest.mark.parametrize("content", [b"{bad json", b"", b"[0, 1]", b'"text"', b"null", b'{"clusters": [0, 1]'])
def test_malformed_bodies(api, content):
    for path in ("/v1/context", "/v1/search"):
        assert_error(raw(api, "POST", path, content=content, headers={"content-type": "application/json"}),
                     400, "bad_request")


@pytest.mark.parametrize("body", [
    {"vector": [1.0] * DIM, "k": 0},
    {"vector": [1.0] * DIM, "k": 1001},
    {"vector": [1.0] * DIM, "k": "2"},
    {"vector": [1.0, 2.0]},
    {"vector": "abc"},
    {"vector": [True] * DIM},
    {"vector": [1.0] * DIM, "text": "both"},
    {},
    {"text": "   "},
    {"text": 5},
])
def test_search_errors(api, body):
    assert_error(raw(api, "POST", "/v1/search", json=body), 400, "bad_request")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_non_finite_vector_is_a_400(api):
    content = b'{"vector": [NaN, 1, 1, 1, 1, 1, 1, 1]}'  # not JSON at all
    assert_error(raw(api, "POST", "/v1/search", content=content), 400, "bad_request")
    assert_error(raw(api, "POST", "/v1/search", json={"vector": [1e39] + [0.0] * (DIM - 1)}), 400, "bad_request")


def test_unknown_route_and_wrong_method(api):
    assert_error(raw(api, "GET", "/v2/context"), 404, "not_found")
    assert_error(raw(api, "POST", "/healthz"), 405, "method_not_allowed")
    resp = raw(api, "GET", "/v1/context")
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "POST"
    with pytest.raises(DriftragError) as e:
        api._json("GET", "/v1/nothing")
    assert (e.value.status, e.value.error) == (404, "not_found")


def test_unexpected_error_is_a_json_500(serve, caplog):
    live = filled_index()

    def boom(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    live.search = boom
    client, server = serve(live)
    with caplog.at_level("ERROR", logger="index.http"):
        body = assert_error(httpx.post(server.url + "/v1/search", json={"text": "x"}), 500, "internal")
    assert "secret" not in body["detail"]
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)
    assert client.health() == {"status": "ok"}  # the server lives on


def test_client_unreachable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with DriftragClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(DriftragError) as e:
            client.health()
        assert e.value.status is None and e.value.error == "unreachable"
        assert client.ready() is False


# ------------------------------------------------------------------------------------------------ serving


def test_serve_in_thread_binds_the_asked_port_and_stops(serve):
    client, server = serve(filled_index())
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    with pytest.raises(OSError):
        serve_in_thread(create_app(filled_index()), port=server.port)  # in use
    server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(DriftragError) as e:
        client.health()
    assert e.value.error == "unreachable"


def test_readers_keep_working_during_writes(serve):
    live = filled_index()
    client, _ = serve(live)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        rng = np.random.default_rng(7)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                c = int(rng.integers(K))
                a, b = (int(x) for x in rng.choice(K, 2, replace=False))
                live.apply([
                    item_mutation(f"w{n}", cluster=c, distance=0.2, novel=True, text=f"new {n}", ts_ms=T0 + 200 + n,
                                  ingest_ms=int(time.time() * 1000), vector=item_vector(c, 1000 + n)),
                    stats_mutation(f"c{c}-i0", cluster=c, engagements=n, positive=n, first_seen_ms=T0,
                                   last_seen_ms=T0 + 200 + n, ingest_ms=int(time.time() * 1000)),
                    pair_mutation(a, b, successors=succ(((b + 1) % K, 1.0 + n % 5, 0.1)), support=1.0 + n % 6,
                                  half_life_ms=HALF_LIFE, ts_ms=T0 + 200 + n, ingest_ms=0),
                ])
                if n % 10 == 0:  # also delete things readers may be looking at
                    live.apply([item_mutation(f"w{n}", cluster=c, distance=0.2, novel=True, text="x", ts_ms=T0,
                                              ingest_ms=0, vector=item_vector(c, 1)),
                                pair_mutation(a, b, successors=[], support=0.0, half_life_ms=HALF_LIFE, ts_ms=T0,
                                              ingest_ms=0)._replace(value=None)])
                time.sleep(0.0005)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    versions = []
    deadline = time.monotonic() + 3.0
    queries = 0
    try:
        while time.monotonic() < deadline:
            for clusters in ([0, 1], [4, 5], [3, 2], [1]):
                ctx = client.context(clusters=clusters, k=5)
                versions.append(ctx["freshness"]["index_version"])
                assert not set(clusters) & {s["cluster"] for s in ctx["successors"]} or ctx["source"] == "exact"
            res = client.search(vector=item_vector(2, 5), k=5)
            versions.append(res["freshness"]["index_version"])
            assert len(res["items"]) == 5
            versions.append(client.cluster(int(queries % K))["freshness"]["index_version"])
            assert client.ready()
            queries += 1
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert queries > 5 and versions == sorted(versions) and versions[-1] > versions[0]


def test_context_while_pairs_come_and_go():
    """Readers take no lock: every read of the shared pair table must survive pairs being added and dropped
    between two of its steps (this found "dictionary changed size during iteration" in the global fallback)."""
    live = filled_index()
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(3)
        while not stop.is_set():
            a, b = (int(x) for x in rng.choice(K, 2, replace=False))
            m = pair_mutation(a, b, successors=succ(((b + 1) % K, 1.0 + rng.random(), 0.1)),
                              support=float(rng.integers(1, 6)), half_life_ms=HALF_LIFE, ts_ms=T0, ingest_ms=0)
            live.apply([m if rng.random() < 0.5 else m._replace(value=None)])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for c1, c2 in ((0, 1), (5, 4), (1, 3), (2, 0)):
                ctx = live.context(clusters=[c1, c2], k=5)
                assert ctx["source"] == "exact" or not {c1, c2} & {s["cluster"] for s in ctx["successors"]}
            live.context(history=["nobody-knows"])
            live.cluster(3)
            live.summary()
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(old)


def test_drift_ranking_and_cluster_drift_status(serve):
    from index.mutations import drift_mutation

    live = filled_index()
    client, _ = serve(live)
    assert client.drift()["clusters"] == []
    live.apply([drift_mutation(3, scores={"volume": 3.0}, alerts=[{"alert_id": "v", "severity": "warning"}],
                               reference={"policy": "rolling", "since_ms": 0}, ts_ms=1)])
    ranking = client.drift(limit=5)["clusters"]
    assert [(r["cluster"], r["kind"], r["score"]) for r in ranking] == [(3, "volume", 3.0)]
    assert client.cluster(3)["drift"]["scores"] == {"volume": 3.0}
    assert_error(raw(client, "GET", "/v1/drift?limit=0"), 400, "bad_request")
