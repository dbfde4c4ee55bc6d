"""Content digests: canonical JSON for configs, sha256 for files and directories.

File digests are memoized by (inode, size, mtime_ns, ctime_ns) in a small JSON state file, as
dvc-data's State does, so an unchanged multi-megabyte checkpoint is not read again on every run.
The ctime is what makes the memo trustworthy: a rewrite in place that restores the mtime
(``os.utime``, ``cp -p``, ``rsync -t``) still moves the ctime, which no user call can set back.
A file whose ctime is younger than ``RACY_NS`` when it is stat'ed is hashed but not memoized
(git's "racy clean" rule): a write within the timestamps' granularity could leave every field
of the stamp as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

CHUNK = 1 << 20
# file timestamps come from the kernel's coarse clock (one tick: 1-10 ms); a wide margin
RACY_NS = 100_000_000


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, sorted by relative path."""
    return sorted(p for p in directory.rglob("*") if p.is_file())


def tree_digest(files: dict[str, str]) -> str:
    """Digest of a directory from its {relative path: file digest} map."""
    return digest_json(sorted(files.items()))


def file_digests(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in list_files(directory)}


def stat_stamp(stat: os.stat_result) -> list[int]:
    """The fields of a stat that any change of a file's content moves."""
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def fingerprint(path: Path) -> dict[str, Any]:
    """Digest of a file or directory read now (no memo), with the stat stamp of each file.

    Taken before and after a build, two equal fingerprints mean nothing touched the files the
    stage read while it ran.
    """
    files = [path] if path.is_file() else list_files(path)
    stamps = {str(p): stat_stamp(p.stat()) for p in files}
    if path.is_file():
        digest = sha256_file(path)
    else:
        digest = tree_digest({p.relative_to(path).as_posix(): sha256_file(p) for p in files})
    return {"digest": digest, "stamps": stamps}


class DigestState:
    """Memo of file digests keyed by path and stat, persisted across runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._changed = False
        try:
            self._memo: dict[str, list[Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._memo = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        stated_ns = time.time_ns()
        stamp = stat_stamp(stat)
        key = str(path.resolve())
        with self._lock:
            known = self._memo.get(key)
        # any field that differs means re-hash (entries of the older 3-field memo never match)
        if known and known[:-1] == stamp:
            return known[-1]
        digest = sha256_file(path)
        if stated_ns - stat.st_ctime_ns > RACY_NS:
            with self._lock:
                self._memo[key] = [*stamp, digest]
                self._changed = True
        return digest

    def tree(self, directory: Path) -> str:
        """Digest of a directory: sha256 over its sorted (relative path, file digest) list."""
        return tree_digest({p.relative_to(directory).as_posix(): self.file(p)
                            for p in list_files(directory)})

    def path_digest(self, path: Path) -> str:
        return self.tree(path) if path.is_dir() else self.file(path)

    def save(self) -> None:
        if not self._changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(canonical_json(self._memo))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # left only if writing failed (a full disk)
