"""The versioned codebook store (atomic save and swap) and the `driftrag clusters` command on top of it."""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import orjson
import pytest

import operators.embedding
from index.codebooks import CURRENT, CodebookStore
from operators.clusters import Codebook, codebook_version
from streams.cli import main


def make_codebook(k: int, created_at_ms: int, dim: int = 8, seed: int = 0) -> Codebook:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    keywords = [[f"word{i}", f"topic {i}"] for i in range(k)]
    return Codebook(c, keywords, "toy-model", codebook_version(created_at_ms, c, keywords, "toy-model"),
                    created_at_ms, 0.4, list(range(1, k + 1)))


def test_save_load_round_trip(tmp_path):
    store = CodebookStore(tmp_path / "cb")
    cb = make_codebook(5, 1_767_225_600_000)
    path = store.save(cb)
    assert path == tmp_path / "cb" / cb.version
    assert sorted(p.name for p in path.iterdir()) == ["centroids.npy", "codebook.json"]
    back = store.load()
    assert back == cb and store.load(cb.version) == cb
    assert back.centroids.dtype == np.float32
    meta = json.loads((path / "codebook.json").read_text())
    assert meta["k"] == 5 and meta["dim"] == 8 and meta["keywords"][1] == ["word1", "topic 1"]
    assert store.load_metadata() == meta
    assert [p.name for p in (tmp_path / "cb").iterdir() if p.name.startswith(".tmp")] == []


def test_current_switches_versions_sort_and_activate_rolls_back(tmp_path):
    store = CodebookStore(tmp_path)
    assert store.current_version() is None and store.versions() == []
    new, old = make_codebook(3, 2_000_000_000_000), make_codebook(4, 1_900_000_000_000)
    store.save(new)
    store.save(old)  # saved later, built earlier: CURRENT follows the save, versions() sort by build time
    assert store.current_version() == old.version
    assert store.versions() == [old.version, new.version]
    store.activate(new.version)
    assert store.load() == new
    store.save(old, activate=False)  # already there: nothing written, nothing switched
    assert store.current_version() == new.version
    assert (tmp_path / CURRENT).read_text() == new.version + "\n"


def test_missing_codebook_errors_name_the_fix(tmp_path):
    store = CodebookStore(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="driftrag clusters build"):
        store.load()
    store.save(make_codebook(2, 1))
    with pytest.raises(FileNotFoundError, match="no codebook version"):
        store.load("v0000000000002-nothere")
    with pytest.raises(FileNotFoundError, match="no codebook version"):
        store.activate("v0000000000002-nothere")
    for bad in ("../etc", "CURRENT", "v1/../../x", ""):
        with pytest.raises(ValueError, match="not a codebook version"):
            store.load(bad)


def test_a_corrupt_artifact_is_a_clear_error(tmp_path):
    store = CodebookStore(tmp_path)
    cb = make_codebook(3, 1)
    path = store.save(cb)
    np.save(path / "centroids.npy", np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="centroids.npy has shape"):
        store.load()
    (path / "codebook.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="unknown codebook format"):
        store.load()


def test_a_reader_during_swaps_sees_only_complete_codebooks(tmp_path):
    store = CodebookStore(tmp_path)
    first = make_codebook(2, 1_000)
    store.save(first)
    # k differs per version and sizes/keywords follow k: a mixed read (one version's centroids with another's
    # metadata) fails the shape check or the k comparisons below.
    saved = {first.version: first}
    errors: list[BaseException] = []
    loads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal loads
        while not done.is_set():
            try:
                cb = store.load()
                want = saved[cb.version]
                assert cb == want and len(cb.keywords) == len(cb.sizes) == cb.k
                loads += 1
            except BaseException as e:  # noqa: BLE001 - collect, fail in the main thread
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        cb = make_codebook(2 + i % 7, 2_000 + i, seed=i)
        saved[cb.version] = cb  # registered before it can become current
        store.save(cb)
    done.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert loads > 0
    assert len(store.versions()) == 21 and store.load() == cb


# ------------------------------------------------------------------------------------------------ CLI


class WordHashEmbedder:
    """Deterministic bag-of-words vectors: texts sharing topic words are near each other. No model needed."""

    name = "fake/cpu"
    model = "fake"
    dim = 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


TOPIC_WORDS = [["sourdough", "skillet", "braising", "risotto"], ["penalty", "offside", "goalkeeper", "striker"],
               ["telescope", "nebula", "meteor", "comet"]]


@pytest.fixture
def items_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for n in range(60):
        words = TOPIC_WORDS[n % 3]
        text = "Quick guide: " + ", ".join(rng.permutation(words)[:3])
        lines.append(orjson.dumps({"item_id": f"it{n}", "text": text, "ts": 1_767_225_600_000 + n}))
    lines += [b"not json", b'{"item_id": "x", "ts": 1}', b'{"item_id": "y", "text": 5, "ts": 1}', b""]
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def fake_embedder(monkeypatch):
    calls = []

    def make(backend="auto", model=None, **kw):
        calls.append((backend, model))
        return WordHashEmbedder()

    monkeypatch.setattr(operators.embedding, "make_embedder", make)
    return calls


def test_cli_build_list_show(tmp_path, items_file, fake_embedder, capsys):
    out = tmp_path / "store"
    assert main(["clusters", "build", "--items", str(items_file), "--out", str(out), "--k", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert fake_embedder == [("auto", "default")]
    assert summary["k"] == 3 and summary["items"] == 60 and summary["sampled"] == 60
    assert summary["invalid_lines"] == {"empty_message": 1, "invalid_json": 1, "missing_field": 1, "wrong_type": 1}
    assert summary["model"] == "sentence-transformers/all-MiniLM-L6-v2" and summary["embedder"] == "fake/cpu"
    assert sorted(summary["sizes"]) == [20, 20, 20] and summary["current"]
    assert sorted(kw[0] for kw in summary["keywords"]) != []
    for kw in summary["keywords"]:  # each cluster's keywords come from one topic
        assert sum(any(w in topic for w in kw) for topic in TOPIC_WORDS) == 1
    assert main(["clusters", "build", "--items", str(items_file), "--dir", str(out), "--k", "2", "--sample", "30",
                 "--no-activate"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["sampled"] == 30 and not second["current"]
    assert main(["clusters", "list", "--dir", str(out)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(listed) == sorted([f"* {summary['version']}", f"  {second['version']}"])
    assert main(["clusters", "show", "--dir", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == summary["version"]
    assert main(["clusters", "show", "--dir", str(out), "--version", second["version"]]) == 0
    assert json.loads(capsys.readouterr().out)["k"] == 2


def test_cli_errors_are_one_line(tmp_path, items_file, fake_embedder, capsys):
    assert main(["clusters", "show", "--dir", str(tmp_path / "empty")]) == 2
    assert "driftrag clusters build" in capsys.readouterr().err
    assert main(["clusters", "build", "--items", str(tmp_path / "nope.jsonl"), "--dir", str(tmp_path)]) == 2
    assert "items file not found" in capsys.readouterr().err
    assert main(["clusters", "build", "--items", str(items_file), "--dir", str(tmp_path), "--k", "61"]) == 2
    assert "need at least k=61" in capsys.readouterr().err
    assert main(["clusters", "list", "--dir", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == ""
