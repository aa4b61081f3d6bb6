"""The build cache: downloaded packages, unpacked trees and built blobs.

An index kept with diskcache maps a key (content and version of what went in) to a directory
under the cache root or to a blob. Trees are built in a temporary directory beside their final
place and renamed into it, so an interrupted build never leaves a half-made entry behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import diskcache

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"


def default_root() -> Path:
    """``$XDG_CACHE_HOME/imagekit``, or ``~/.cache/imagekit``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagekit"


def key_of(*parts: str | bytes) -> str:
    """A stable key for a cache entry from the things it was made of."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheInfo:
    root: Path
    entries: int
    size_bytes: int


class BuildCache:
    """Trees and blobs keyed by `key_of(...)`, under ``root`` (default: `default_root`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_root()
        self.trees = self.root / "trees"
        self.trees.mkdir(parents=True, exist_ok=True)
        self._index = diskcache.Cache(str(self.root / "index"))

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> BuildCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def tree(self, key: str, build: Callable[[Path], None]) -> Path:
        """The directory stored under ``key``; ``build(tmpdir)`` fills it when it is missing."""
        final = self.trees / key
        if self._index.get(("tree", key)) == key and final.is_dir():
            log.debug("cache hit: tree %s", key[:12])
            return final
        shutil.rmtree(final, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.trees))
        try:
            build(work)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self._index.set(("tree", key), key)
        return final

    def blob(self, key: str, build: Callable[[], bytes]) -> bytes:
        """The bytes stored under ``key``; ``build()`` makes them when they are missing."""
        cached = self._index.get(("blob", key))
        if cached is not None:
            log.debug("cache hit: blob %s", key[:12])
            return cast(bytes, cached)
        data = build()
        self._index.set(("blob", key), data)
        return data

    def info(self) -> CacheInfo:
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return CacheInfo(root=self.root, entries=len(self._index), size_bytes=size)

    def clear(self) -> None:
        self._index.clear()
        shutil.rmtree(self.trees, ignore_errors=True)
        self.trees.mkdir(parents=True, exist_ok=True)
