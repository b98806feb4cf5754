"""Which worker a Bytewax key lands on, and shard keys that land where we want them.

A stateful step sends each key to worker ``siphash13(key) % workers`` (Rust's ``DefaultHasher``, SipHash-1-3 with
zero keys, over the key's UTF-8 bytes and the 0xff that Rust's ``str`` hash appends; the worker numbering may be a
permutation of that, which does not matter here). The plain shard keys "0" and "1" both land on one worker of
two, so a two-worker job kept both user shards, both item shards and both drift shards on one thread while the
other had none. :func:`shard_keys` gives shard ``i`` the first of ``"i"``, ``"i.1"``, ``"i.2"``, ... that lands
in hash class ``i % workers``: the shards of a job are spread evenly over its workers, and a one-worker job keeps
the plain keys. ``tests/test_routing.py`` checks this against a real multi-worker dataflow, so a Bytewax that
routes differently fails a test instead of quietly piling the shards on one worker (which costs speed, never
correctness: results do not depend on where a key runs).

>>> shard_keys(1), shard_keys(4, workers=1)
(('0',), ('0', '1', '2', '3'))
>>> [worker_class(k, 2) for k in shard_keys(2)], [worker_class(k, 3) for k in shard_keys(6, workers=3)]
([0, 1], [0, 1, 2, 0, 1, 2])
"""

from __future__ import annotations

import functools

__all__ = ["shard_keys", "siphash13", "worker_class"]

_M = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of ``data`` (Rust's ``DefaultHasher`` with ``k0 = k1 = 0``), as an unsigned 64-bit int."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_class(key: str, workers: int) -> int:
    """The class of workers ``key`` is routed to: keys of different classes run on different workers."""
    return siphash13(key.encode() + b"\xff") % workers


@functools.cache
def shard_keys(shards: int, workers: int | None = None) -> tuple[str, ...]:
    """The Bytewax keys of ``shards`` shards, shard ``i`` on worker class ``i % workers`` (default: as many workers
    as shards)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    workers = shards if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return tuple(str(i) for i in range(shards))
    keys = []
    for i in range(shards):
        key, j = str(i), 0
        while worker_class(key, workers) != i % workers:
            j += 1
            key = f"{i}.{j}"
        keys.append(key)
    return tuple(keys)
