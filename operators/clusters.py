"""Interest clusters: a k-means codebook over item embeddings, labelled by class-based TF-IDF keywords.

Offline (``driftrag clusters build``) a sample of item vectors is clustered with FAISS spherical k-means and each
cluster is described by its most distinctive words (c-TF-IDF over its members' texts). Online, every embedded
item is assigned to its nearest centroid; the cosine distance is kept, and items farther than the codebook's
novelty threshold from every centroid count as novel content.

>>> rng = np.random.default_rng(0)
>>> topics = ["sourdough bread", "penalty kick", "telescope nebula", "guitar chords"]
>>> truth = rng.integers(0, 4, 200)
>>> x = np.eye(4, 8, dtype=np.float32)[truth] + 0.1 * rng.standard_normal((200, 8), dtype=np.float32)
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> texts = [f"Weekend notes on {topics[c]}" for c in truth]
>>> cb = build_codebook(x, texts, 4, model="toy", created_at_ms=0)
>>> cluster, distance = cb.assign(x[:2])
>>> [cb.label(c) for c in cluster], truth[:2].tolist(), bool(distance.max() < cb.novelty_threshold)
(['guitar chords, weekend notes', 'telescope nebula, weekend notes'], [3, 2], True)
>>> cb.is_novel(1.0), sorted(cb.sizes) == sorted(np.bincount(truth).tolist())
(True, True)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

__all__ = ["Codebook", "build_codebook", "codebook_version", "ctfidf_keywords", "ctfidf_scores", "kmeans_centroids"]

log = logging.getLogger(__name__)

_NORM_TOL = 1e-3  # float32 rows from any embedder are unit length to ~1e-6; more means "not normalised"
_FAISS_MIN_POINTS = 39  # FAISS warns below this many points per centroid
_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern
_SEGMENT = re.compile(r"[^\w\s'-]+")  # punctuation ends a phrase
_PHRASE_SHARE = 0.8  # a phrase replaces its words when it scores this share of them (see _pick_keywords)


# ------------------------------------------------------------------------------------------------ k-means


def _faiss() -> Any:
    """FAISS, imported where clustering runs: what imports this module without clustering (the codebook store,
    the query service, the GPU check on a machine without faiss) does not need it."""
    import faiss

    return faiss


def _check_unit_rows(vectors: Any, name: str = "vectors") -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d array (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if not np.all(np.isfinite(norms)) or np.abs(norms - 1).max() > _NORM_TOL:
        raise ValueError(f"{name} must be finite, L2-normalised rows (cosine = inner product)")
    return x


def _use_gpu(gpu: bool | None) -> bool:
    """None: the GPU when FAISS sees one. True without one is an error, not a silent CPU fallback."""
    n = _faiss().get_num_gpus()
    if gpu is None:
        return n > 0
    if gpu and n == 0:
        raise ValueError("gpu=True but FAISS sees no GPU (faiss-cpu installed? see README 'GPU hosts')")
    return bool(gpu)


def _kmeanspp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeds (as scikit-learn): each step samples 2 + log(k) candidates by D^2 and keeps
    the one that lowers the potential most. FAISS's default (k random points) regularly merges two true
    clusters and splits a third on the generator's items; this init rarely does."""
    n = len(x)
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    d2 = np.maximum(1.0 - x @ x[chosen[0]], 0.0) ** 2
    for _ in range(k - 1):
        total = float(d2.sum())
        # total == 0: fewer distinct points than k; any point will do, FAISS splits the empty clusters.
        cand = rng.integers(n, size=1) if total <= 0 else rng.choice(n, size=trials, p=d2 / total)
        trial_d2 = np.minimum(d2[None, :], np.maximum(1.0 - x[cand] @ x.T, 0.0) ** 2)
        best = int(np.argmin(trial_d2.sum(axis=1)))
        chosen.append(int(cand[best]))
        d2 = trial_d2[best]
    return x[chosen].copy()


def _objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of each point's cosine to its nearest centroid: what spherical k-means maximises."""
    index = _faiss().IndexFlatIP(x.shape[1])
    index.add(centroids)
    sims, _ = index.search(x, 1)
    return float(sims.sum())


def kmeans_centroids(vectors: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, nredo: int = 20,
                     gpu: bool | None = None) -> np.ndarray:
    """Unit-length centroids (k, d) of spherical k-means (FAISS) over L2-normalised ``vectors``.

    Each of ``nredo`` runs starts from greedy k-means++ seeds; the run with the best objective wins. All points
    are used (no FAISS sub-sampling): the caller already chose the sample.

    >>> rng = np.random.default_rng(1)
    >>> x = np.repeat(np.eye(3, 5, dtype=np.float32), 20, axis=0) + 0.05 * rng.standard_normal((60, 5))
    >>> x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    >>> c = kmeans_centroids(x, 3, seed=0)
    >>> c.shape, np.sort(np.argmax(c, axis=1)).tolist(), bool(np.allclose(np.linalg.norm(c, axis=1), 1))
    ((3, 5), [0, 1, 2], True)
    """
    for name, v, low in (("k", k, 1), ("niter", niter, 1), ("nredo", nredo, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    x = _check_unit_rows(vectors)
    n, d = x.shape
    if n < k:
        raise ValueError(f"need at least k={k} vectors, got {n}")
    if n < _FAISS_MIN_POINTS * k:
        log.warning("k-means on %d vectors for k=%d: fewer than %d per cluster, centroids may be noisy",
                    n, k, _FAISS_MIN_POINTS)
    on_gpu = _use_gpu(gpu)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for redo in range(nredo):
        km = _faiss().Kmeans(d, k, niter=niter, seed=seed * 1009 + redo, spherical=True, gpu=on_gpu,
                          max_points_per_centroid=max(256, -(-n // k)), min_points_per_centroid=1)
        km.train(x, init_centroids=_kmeanspp_init(x, k, rng))
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        obj = _objective(x, centroids)
        log.debug("k-means redo %d/%d: objective %.4f", redo + 1, nredo, obj)
        if best is None or obj > best[0]:
            best = (obj, centroids)
    assert best is not None
    centroids = best[1]
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------ c-TF-IDF


def ctfidf_scores(counts: sparse.spmatrix | np.ndarray) -> sparse.csr_matrix:
    """BERTopic's class-based TF-IDF of a (classes x terms) count matrix.

    tf = count of the term in the class / words in the class; idf = log(1 + A / f), with A the average number
    of words per class and f the term's count over all classes. A word spread evenly over every class (template
    filler) gets a low idf; a word concentrated in one class a high tf there.

    >>> ctfidf_scores(np.array([[2, 2], [0, 2]])).toarray().round(3).tolist()
    [[0.458, 0.28], [0.0, 0.56]]
    """
    x = sparse.csr_matrix(counts, dtype=np.float64)
    per_class = np.asarray(x.sum(axis=1)).ravel()
    per_term = np.asarray(x.sum(axis=0)).ravel()
    avg_words = float(per_class.mean()) if len(per_class) else 0.0
    idf = np.log1p(avg_words / np.maximum(per_term, 1e-12))
    tf = sparse.diags(1.0 / np.maximum(per_class, 1e-12)) @ x
    return sparse.csr_matrix(tf @ sparse.diags(idf))


def _pick_keywords(ranked: Iterable[tuple[str, float]], top_n: int) -> list[str]:
    """The first ``top_n`` of (term, score) pairs in rank order, without showing a word twice. Cases:

    - a term sharing no word with the picked ones is picked;
    - a phrase whose shared words were picked as single words, and that scores at least _PHRASE_SHARE of each
      of them, is how those words are used: it takes the first one's place and the others go
      ("cast", "iron", "cast iron" -> "cast iron");
    - any other term sharing a word is skipped (a single word already inside a phrase, or a phrase that
      overlaps a picked phrase or accounts for few of a word's uses).

    >>> _pick_keywords([("cast", 3.0), ("iron", 2.9), ("cast iron", 2.9), ("stew", 2.0), ("iron stew", 0.5)], 2)
    ['cast iron', 'stew']
    """
    picked: list[tuple[str, float]] = []
    for term, score in ranked:
        full = len(picked) >= top_n
        if full and score < _PHRASE_SHARE * min(s for _, s in picked):
            break  # nothing further down can replace a picked word any more
        words = set(term.split())
        clash = [i for i, (p, _) in enumerate(picked) if words & set(p.split())]
        if not clash:
            if not full:
                picked.append((term, score))
        elif len(words) > 1 and all(" " not in picked[i][0] and score >= _PHRASE_SHARE * picked[i][1] for i in clash):
            picked[clash[0]] = (term, score)
            picked = [p for i, p in enumerate(picked) if i not in clash[1:]]
    return [t for t, _ in picked]


def _terms(text: str, *, stop_words: frozenset[str], ngram_range: tuple[int, int]) -> list[str]:
    """Lowercase n-grams of words (2+ letters) within one phrase, none containing a stop word.

    Unlike scikit-learn's default analyzer, n-grams never span punctuation or a removed stop word: item texts
    are lists of phrases, and "braising, weeknight" or "notes on telescope" -> "notes telescope" are not terms.

    >>> _terms("Notes on telescope nebula, star maps.", stop_words=frozenset({"on"}), ngram_range=(1, 2))
    ['notes', 'telescope', 'nebula', 'star', 'maps', 'telescope nebula', 'star maps']
    """
    lo, hi = ngram_range
    unigrams: list[str] = []
    grams: list[str] = []
    for segment in _SEGMENT.split(text.lower()):
        run: list[str] = []  # consecutive non-stop words
        for word in [*_WORD.findall(segment), ""]:  # "" ends the last run
            if word and word not in stop_words:
                run.append(word)
                continue
            for n in range(max(lo, 2), hi + 1):
                grams += [" ".join(run[i:i + n]) for i in range(len(run) - n + 1)]
            if lo <= 1:
                unigrams += run
            run = []
    return unigrams + grams


def ctfidf_keywords(texts_by_cluster: Sequence[Sequence[str]], top_n: int = 8,
                    stop_words: Iterable[str] = ENGLISH_STOP_WORDS,
                    ngram_range: tuple[int, int] = (1, 2)) -> list[list[str]]:
    """The ``top_n`` most distinctive terms (lowercase unigrams and bigrams, no stop words) of each cluster.

    A cluster without texts, or with only stop words, gets an empty list.

    >>> ctfidf_keywords([["Fresh sourdough bread", "Notes on sourdough starter"],
    ...                  ["Penalty kick drama", "Notes on the penalty kick rule"]], top_n=2)
    [['sourdough', 'bread'], ['penalty kick', 'drama']]
    """
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be an int >= 1, got {top_n!r}")
    if isinstance(texts_by_cluster, str) or any(isinstance(t, str) for t in texts_by_cluster):
        raise ValueError("texts_by_cluster must be a sequence of sequences of texts, one per cluster")
    docs = [t for texts in texts_by_cluster for t in texts]
    owner = np.repeat(np.arange(len(texts_by_cluster)), [len(t) for t in texts_by_cluster])
    if not docs:
        return [[] for _ in texts_by_cluster]
    analyzer = functools.partial(_terms, stop_words=frozenset(stop_words), ngram_range=ngram_range)
    vectorizer = CountVectorizer(analyzer=analyzer)
    try:
        doc_terms = vectorizer.fit_transform(docs)
    except ValueError:  # every text was empty or only stop words: nothing to describe
        return [[] for _ in texts_by_cluster]
    membership = sparse.csr_matrix((np.ones(len(docs)), (owner, np.arange(len(docs)))),
                                   shape=(len(texts_by_cluster), len(docs)))
    scores = ctfidf_scores(membership @ doc_terms)
    terms = vectorizer.get_feature_names_out()
    out = []
    for row in range(scores.shape[0]):
        lo, hi = scores.indptr[row], scores.indptr[row + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        # Ties: phrases first (they read better than their words), then alphabetical (deterministic).
        ranked = sorted(((str(terms[c]), float(v)) for c, v in zip(cols, vals, strict=True) if v > 0),
                        key=lambda tv: (-tv[1], -tv[0].count(" "), tv[0]))
        out.append(_pick_keywords(ranked, top_n))
    return out


# ------------------------------------------------------------------------------------------------ codebook


def codebook_version(created_at_ms: int, centroids: np.ndarray, keywords: Sequence[Sequence[str]],
                     model: str) -> str:
    """``v<13-digit ms>-<sha8 of the content>``: sorts by build time, and names exactly one content."""
    h = hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes())
    h.update(repr((model, [list(k) for k in keywords])).encode())
    return f"v{created_at_ms:013d}-{h.hexdigest()[:8]}"


@dataclass(frozen=True, eq=False)
class Codebook:
    """An immutable interest-cluster codebook; equality is by value."""

    centroids: np.ndarray  # (k, d) float32, unit rows
    keywords: tuple[tuple[str, ...], ...]
    model: str  # embedding model id the centroids live in
    version: str
    created_at_ms: int
    novelty_threshold: float  # cosine distance above which an item is novel
    sizes: tuple[int, ...]  # members per cluster in the build sample

    def __post_init__(self) -> None:
        c = _check_unit_rows(self.centroids, "centroids").copy()
        c.flags.writeable = False
        set_ = object.__setattr__  # frozen: fields are normalised once, here
        set_(self, "centroids", c)
        set_(self, "keywords", tuple(tuple(str(w) for w in kw) for kw in self.keywords))
        set_(self, "sizes", tuple(int(s) for s in self.sizes))
        k = len(c)
        if len(self.keywords) != k or len(self.sizes) != k:
            raise ValueError(f"need one keyword list and one size per centroid ({k}), got "
                             f"{len(self.keywords)} and {len(self.sizes)}")
        if any(s < 0 for s in self.sizes):
            raise ValueError("sizes must be >= 0")
        if not (0.0 <= float(self.novelty_threshold) <= 2.0):
            raise ValueError(f"novelty_threshold is a cosine distance in [0, 2], got {self.novelty_threshold!r}")
        set_(self, "novelty_threshold", float(self.novelty_threshold))
        if not self.model or not self.version:
            raise ValueError("model and version must be non-empty")
        if isinstance(self.created_at_ms, bool) or not isinstance(self.created_at_ms, int | np.integer) \
                or self.created_at_ms < 0:
            raise ValueError(f"created_at_ms must be an int >= 0, got {self.created_at_ms!r}")
        set_(self, "created_at_ms", int(self.created_at_ms))

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest cluster int64 (n,), cosine distance 1 - cos float32 (n,)) for unit rows (n, d).

        One matrix product and an argmax (numpy/BLAS), not a FAISS search: for a codebook's few centroids FAISS's
        OpenMP threads cost more than the work, and on a busy machine they spin (measured: 12 ms instead of 0.01 ms
        per 64-text micro-batch with two other busy processes on 2 cores)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {x.shape}")
        if len(x) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sims = x @ self.centroids.T
        # The product's float32 sums depend on the batch's shape (BLAS blocks rows differently), so an item's
        # distance, and on a near-tie its cluster, would depend on the micro-batch it came in. The two nearest
        # centroids are scored again one row at a time in float64: the answer is the item's alone; ties go to the
        # lower cluster id.
        top = np.zeros((len(x), 1), dtype=np.int64) if self.k == 1 else np.argpartition(-sims, 1, axis=1)[:, :2]
        x64 = x.astype(np.float64)
        exact = np.stack([(x64 * self.centroids[top[:, j]].astype(np.float64)).sum(axis=1)
                          for j in range(top.shape[1])], axis=1)
        pick = np.lexsort((top.T, -exact.T), axis=0)[0] if top.shape[1] > 1 else np.zeros(len(x), dtype=np.int64)
        ids = top[np.arange(len(x)), pick]
        best = exact[np.arange(len(x)), pick]
        return ids.astype(np.int64), np.clip(1.0 - best, 0.0, 2.0).astype(np.float32)

    def is_novel(self, distance: float) -> bool:
        """True when an item this far from its nearest centroid is farther than the build sample's members."""
        return float(distance) > self.novelty_threshold

    def label(self, c: int, n: int = 3) -> str:
        """The cluster's first ``n`` keywords for a prompt, e.g. ``"sourdough, cast iron, braising"``."""
        if not 0 <= int(c) < self.k:
            raise ValueError(f"cluster {c} out of range 0..{self.k - 1}")
        return ", ".join(self.keywords[int(c)][:n]) or f"cluster {int(c)}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        return (self.version, self.model, self.created_at_ms, self.novelty_threshold, self.sizes, self.keywords) == (
            other.version, other.model, other.created_at_ms, other.novelty_threshold, other.sizes, other.keywords
        ) and np.array_equal(self.centroids, other.centroids)

    def __hash__(self) -> int:
        return hash((self.version, self.model, self.created_at_ms))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.centroids.flags.writeable = False  # unpickled arrays come back writeable: keep the codebook frozen
        self.centroids.flags.writeable = False


def _member_texts(texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(k)]
    for t, c in zip(texts, labels.tolist(), strict=True):
        out[c].append(t)
    return out


def build_codebook(vectors: np.ndarray, texts: Sequence[str], k: int, *, model: str, seed: int = 0,
                   top_n_keywords: int = 8, niter: int = 25, nredo: int = 20, novelty_quantile: float = 0.99,
                   created_at_ms: int | None = None, gpu: bool | None = None) -> Codebook:
    """Cluster the sample, label each cluster by c-TF-IDF over its members' texts, and set the novelty threshold
    to the ``novelty_quantile`` of the members' distances (so ~1% of build items would count as novel)."""
    if len(texts) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(texts)} texts")
    if not 0.0 < novelty_quantile <= 1.0:
        raise ValueError(f"novelty_quantile must be in (0, 1], got {novelty_quantile!r}")
    centroids = kmeans_centroids(vectors, k, seed=seed, niter=niter, nredo=nredo, gpu=gpu)
    created = int(time.time() * 1000) if created_at_ms is None else created_at_ms
    draft = Codebook(centroids, ((),) * k, model, "draft", created, 2.0, (0,) * k)
    labels, dist = draft.assign(vectors)
    keywords = ctfidf_keywords(_member_texts(texts, labels, k), top_n=top_n_keywords)
    sizes = np.bincount(labels, minlength=k)
    threshold = float(np.quantile(dist, novelty_quantile))
    log.info("codebook: k=%d over %d items, sizes %d..%d, novelty threshold %.4f", k, len(labels), sizes.min(),
             sizes.max(), threshold)
    return Codebook(centroids, keywords, model, codebook_version(created, centroids, keywords, model), created,
                    threshold, tuple(sizes.tolist()))
