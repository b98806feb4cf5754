"""Shard keys land on the workers we mean them for (streams/routing.py), in a real multi-worker Bytewax
dataflow: with the plain keys "0" and "1" both shards of a two-worker job ran on one worker."""

from __future__ import annotations

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from streams.content_stage import stable_shard
from streams.routing import shard_keys, siphash13, worker_class


def _threads(keys: list[str], workers: int) -> dict[str, int]:
    """key -> the thread (worker) its stateful step ran on, numbered in order of first appearance."""
    flow = Dataflow("routing")
    out: list = []
    s = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    op.output("out", op.stateful_map("where", s, lambda st, v: (None, threading.get_ident())), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return dict(out)


def test_siphash13_matches_the_reference_vectors():
    # SipHash-1-3 of the empty string with zero keys (Rust's DefaultHasher::new().finish())
    assert siphash13(b"") == 0xD1FBA762150C532C
    assert siphash13(b"abc") != siphash13(b"abd")


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_shard_key_lands_on_its_own_worker(workers):
    keys = list(shard_keys(2 * workers, workers))
    where = _threads(keys, workers)
    # shard i and shard i + workers share a worker; the first `workers` shards are on `workers` different ones
    assert len({where[k] for k in keys[:workers]}) == workers
    assert all(where[keys[i]] == where[keys[i + workers]] for i in range(workers))
    # the router's classes are the workers' (up to their numbering)
    plain = [str(i) for i in range(8 * workers)]
    got = _threads(plain, workers)
    assert {(worker_class(k, workers), got[k]) for k in plain} == \
        {(c, got[next(k for k in plain if worker_class(k, workers) == c)]) for c in range(workers)}


def test_user_shards_spread_over_both_workers_of_two():
    keys = {stable_shard(f"user-{i}", 2) for i in range(100)}
    assert keys == set(shard_keys(2))
    where = _threads(sorted(keys), 2)
    assert len(set(where.values())) == 2
    plain = _threads(["0", "1"], 2)
    assert len(set(plain.values())) == 1  # what the plain keys did
