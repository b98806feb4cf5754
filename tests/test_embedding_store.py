"""The on-disk embedding store behind the content stage's cache: a restarted job does not embed known texts again.
SQLite store alone, the cache in front of it, then real `driftrag run` / `driftrag replay` runs with the real model."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pytest

from index.embedding_store import EmbeddingStore, store_path
from operators.embedding import OnnxEmbedder
from operators.embedding_cache import EmbeddingCache, content_key
from streams.cli import main
from streams.generator import GeneratorConfig, write_files


def vec(x: float, d: int = 4) -> np.ndarray:
    return np.full(d, x, np.float32)


# ------------------------------------------------------------------------------------------------ the store


def test_round_trip_bound_and_reopen(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    store = EmbeddingStore(path, dim=4, max_entries=3)
    store.put_many([(b"k%d" % i, vec(i)) for i in range(3)])
    store.put_many([(b"k0", vec(99))])  # a key already there keeps its first vector (same text, same vector)
    assert len(store) == 3 and store.get_many([b"k0"])[b"k0"][0] == 0
    store.put_many([(b"k3", vec(3)), (b"k4", vec(4))])  # two over the bound: the two oldest go
    assert sorted(store.get_many([b"k0", b"k1", b"k2", b"k3", b"k4"])) == [b"k2", b"k3", b"k4"]
    store.close()
    again = EmbeddingStore(path, dim=4, max_entries=3)
    got = again.get_many([b"k2", b"k4", b"nope"])
    assert len(again) == 3 and set(got) == {b"k2", b"k4"}
    np.testing.assert_array_equal(got[b"k4"], vec(4))
    assert got[b"k4"].flags.writeable  # a copy, not a view of SQLite's buffer


def test_two_processes_can_share_one_file(tmp_path: Path):
    """Worker processes each open their own connection to the same file (WAL): writes of one are read by the
    other, and the bound holds over both."""
    path = tmp_path / "s.sqlite"
    a, b = EmbeddingStore(path, dim=4, max_entries=5), EmbeddingStore(path, dim=4, max_entries=5)
    a.put_many([(b"a%d" % i, vec(i)) for i in range(3)])
    assert set(b.get_many([b"a0", b"a1", b"a2"])) == {b"a0", b"a1", b"a2"}
    b.put_many([(b"b%d" % i, vec(i)) for i in range(4)])  # b thinks 4 rows; there are 7: it counts, then trims
    n = sqlite3.connect(path).execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    assert n == 5 and len(b) == 5


def test_bad_rows_and_bad_files_are_never_returned(tmp_path: Path, caplog):
    path = tmp_path / "s.sqlite"
    store = EmbeddingStore(path, dim=4)
    with pytest.raises(ValueError, match="4 float32 values"):
        store.put_many([(b"x", vec(1, d=3))])
    assert len(store) == 0  # nothing half-written
    store._db.execute("INSERT INTO emb VALUES (?, ?)", (b"short", b"\x00" * 8))  # damaged row
    assert store.get_many([b"short"]) == {}  # ignored: the text is embedded again
    store.close()
    # a file that is not a database, and one of another dimension, are moved aside with a warning
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    other = tmp_path / "other.sqlite"
    EmbeddingStore(other, dim=8).close()
    with caplog.at_level(logging.WARNING, logger="index.embedding_store"):
        for p in (junk, other):
            s = EmbeddingStore(p, dim=4)
            s.put_many([(b"k", vec(1))])
            assert len(s) == 1
            s.close()
    assert sum("moved to" in r.getMessage() for r in caplog.records) == 2
    assert len(list(tmp_path.glob("*.unreadable-*"))) == 2


def test_one_file_per_model_backend_and_weights(tmp_path: Path):
    base = {"model": "m", "backend": "onnx-int8/cpu", "dim": 384, "fingerprint": "f1"}
    p = store_path(tmp_path, **base)
    assert p.name.startswith("m--onnx-int8_cpu--384-") and p.suffix == ".sqlite"
    for change in ({"model": "m2"}, {"backend": "torch/cuda-fp16"}, {"dim": 768}, {"fingerprint": "f2"}):
        assert store_path(tmp_path, **{**base, **change}) != p, change


def test_invalid_arguments_are_clear(tmp_path: Path):
    with pytest.raises(ValueError, match="dim must be >= 1"):
        EmbeddingStore(tmp_path / "a.sqlite", dim=0)
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        EmbeddingStore(tmp_path / "a.sqlite", dim=4, max_entries=0)


# ---------------------------------------------------------------------------------- the cache in front of it


def test_cache_reads_memory_then_the_store_once_and_writes_through(tmp_path: Path):
    store = EmbeddingStore(tmp_path / "s.sqlite", dim=4)
    store.put_many([(content_key("on disk"), vec(2))])
    calls = []
    real_get = store.get_many
    store.get_many = lambda keys: calls.append(list(keys)) or real_get(keys)  # count the lookups
    cache = EmbeddingCache(10, store=store)
    cache.put("in memory", vec(1))
    got = cache.get_many(["in memory", "on disk", "new", "new"])
    assert [None if v is None else float(v[0]) for v in got] == [1.0, 2.0, None, None]
    assert (cache.hits, cache.store_hits, cache.misses) == (1, 1, 2)
    assert calls == [[content_key("on disk"), content_key("new")]]  # one lookup, duplicates asked once
    assert cache.get_many(["on disk"])[0] is not None and len(calls) == 1  # now in memory
    cache.put_many([("new", vec(3))])
    fresh = EmbeddingCache(10, store=store)  # a restarted process: empty memory, same store
    assert float(fresh.get_many(["new"])[0][0]) == 3.0 and fresh.store_hits == 1
    assert round(cache.hit_rate, 2) == 0.6  # (2 memory + 1 store) of 5 lookups


# ------------------------------------------------------------------------------------- real runs, real model


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_files(GeneratorConfig(seed=5, events=6_000), data)
    return data


def _run(cmd: str, data: Path, out: Path, codebooks: Path, capsys) -> dict:
    assert main([cmd, "--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"),
                 "--codebook-dir", str(codebooks), "--out", str(out), *(["--no-api"] if cmd == "run" else [])]) == 0
    capsys.readouterr()
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_a_restarted_run_takes_its_vectors_from_the_store(workload, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTRAG_EMBEDDING__STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("DRIFTRAG_EMBEDDING__BACKEND", "onnx-int8")  # the class observed below, on any host
    cb = tmp_path / "cb"
    encoded: list[int] = []  # texts that reached the model (an observer around the real encode)
    real_encode = OnnxEmbedder.encode
    monkeypatch.setattr(OnnxEmbedder, "encode", lambda self, texts: encoded.append(len(texts)) or
                        real_encode(self, texts))
    first = _run("run", workload, tmp_path / "1", cb, capsys)["embedding_lookups"]
    (store_file,) = (tmp_path / "store").glob("*.sqlite")
    stored = sqlite3.connect(store_file).execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    assert stored == sum(encoded) > 0  # everything the model embedded went to disk, once
    texts = {orjson.loads(x)["text"] for x in (workload / "items.jsonl").read_bytes().splitlines()
             if x.startswith(b"{") and isinstance(orjson.loads(x).get("text"), str)}
    assert stored >= len(texts)  # the catalogue (the codebook's bootstrap sample is the catalogue here)
    assert first["miss"] + first["store"] > 0
    encoded.clear()
    second = _run("run", workload, tmp_path / "2", cb, capsys)["embedding_lookups"]
    assert encoded == [] and second["miss"] == 0 and second["store"] > 0  # a restart: the model never ran
    assert sqlite3.connect(store_file).execute("SELECT COUNT(*) FROM emb").fetchone()[0] == stored
    assert second["hit"] + second["store"] == first["hit"] + first["store"] + first["miss"]
    for name in ("clusters.json", "successors.json"):  # vectors from disk = the model's: same clusters
        a, b = (json.loads((tmp_path / run / name).read_text()) for run in ("1", "2"))
        if name == "clusters.json":  # the file mode's bootstrapped codebook is named by its build time
            assert a.pop("codebook") != b.pop("codebook")
        assert a == b, name


@pytest.mark.slow
def test_a_replay_with_a_warm_store_gives_the_same_results(workload, tmp_path, monkeypatch, capsys):
    cb = tmp_path / "cb"
    plain = _run("replay", workload, tmp_path / "plain", cb, capsys)
    monkeypatch.setenv("DRIFTRAG_EMBEDDING__STORE_DIR", str(tmp_path / "store"))
    cold = _run("replay", workload, tmp_path / "cold", cb, capsys)["warm_cache"]
    warm = _run("replay", workload, tmp_path / "warm", cb, capsys)["warm_cache"]
    assert cold["embedded"] == cold["texts"] > 0 and cold["from_store"] == 0
    assert warm == {"texts": cold["texts"], "from_store": cold["texts"], "embedded": 0}
    assert plain["warm_cache"]["embedded"] == cold["texts"]
    for name in ("alerts.jsonl", "successors.json", "cadence.jsonl", "items.jsonl"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
