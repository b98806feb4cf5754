"""Versioned codebook artifacts on disk, swapped in atomically.

Layout under ``root``::

    root/v1767225600000-1a2b3c4d/centroids.npy   (k, d) float32
    root/v1767225600000-1a2b3c4d/codebook.json   version, model, k, dim, created_at_ms, novelty_threshold,
                                                    sizes, keywords
    root/CURRENT                                    the current version's name

A version directory is written under a temporary name and renamed into place, so it exists complete or not at
all, and is never modified afterwards; ``CURRENT`` is replaced by ``os.replace``. A reader therefore sees the
old or the new codebook whole, never a mix. Old versions are kept (rollback is ``CodebookStore.activate``).

>>> import tempfile
>>> from operators.clusters import Codebook
>>> tmp = tempfile.TemporaryDirectory()
>>> store = CodebookStore(tmp.name)
>>> store.current_version() is None
True
>>> cb = Codebook(np.eye(2, 3, dtype=np.float32), [["tea"], ["chess"]], "toy", "v0000000000001-demo", 1, 0.5,
...               [3, 4])
>>> store.save(cb).name, store.load() == cb, store.versions()
('v0000000000001-demo', True, ['v0000000000001-demo'])
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from operators.clusters import Codebook

__all__ = ["CodebookStore"]

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
_VERSION = re.compile(r"^v[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")  # a plain directory name, never a path
_FORMAT = 1


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"not a codebook version: {version!r} (expected e.g. v1767225600000-1a2b3c4d)")
    return version


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _metadata(cb: Codebook) -> dict:
    return {"format": _FORMAT, "version": cb.version, "model": cb.model, "k": cb.k, "dim": cb.dim,
            "created_at_ms": cb.created_at_ms, "novelty_threshold": cb.novelty_threshold, "sizes": list(cb.sizes),
            "keywords": [list(kw) for kw in cb.keywords]}


class CodebookStore:
    """Versioned codebooks under one directory; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    # -- writing --------------------------------------------------------------------------------------------

    def save(self, codebook: Codebook, *, activate: bool = True) -> Path:
        """Write ``codebook`` as a new version directory, then (by default) make it current. Returns its path.

        Saving a version that already exists writes nothing (a version names its content) and only activates it.
        """
        version = _check_version(codebook.version)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        if not final.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root))
            try:
                with open(tmp / "centroids.npy", "wb") as f:
                    np.save(f, codebook.centroids, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                _write_file(tmp / "codebook.json", json.dumps(_metadata(codebook), indent=2).encode() + b"\n")
                _fsync_dir(tmp)
                os.rename(tmp, final)  # atomic: the version appears complete or not at all
            except OSError:
                if final.exists():  # a concurrent writer saved the same version first: same content, fine
                    log.info("codebook %s was saved concurrently", version)
                else:
                    raise
            finally:
                if tmp.exists():
                    for p in tmp.iterdir():
                        p.unlink()
                    tmp.rmdir()
            _fsync_dir(self.root)
            log.info("saved codebook %s (k=%d, dim=%d) to %s", version, codebook.k, codebook.dim, final)
        if activate:
            self.activate(version)
        return final

    def activate(self, version: str) -> None:
        """Make an existing version current (also: roll back), by atomically replacing ``CURRENT``."""
        if not (self.root / _check_version(version) / "codebook.json").is_file():
            raise FileNotFoundError(f"no codebook version {version!r} in {self.root}")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-CURRENT-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(version.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / CURRENT)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)
        log.info("current codebook is now %s", version)

    # -- reading --------------------------------------------------------------------------------------------

    def current_version(self) -> str | None:
        try:
            text = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return _check_version(text)

    def versions(self) -> list[str]:
        """Complete versions, oldest first (version names sort by build time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _VERSION.match(p.name) and (p / "codebook.json").is_file())

    def load(self, version: str | None = None) -> Codebook:
        """The codebook of ``version``, or the current one (None)."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise FileNotFoundError(f"no codebook in {self.root}: build one with `driftrag clusters build`")
        path = self.root / _check_version(version)
        try:
            meta = json.loads((path / "codebook.json").read_bytes())
            centroids = np.load(path / "centroids.npy", allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"no codebook version {version!r} in {self.root} "
                                    "(see `driftrag clusters list`)") from None
        return _from_files(meta, centroids, path)

    def load_metadata(self, version: str | None = None) -> dict:
        """``codebook.json`` of ``version`` (None: the current one), without loading the centroids."""
        version = version or self.current_version()
        if version is None:
            raise FileNotFoundError(f"no codebook in {self.root}: build one with `driftrag clusters build`")
        try:
            return json.loads((self.root / _check_version(version) / "codebook.json").read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"no codebook version {version!r} in {self.root}") from None


def _from_files(meta: dict, centroids: np.ndarray, path: Path) -> Codebook:
    """A codebook from its two files; a mismatch between them is a corrupt artifact (ValueError)."""
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown codebook format {meta.get('format')!r} (this driftrag reads {_FORMAT})")
    try:
        if centroids.ndim != 2 or centroids.shape != (meta["k"], meta["dim"]):
            raise ValueError(f"{path}: centroids.npy has shape {centroids.shape}, codebook.json says "
                             f"({meta['k']}, {meta['dim']})")
        if meta["version"] != path.name:
            raise ValueError(f"{path}: codebook.json names version {meta['version']!r}")
        return Codebook(centroids.astype(np.float32, copy=False), meta["keywords"], meta["model"], meta["version"],
                        meta["created_at_ms"], meta["novelty_threshold"], meta["sizes"])
    except KeyError as e:
        raise ValueError(f"{path}: codebook.json lacks {e}") from None
