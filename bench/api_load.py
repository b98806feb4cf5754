"""Query API load benchmark: the real service under many concurrent keep-alive clients. Prints one JSON object on
stdout; progress goes to stderr as ``[bench] ...`` lines.

    python bench/api_load.py                          # ~3 min on 2 CPU cores (60 s mixed, 30 s context, 30 s peer)
    python bench/api_load.py --duration 10 --context-duration 10

The service: ``driftrag run --events F --items F --keep-serving`` over a generated workload (``driftrag generate``,
``--events`` engagements), i.e. the stream job's in-process query API, the same ``index.http.create_app`` and
``serve_in_thread`` as ``driftrag serve``, with a read token configured (every request passes the bearer check)
and the default limits. It runs pinned to core ``--service-core``; this process (the load generator) pins itself
to ``--load-core``. The index does not change during the runs (the input is done): context answers after the
first of each request come from the per-version cache, as they do between two index versions in production.

- ``mixed``: ``--clients`` (200) clients for ``--duration`` s (60), each sending, one at a time on its own
  keep-alive connection, context (60%: a random cluster pair), drift (20%) and text search (20%: a random phrase,
  the embedding model) requests. ``requests_per_s`` counts answered requests (2xx); ``rejected_429`` counts the
  deliberate ``busy`` answers of text searches beyond ``index.max_text_searches`` (the client then waits the
  ``Retry-After``, as a client should); ``errors`` counts everything else (must be 0). ``p50_ms``/``p99_ms`` per
  endpoint over 2xx answers; ``rss_mb_before``/``rss_mb_after``: the service's resident memory around the run.
- ``context``: ``--context-clients`` (64) clients sending only context requests for ``--context-duration`` s:
  ``context_requests_per_s``, ``context_p99_ms`` (aim: >= 1,000/s and <= 100 ms on two cores).
- peer, in the same run on the same core with the same generator: a minimal uvicorn app (uvloop/httptools as the
  service uses) answering a fixed precomputed JSON body of the context answer's size: ``peer_requests_per_s``,
  ``peer_p99_ms`` and ``context_vs_peer_ratio``. The peer is also the floor of what the generator pushes from one
  core (``generator_floor_requests_per_s``): when the service is well below it, the generator is not the limit.

The generator is asyncio (uvloop where installed) over raw streams: one connection per client, requests
pre-encoded, responses read by Content-Length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PHRASES = ["trail running shoes for mud", "sourdough starter feeding", "espresso grinder settings",
           "budget travel in japan", "beginner knitting patterns", "bird watching binoculars", "home workout plan",
           "first time home buyer tips", "indie game recommendations", "electric bike commuting"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def pin(cores: set[int] | None) -> Any:
    """A preexec_fn pinning a child to ``cores`` (None: no pinning)."""
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def wait_http(url: str, headers: dict[str, str], proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def http(method: str, url: str, token: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ------------------------------------------------------------------------------------------------ the generator


def request_bytes(method: str, path: str, host: str, token: str | None, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"host: {host}", "connection: keep-alive"]
    if token:
        head.append(f"authorization: Bearer {token}")
    if method == "POST":
        head += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.ok = 0
        self.rejected_429 = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def client(host: str, port: int, choose: Any, deadline: float, stats: Stats, rng: random.Random) -> None:
    reader = writer = None
    try:
        while time.perf_counter() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            name, raw = choose(rng)
            t0 = time.perf_counter()
            try:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, close, retry = 0, False, 1.0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                    elif k == b"retry-after":
                        retry = float(v)
                if length:
                    await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                stats.error(type(e).__name__)
                writer.close()
                reader = writer = None
                continue
            dt = time.perf_counter() - t0
            if 200 <= status < 300:
                stats.ok += 1
                stats.latency.setdefault(name, []).append(dt)
            elif status == 429:
                stats.rejected_429 += 1
            else:
                stats.error(f"http_{status}")
            if close:
                writer.close()
                reader = writer = None
            if status == 429:
                await asyncio.sleep(min(retry, max(0.0, deadline - time.perf_counter())))
    finally:
        if writer is not None:
            writer.close()


async def progress(stats: Stats, t0: float, deadline: float, every: float = 10.0) -> None:
    """A stderr line every ``every`` s of a run: answers so far, the rate, refusals and errors."""
    while time.perf_counter() + every < deadline:
        await asyncio.sleep(every)
        elapsed = time.perf_counter() - t0
        log(f"  {elapsed:.0f} s: {stats.ok:,} answered ({stats.ok / elapsed:,.0f}/s), "
            f"{stats.rejected_429:,} x 429, {stats.errors} errors")


def run_load(host: str, port: int, clients: int, seconds: float, choose: Any, seed: int = 1) -> dict[str, Any]:
    """``clients`` concurrent keep-alive clients for ``seconds``; figures over the whole window."""

    async def main() -> tuple[Stats, float]:
        stats = Stats()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        tasks = [asyncio.create_task(client(host, port, choose, deadline, stats, random.Random(seed * 10_007 + i)))
                 for i in range(clients)]
        ticker = asyncio.create_task(progress(stats, t0, deadline))
        await asyncio.gather(*tasks)
        ticker.cancel()
        return stats, time.perf_counter() - t0

    try:
        import uvloop

        stats, elapsed = uvloop.run(main())
    except ImportError:
        stats, elapsed = asyncio.run(main())
    out: dict[str, Any] = {"clients": clients, "seconds": round(elapsed, 1),
                           "requests_per_s": round(stats.ok / elapsed, 1), "answered": stats.ok,
                           "rejected_429": stats.rejected_429, "errors": stats.errors}
    if stats.error_kinds:
        out["error_kinds"] = stats.error_kinds
    for name, lat in sorted(stats.latency.items()):
        a = np.asarray(lat) * 1000
        out[name] = {"requests": len(lat), "requests_per_s": round(len(lat) / elapsed, 1),
                     "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}
    return out


# ------------------------------------------------------------------------------------------------ the services

PEER = r'''
import sys, uvicorn
BODY = open(sys.argv[1], "rb").read()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), lifespan="off", access_log=False, log_level="warning")
'''


def start_service(work: Path, args: argparse.Namespace, token: str, port: int) -> tuple[subprocess.Popen, Any]:
    data = work / "data"
    log(f"generating {args.events:,} engagements (seed {args.seed})")
    subprocess.run([PY, "-m", "streams.cli", "generate", "--seed", str(args.seed), "--out", str(data), "--events",
                    str(args.events), "--bad-fraction", "0"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    env = {**os.environ, "DRIFTRAG_INDEX__TOKENS": f"bench:read:{token}", "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith("DRIFTRAG_INDEX__") and k != "DRIFTRAG_INDEX__TOKENS"]:
        env.pop(k)  # the defaults: the limits as shipped
    err = open(work / "service.err", "w")  # noqa: SIM115 - closed by the caller
    cmd = [PY, "-m", "streams.cli", "run", "--events", str(data / "engagements.jsonl"), "--items",
           str(data / "items.jsonl"), "--keep-serving", "--port", str(port), "--codebook-dir", str(work / "cb"),
           "--no-metrics"]
    log(f"starting the service on core {args.service_core}: driftrag run --events ... --keep-serving --port {port}")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=pin({args.service_core}))
    deadline = time.monotonic() + args.start_timeout
    while "still serving" not in (work / "service.err").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (work / "service.err").read_text()[-2000:]
            proc.kill()
            raise RuntimeError(f"the service did not finish its input and serve (status {proc.poll()}):\n{tail}")
        time.sleep(0.5)
    wait_http(f"http://127.0.0.1:{port}/readyz", {}, proc, 60, "the service")
    return proc, err


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the mixed run")
    p.add_argument("--clients", type=int, default=200, help="clients of the mixed run")
    p.add_argument("--context-duration", type=float, default=30.0, help="seconds of the context run and the peer")
    p.add_argument("--context-clients", type=int, default=64)
    p.add_argument("--events", type=int, default=20_000, help="engagements of the generated workload")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--service-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the service to take its input")
    p.add_argument("--skip", default="", help="comma-separated: mixed, context, peer")
    args = p.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cores = os.sched_getaffinity(0)
    if {args.service_core, args.load_core} - cores or args.service_core == args.load_core:
        sys.exit(f"--service-core and --load-core must be two different cores of {sorted(cores)}")
    token = secrets.token_urlsafe(24)
    work = Path(tempfile.mkdtemp(prefix="driftrag-api-load-"))
    port, peer_port = free_port(), free_port()
    result: dict[str, Any] = {"events": args.events, "cpu_cores": os.cpu_count(),
                              "pinning": {"service": [args.service_core], "load_generator": [args.load_core]}}
    proc, err = start_service(work, args, token, port)
    peer = None
    try:
        os.sched_setaffinity(0, {args.load_core})
        base = f"http://127.0.0.1:{port}"
        k = 0
        status, body = http("GET", f"{base}/v1/drift?limit=100", token)
        status, info = http("GET", f"{base}/readyz", token)
        ready = json.loads(info)
        result["index"] = {"items": ready.get("items"), "pairs": ready.get("pairs"), "version": ready.get("version")}
        # the codebook's clusters: from a context answer's labels is indirect; the cluster route 404s past the end
        while http("GET", f"{base}/v1/clusters/{k}", token)[0] == 200:
            k += 1
        if k < 2:
            raise RuntimeError(f"the service has {k} clusters: nothing to ask")
        log(f"service ready: {ready.get('items')} items, {ready.get('pairs')} pairs, {k} clusters; warming the model")
        t0 = time.perf_counter()
        status, body = http("POST", f"{base}/v1/search", token, {"text": PHRASES[0], "k": 5})
        if status != 200:
            raise RuntimeError(f"text search answered {status}: {body[:300]!r}")
        result["model_warmup_s"] = round(time.perf_counter() - t0, 1)
        status, sample = http("POST", f"{base}/v1/context", token, {"clusters": [0, 1]})
        result["context_body_bytes"] = len(sample)
        hostport = f"127.0.0.1:{port}"
        contexts = [request_bytes("POST", "/v1/context", hostport, token,
                                  json.dumps({"clusters": [a, b], "k": 3}).encode())
                    for a in range(k) for b in range(k) if a != b]
        drift = request_bytes("GET", "/v1/drift?limit=20", hostport, token)
        searches = [request_bytes("POST", "/v1/search", hostport, token, json.dumps({"text": t, "k": 10}).encode())
                    for t in PHRASES]

        def mixed(rng: random.Random) -> tuple[str, bytes]:
            r = rng.random()
            if r < 0.6:
                return "context", rng.choice(contexts)
            if r < 0.8:
                return "drift", drift
            return "search", rng.choice(searches)

        def context_only(rng: random.Random) -> tuple[str, bytes]:
            return "context", rng.choice(contexts)

        if "mixed" not in skip:
            result["rss_mb_before"] = rss_mb(proc.pid)
            log(f"mixed: {args.clients} clients for {args.duration:.0f} s (context 60%, drift 20%, text search 20%)")
            result["mixed"] = run_load("127.0.0.1", port, args.clients, args.duration, mixed)
            result["rss_mb_after"] = rss_mb(proc.pid)
            for key in ("requests_per_s", "rejected_429", "errors"):
                result[key] = result["mixed"][key]
            log(f"mixed: {json.dumps(result['mixed'])}")
        if "context" not in skip:
            log(f"context only: {args.context_clients} clients for {args.context_duration:.0f} s")
            ctx = run_load("127.0.0.1", port, args.context_clients, args.context_duration, context_only, seed=2)
            result["context_run"] = ctx
            result["context_requests_per_s"] = ctx["requests_per_s"]
            result["context_p99_ms"] = ctx.get("context", {}).get("p99_ms")
            log(f"context: {ctx['requests_per_s']} requests/s, p99 {result['context_p99_ms']} ms, "
                f"errors {ctx['errors']}")
        stop(proc)
        if "peer" not in skip:
            body_file = work / "peer_body.json"
            body_file.write_bytes(sample)
            peer = subprocess.Popen([PY, "-c", PEER, str(body_file), str(peer_port)], cwd=ROOT,
                                    preexec_fn=pin({args.service_core}))
            wait_http(f"http://127.0.0.1:{peer_port}/", {}, peer, 30, "the peer")
            peer_req = request_bytes("POST", "/v1/context", f"127.0.0.1:{peer_port}", token,
                                     json.dumps({"clusters": [0, 1], "k": 3}).encode())
            log(f"peer: a minimal uvicorn app with a fixed {len(sample)}-byte body, {args.context_clients} clients "
                f"for {args.context_duration:.0f} s")
            pr = run_load("127.0.0.1", peer_port, args.context_clients, args.context_duration,
                          lambda rng: ("context", peer_req), seed=3)
            result["peer_run"] = pr
            result["peer_requests_per_s"] = pr["requests_per_s"]
            result["peer_p99_ms"] = pr.get("context", {}).get("p99_ms")
            result["generator_floor_requests_per_s"] = pr["requests_per_s"]
            if "context_requests_per_s" in result and pr["requests_per_s"]:
                result["context_vs_peer_ratio"] = round(result["context_requests_per_s"] / pr["requests_per_s"], 3)
            log(f"peer: {pr['requests_per_s']} requests/s, p99 {result['peer_p99_ms']} ms")
    finally:
        stop(proc)
        if peer is not None:
            stop(peer)
        err.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
