"""Embeddings kept on disk by content key, so a restarted job does not embed its catalogue again.

The in-memory :class:`operators.embedding_cache.EmbeddingCache` forgets everything when the process ends; on a
2-core CPU a catalogue of 100,000 texts then costs minutes of model time at every restart. This store sits behind
that cache (``cache.store``): memory first, then one SQLite lookup for a micro-batch's misses, then the model.

One SQLite file per embedding identity (model and its weights, backend and device, dimension, export recipe),
because the same text gets slightly different vectors from ``onnx-int8`` and ``torch``, say; switching backend or
model therefore starts an empty file instead of mixing vectors. Rows are (16-byte content key, float32 bytes).
The store is a cache: it is bounded (oldest rows go first), a file that cannot be read is moved aside and a new
one started (with a warning), and worker processes may share one file (SQLite locking, WAL journal).

>>> import tempfile
>>> import numpy as np
>>> tmp = tempfile.TemporaryDirectory()
>>> store = EmbeddingStore(Path(tmp.name) / "toy.sqlite", dim=2, max_entries=2)
>>> store.put_many([(b"a", np.ones(2, np.float32)), (b"b", np.zeros(2, np.float32))])
>>> sorted(store.get_many([b"a", b"z"])), len(store)
([b'a'], 2)
>>> store.put_many([(b"c", np.ones(2, np.float32))]); sorted(store.get_many([b"a", b"b", b"c"]))  # a: oldest
[b'b', b'c']
>>> store.close(); tmp.cleanup()
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL);
"""
_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's bound-parameter limit everywhere


def _slug(s: str, n: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[-n:] or "model"


def store_path(directory: Path, *, model: str, backend: str, dim: int, fingerprint: str = "") -> Path:
    """The file for one embedding identity: readable prefix, hash of everything that changes the vectors.

    >>> store_path(Path("/c"), model="sentence-transformers/all-MiniLM-L6-v2", backend="onnx-int8/cpu", dim=384).name
    'sentence-transformers_all-MiniLM-L6-v2--onnx-int8_cpu--384-...sqlite'
    """
    digest = hashlib.sha256(f"{model}|{backend}|{dim}|{fingerprint}".encode()).hexdigest()[:12]
    name = f"{_slug(model)}--{_slug(backend, 24)}--{dim}-{digest}.sqlite"
    return directory / name


class EmbeddingStore:
    """``get_many(keys)`` / ``put_many(rows)`` over one SQLite file of float32 vectors of one dimension."""

    def __init__(self, path: Path, *, dim: int, max_entries: int = 1_000_000, meta: dict[str, str] | None = None
                 ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.path, self.dim, self.max_entries = Path(path), dim, max_entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(meta or {})
        except sqlite3.DatabaseError as e:  # not a database, or damaged: it only held derived data
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            log.warning("embedding store %s cannot be read (%s); moved to %s, starting an empty one",
                        self.path, e, aside.name)
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open(meta or {})
        self._count = self._rows(self._db)
        self.reads = self.found = self.written = 0

    def _open(self, meta: dict[str, str]) -> sqlite3.Connection:
        # One connection per process; the content stage's lock serialises its worker threads.
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        stored_dim = db.execute("SELECT value FROM meta WHERE name='dim'").fetchone()
        if stored_dim is not None and int(stored_dim[0]) != self.dim:
            raise sqlite3.DatabaseError(f"it holds {stored_dim[0]}-d vectors, not {self.dim}-d")
        db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                       [("dim", str(self.dim)), ("created_ms", str(int(time.time() * 1000))), *meta.items()])
        return db

    @classmethod
    def for_embedder(cls, directory: Path, embedder: Any, *, model: str, fingerprint: str = "",
                     max_entries: int = 1_000_000) -> EmbeddingStore:
        """The store of ``embedder`` (its ``name`` and ``dim``) for ``model`` in ``directory``."""
        path = store_path(Path(directory), model=model, backend=embedder.name, dim=embedder.dim,
                          fingerprint=fingerprint)
        return cls(path, dim=embedder.dim, max_entries=max_entries,
                   meta={"model": model, "backend": embedder.name, "fingerprint": fingerprint})

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        out: dict[bytes, np.ndarray] = {}
        width = 4 * self.dim
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            rows = self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
            for key, blob in rows:
                if len(blob) == width:  # a short or long row is ignored (and re-embedded), never returned
                    out[bytes(key)] = np.frombuffer(blob, np.float32).copy()
        self.reads += len(keys)
        self.found += len(out)
        return out

    def put_many(self, rows: Iterable[tuple[bytes, np.ndarray]]) -> None:
        data = [(k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in rows]
        if not data:
            return
        if any(len(b) != 4 * self.dim for _, b in data):
            raise ValueError(f"every vector must have {self.dim} float32 values")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO emb (key, vec) VALUES (?, ?)", data)
            self._count = self._rows(db)  # exact, also when other processes write to the same file
            over = self._count - self.max_entries
            if over > 0:  # oldest rows first (rowid order = insertion order)
                db.execute("DELETE FROM emb WHERE rowid IN (SELECT rowid FROM emb ORDER BY rowid LIMIT ?)", (over,))
                self._count -= over
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(data)

    @staticmethod
    def _rows(db: sqlite3.Connection) -> int:
        """Row count in O(log n): rows are only ever deleted oldest-first, so their rowids stay contiguous."""
        lo, hi = db.execute("SELECT MIN(rowid), MAX(rowid) FROM emb").fetchone()
        return 0 if lo is None else hi - lo + 1

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()
