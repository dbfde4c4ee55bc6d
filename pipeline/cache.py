"""Content-addressed store of stage outputs, one directory per cache key.

Layout under the cache root::

    objects/<key[:2]>/<key[2:]>/out/...      the stage's output files (read-only)
                                /meta.json   key payload, output digest, summary, seconds
    tmp/<key>.<pid>.<n>/                     builds in progress (never looked up)
    locks/<key>.lock                         one builder per key across processes

An entry exists only once its directory has been renamed into ``objects/``, complete with
``meta.json``; a killed build leaves at most a directory under ``tmp/``, which nothing reads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline import faults
from pipeline.hashing import DigestState, file_digests, list_files, tree_digest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)
_counter = itertools.count()


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def out(self) -> Path:
        return self.path / "out"

    @property
    def digest(self) -> str:
        return self.meta["digest"]


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = DigestState(root / "state.json")

    def _entry_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key[2:]

    def lookup(self, key: str) -> Entry | None:
        """The complete entry for ``key``, or None; a damaged entry is removed."""
        path = self._entry_dir(key)
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta["key"] != key or "digest" not in meta:
                raise ValueError("meta.json does not describe this entry")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cache entry %s is damaged (%s); rebuilding it", key[:12], exc)
            _remove(path)
            return None
        return Entry(key, path, meta)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the build lock of ``key``: a concurrent run waits, then finds the entry."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_dir / f"{key}.lock"):
            yield

    def staging(self, key: str) -> Path:
        """A fresh, empty build directory for ``key`` (call while holding its lock)."""
        tmp_root = self.root / "tmp"
        for stale in tmp_root.glob(f"{key}.*"):
            _remove(stale)  # left by a killed run; we hold the lock, so nobody uses it
        path = tmp_root / f"{key}.{os.getpid()}.{next(_counter)}"
        (path / "out").mkdir(parents=True)
        return path

    def commit(self, key: str, staged: Path, meta: dict[str, Any]) -> Entry:
        """Digest the staged output, seal it read-only and move it into place atomically."""
        out = staged / "out"
        files = file_digests(out)
        meta = {**meta, "key": key, "files": files, "digest": tree_digest(files),
                "created": time.time()}
        (staged / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        for path in list_files(out):
            path.chmod(0o444)
        final = self._entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a forced rebuild replaces the old entry
            faults.point("cache.remove")
            _remove(final)
        faults.point("cache.commit")
        os.replace(staged, final)
        return Entry(key, final, meta)

    def discard(self, staged: Path) -> None:
        _remove(staged)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
