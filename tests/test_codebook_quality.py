"""A codebook built on the generator's items, with the real model, recovers the generator's clusters and labels
each with words of its true vocabulary (issue 'interest clusters', done-when)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import numpy as np
import orjson
import pytest
from sklearn.metrics import adjusted_rand_score

from operators.clusters import build_codebook
from operators.embedding import DEFAULT_MODEL, make_embedder
from streams.generator import GeneratorConfig, WorkloadGenerator
from streams.vocabulary import TOPICS

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world():
    """(item ids, texts, true clusters, base-vocabulary mask, ground truth) of every good content event."""
    gen = WorkloadGenerator(GeneratorConfig(seed=7, events=20_000))
    texts: dict[str, str] = {}
    for m in gen.messages():
        if m.topic == "items" and m.bad_kind is None:
            item = orjson.loads(m.value)
            texts[item["item_id"]] = item["text"]
    gt = gen.ground_truth()
    ids = list(texts)
    shifted = {r["item_id"] for r in gt["item_releases"] if r["vocabulary"] == "shifted"}
    true = np.array([gt["items"][i] for i in ids])
    base = np.array([i not in shifted for i in ids])
    return ids, [texts[i] for i in ids], true, base, gt


@pytest.fixture(scope="module")
def codebook_and_assignment(world):
    _, texts, _, _, gt = world
    embedder = make_embedder("auto")
    t0 = time.monotonic()
    vectors = embedder.encode(texts)
    t1 = time.monotonic()
    cb = build_codebook(vectors, texts, len(gt["clusters"]), model=DEFAULT_MODEL, seed=0)
    t2 = time.monotonic()
    log.warning("codebook quality: %d items embedded with %s in %.1f s, k-means + keywords in %.1f s",
                len(texts), embedder.name, t1 - t0, t2 - t1)
    return cb, cb.assign(vectors)[0]


def test_codebook_recovers_the_generator_clusters(world, codebook_and_assignment):
    _, _, true, base, _ = world
    _, assigned = codebook_and_assignment
    # ARI over base-vocabulary items: the content-drift items are written from a *different* topic's vocabulary
    # on purpose (the drift to detect), so whether they join their old cluster is not a clustering truth. The
    # trending cluster's items are ordinary base-vocabulary items and are included: this build sees all of them.
    ari_base = adjusted_rand_score(true[base], assigned[base])
    ari_all = adjusted_rand_score(true, assigned)
    log.warning("codebook quality: ARI %.3f over %d base-vocabulary items, %.3f over all %d", ari_base,
                int(base.sum()), ari_all, len(true))
    assert ari_base >= 0.8


def _vocabulary_tokens(topic_name: str) -> set[str]:
    topic = next(t for t in TOPICS if t.name == topic_name)
    return {w for phrase in topic.words for w in re.findall(r"\w\w+", phrase.lower())}


def test_each_cluster_is_labelled_with_its_own_vocabulary(world, codebook_and_assignment):
    _, _, true, base, gt = world
    cb, assigned = codebook_and_assignment
    for cluster in gt["clusters"]:
        c = cluster["id"]
        majority = Counter(assigned[(true == c) & base].tolist()).most_common(1)[0][0]
        vocab = _vocabulary_tokens(cluster["name"])
        keywords = cb.keywords[majority]
        own = [kw for kw in keywords if set(kw.split()) <= vocab]
        log.info("cluster %d %s -> %d %s", c, cluster["name"], majority, keywords)
        assert own, f"cluster {c} ({cluster['name']}): keywords {keywords} share no word with its vocabulary"
        # And the label is about the topic, not template filler: most keywords are its vocabulary's words.
        assert len(own) >= len(keywords) // 2, f"cluster {c} ({cluster['name']}): keywords {keywords}"
