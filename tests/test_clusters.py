"""Interest clusters, pure logic: c-TF-IDF keywords, k-means, the codebook value and its argument checks."""

from __future__ import annotations

import doctest
import pickle

import numpy as np
import pytest

import operators.clusters as clusters
from operators.clusters import (
    Codebook,
    _pick_keywords,
    _terms,
    build_codebook,
    codebook_version,
    ctfidf_keywords,
    ctfidf_scores,
    kmeans_centroids,
)

# Three topics written with the same template filler, as the generator does: only the topic words tell them apart.
CORPUS = [
    ["Quick guide: sourdough starter, cast iron skillet and braising.",
     "Top picks this week: cast iron skillet, sourdough starter, risotto",
     "Beginner's notes on braising and risotto, with a cast iron skillet"],
    ["Quick guide: penalty kick, offside rule and goalkeeper.",
     "Top picks this week: goalkeeper, penalty kick, hat trick",
     "Beginner's notes on the offside rule and a hat trick"],
    ["Quick guide: telescope, nebula and meteor shower.",
     "Top picks this week: meteor shower, telescope, star chart",
     "Beginner's notes on nebula photography and the star chart"],
]
FILLER = {"quick", "guide", "top", "picks", "week", "beginner", "notes", "quick guide", "top picks",
          "beginner notes"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(seed: int = 0, n: int = 300, k: int = 4, d: int = 16, noise: float = 0.15):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    return unit(np.eye(k, d)[truth] + noise * rng.standard_normal((n, d))), truth


def toy_codebook(**kw) -> Codebook:
    args = dict(centroids=np.eye(3, 4, dtype=np.float32), keywords=[["tea", "kettle"], ["chess"], []], model="toy",
                version="v0000000000001-toy", created_at_ms=1, novelty_threshold=0.5, sizes=[5, 6, 7])
    args.update(kw)
    return Codebook(**args)


# ------------------------------------------------------------------------------------------------ c-TF-IDF


def test_ctfidf_picks_the_distinctive_words_not_the_template():
    kw = ctfidf_keywords(CORPUS, top_n=4)
    assert set(kw[0]) == {"cast iron", "skillet", "sourdough starter", "braising"}
    assert set(kw[1]) == {"penalty kick", "offside rule", "hat trick", "goalkeeper"}
    assert set(kw[2]) == {"meteor shower", "star chart", "telescope", "nebula"}
    assert not FILLER & {w for k in kw for w in k}


def test_ctfidf_exact_ranking_is_pinned():
    # 3x terms before 2x ones; on ties phrases first, then alphabetical. "iron skillet" overlaps "cast iron", so
    # "skillet" stands alone; the template's "beginner notes" is in every cluster and comes after every topic word.
    assert ctfidf_keywords(CORPUS, top_n=5) == [
        ["cast iron", "skillet", "sourdough starter", "braising", "risotto"],
        ["hat trick", "offside rule", "penalty kick", "goalkeeper", "beginner notes"],
        ["meteor shower", "star chart", "nebula", "telescope", "photography"],
    ]
    assert ctfidf_keywords(CORPUS, top_n=1, ngram_range=(1, 3))[0] == ["cast iron skillet"]


def test_ctfidf_scores_follow_the_bertopic_formula():
    x = np.array([[3, 1, 0], [0, 1, 4]])
    got = ctfidf_scores(x).toarray()
    avg = x.sum(axis=1).mean()
    want = (x / x.sum(axis=1, keepdims=True)) * np.log1p(avg / x.sum(axis=0))
    np.testing.assert_allclose(got, want)


def test_filler_in_every_cluster_ranks_below_topic_words():
    kw = ctfidf_keywords(CORPUS, top_n=50)
    for words in kw:
        first_filler = min(i for i, w in enumerate(words) if w in FILLER)
        assert first_filler >= 4 and all(w in FILLER for w in words[first_filler:])  # topic words all come first


def test_empty_and_stop_word_only_clusters_get_no_keywords():
    assert ctfidf_keywords([["the and of"], []]) == [[], []]
    assert ctfidf_keywords([["sourdough bread"], []]) == [["sourdough bread"], []]
    assert ctfidf_keywords([]) == []


def test_terms_do_not_span_punctuation_or_stop_words():
    terms = _terms("Braising, weeknight dinners; notes on the telescope", stop_words=frozenset({"on", "the"}),
                   ngram_range=(1, 2))
    assert "braising weeknight" not in terms and "notes telescope" not in terms
    assert "weeknight dinners" in terms


def test_pick_keywords_cases():
    # a phrase with most of its words' score replaces them, in the first one's place
    assert _pick_keywords([("cast", 3.0), ("iron", 2.9), ("cast iron", 2.9), ("stew", 2.0)], 3) == \
        ["cast iron", "stew"]
    # a phrase accounting for few of a word's uses is skipped; a word inside a picked phrase too
    assert _pick_keywords([("sourdough", 4.0), ("fresh sourdough", 1.0), ("bread", 0.9)], 3) == \
        ["sourdough", "bread"]
    assert _pick_keywords([("hat trick", 2.0), ("trick", 1.9), ("hat", 1.9), ("goal", 1.0)], 2) == \
        ["hat trick", "goal"]
    # overlapping phrases: the first wins
    assert _pick_keywords([("notes guitar", 2.0), ("guitar chords", 2.0), ("jam", 1.0)], 5) == \
        ["notes guitar", "jam"]


@pytest.mark.parametrize("kw", [{"top_n": 0}, {"top_n": True}, {"top_n": 2.5}])
def test_ctfidf_argument_checks(kw):
    with pytest.raises(ValueError, match="top_n"):
        ctfidf_keywords(CORPUS, **kw)


def test_ctfidf_rejects_a_flat_list_of_texts():
    with pytest.raises(ValueError, match="one per cluster"):
        ctfidf_keywords(["sourdough", "penalty kick"])


# ------------------------------------------------------------------------------------------------ k-means


def test_kmeans_recovers_blobs_and_is_seeded():
    x, truth = blobs()
    c = kmeans_centroids(x, 4, seed=3)
    assert c.shape == (4, 16) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assigned = np.argmax(x @ c.T, axis=1)
    # one-to-one: each true blob maps to one centroid
    assert {(int(t), int(a)) for t, a in zip(truth, assigned, strict=True)}.__len__() == 4
    np.testing.assert_array_equal(c, kmeans_centroids(x, 4, seed=3))


@pytest.mark.parametrize(("kw", "match"), [
    ({"k": 0}, "k must"), ({"k": 301}, "at least k=301"), ({"k": True}, "k must"), ({"niter": 0}, "niter"),
    ({"nredo": 0}, "nredo"), ({"seed": -1}, "seed"), ({"k": 2.0}, "k must"),
])
def test_kmeans_argument_checks(kw, match):
    x, _ = blobs()
    args = {"k": 4, **kw}
    with pytest.raises(ValueError, match=match):
        kmeans_centroids(x, args.pop("k"), **args)


@pytest.mark.parametrize("bad", [np.ones((5, 4)), np.zeros((0, 4)), np.ones(4), np.full((3, 2), np.nan)])
def test_kmeans_needs_unit_rows(bad):
    with pytest.raises(ValueError, match="vectors must"):
        kmeans_centroids(bad, 2)


@pytest.mark.skipif(clusters._faiss().get_num_gpus() > 0, reason="a GPU is present")
def test_gpu_true_without_a_gpu_is_an_error_not_a_fallback():
    x, _ = blobs()
    with pytest.raises(ValueError, match="no GPU"):
        kmeans_centroids(x, 4, gpu=True)


# ------------------------------------------------------------------------------------------------ codebook


def test_assign_returns_nearest_centroid_and_cosine_distance():
    cb = toy_codebook()
    v = unit(np.array([[1, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [-1, 0, 0, 0]], dtype=np.float32))
    ids, dist = cb.assign(v)
    assert ids.dtype == np.int64 and dist.dtype == np.float32
    assert ids.tolist()[:2] == [0, 2]
    np.testing.assert_allclose(dist, [1 - 1 / np.sqrt(1.01), 0, 1, 1], atol=1e-6)
    assert [cb.is_novel(d) for d in dist] == [False, False, True, True]


def test_assign_edge_cases():
    cb = toy_codebook()
    ids, dist = cb.assign(np.zeros((0, 4), np.float32))
    assert ids.shape == dist.shape == (0,)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        cb.assign(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        cb.assign(np.ones(4, np.float32))


def test_label_and_properties():
    cb = toy_codebook()
    assert (cb.k, cb.dim) == (3, 4)
    assert cb.label(0) == "tea, kettle" and cb.label(2) == "cluster 2" and cb.label(0, n=1) == "tea"
    with pytest.raises(ValueError, match="out of range"):
        cb.label(3)


def test_codebook_is_immutable_and_pickles_small():
    cb = toy_codebook()
    cb.assign(np.eye(1, 4, dtype=np.float32))
    with pytest.raises(ValueError):
        cb.centroids[0, 0] = 2.0
    with pytest.raises(AttributeError):
        cb.version = "v2"  # type: ignore[misc]
    assert isinstance(cb.keywords, tuple) and isinstance(cb.keywords[0], tuple)
    blob = pickle.dumps(cb)
    assert len(blob) < 2000  # the centroids and metadata, nothing built for search
    back = pickle.loads(blob)
    assert back == cb and hash(back) == hash(cb)
    assert not back.centroids.flags.writeable
    assert back.assign(np.eye(1, 4, dtype=np.float32))[0].tolist() == [0]


def test_codebook_equality_is_by_value():
    assert toy_codebook() == toy_codebook()
    assert toy_codebook() != toy_codebook(sizes=[5, 6, 8])
    assert toy_codebook() != toy_codebook(centroids=np.eye(3, 4, k=1, dtype=np.float32))


@pytest.mark.parametrize(("kw", "match"), [
    ({"keywords": [["a"]]}, "one keyword list"), ({"sizes": [1, 2]}, "one size"), ({"sizes": [1, 2, -1]}, "sizes"),
    ({"novelty_threshold": 2.5}, "novelty_threshold"), ({"novelty_threshold": -0.1}, "novelty_threshold"),
    ({"model": ""}, "non-empty"), ({"version": ""}, "non-empty"), ({"created_at_ms": -1}, "created_at_ms"),
    ({"centroids": np.ones((3, 4), np.float32)}, "centroids must"), ({"centroids": np.ones(4)}, "centroids must"),
])
def test_codebook_argument_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        toy_codebook(**kw)


def test_build_codebook_on_seeded_blobs():
    x, truth = blobs(seed=1)
    words = ["sourdough bread", "penalty kick", "telescope nebula", "guitar chords"]
    texts = [f"Quick guide to {words[t]}" for t in truth]
    cb = build_codebook(x, texts, 4, model="toy", seed=0, created_at_ms=1_767_225_600_000)
    ids, dist = cb.assign(x)
    for t in range(4):  # each blob is one cluster, labelled by its own words
        (c,) = set(ids[truth == t].tolist())
        assert cb.keywords[c][0] == words[t]
    assert sorted(cb.sizes) == sorted(np.bincount(truth).tolist())
    assert cb.novelty_threshold == pytest.approx(float(np.quantile(dist, 0.99)))
    assert sum(cb.is_novel(d) for d in dist) <= 3  # 1% of 300
    assert cb.version == codebook_version(1_767_225_600_000, cb.centroids, cb.keywords, "toy")
    assert cb.version.startswith("v1767225600000-") and len(cb.version) == 23
    assert build_codebook(x, texts, 4, model="toy", seed=0, created_at_ms=1_767_225_600_000) == cb


def test_build_codebook_argument_checks():
    x, _ = blobs()
    with pytest.raises(ValueError, match="texts"):
        build_codebook(x, ["a"], 4, model="toy")
    with pytest.raises(ValueError, match="novelty_quantile"):
        build_codebook(x, ["a"] * len(x), 4, model="toy", novelty_quantile=0)


def test_version_names_content_and_sorts_by_time():
    c = np.eye(2, 3, dtype=np.float32)
    a = codebook_version(5, c, [["x"], ["y"]], "m")
    assert a != codebook_version(5, c, [["x"], ["z"]], "m") and a != codebook_version(5, c, [["x"], ["y"]], "n")
    assert sorted([codebook_version(10**12, c, [], "m"), codebook_version(9 * 10**11, c, [], "m")])[0].startswith(
        "v0900000000000")


def test_module_doctests_run():
    result = doctest.testmod(clusters)
    assert result.attempted >= 5 and result.failed == 0
