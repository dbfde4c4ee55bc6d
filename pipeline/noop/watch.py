"""What a set of files and folders holds, cheaply re-checked: stat stamps first, content after.

A ``Watch`` records, for every file under the watched paths, its stat stamp and sha256, and for
every folder the sorted list of its entries (a file added to a recipe folder changes what Hydra
composes even if no watched file changed). Checking it again stats each file and re-hashes only
those whose stamp moved, as ``pipeline.hashing.DigestState`` does; a stamp taken within the
clock's granularity of the file's last change is not trusted (recorded as unknown, so the next
check hashes that file again).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.hashing import CHUNK, RACY_NS, stat_stamp

if TYPE_CHECKING:
    from collections.abc import Callable

Files = dict[str, list[Any]]  # path -> [*stamp or [], sha256] ("missing" for an absent path)
SKIPPED = ("__pycache__", ".noop")


def take(paths: list[str], previous: Files | None = None,
         digest: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Stamps and digests of every file under ``paths``, and every folder's listing.

    A file whose stamp is as in ``previous`` keeps its digest there; the others are hashed, by
    ``digest`` if given (the cache's memo, which has just hashed most of them).
    """
    walk = _Walk(previous or {}, digest or sha256_file_at)
    for path in paths:
        walk.visit(path)
    return {"files": walk.files, "folders": walk.folders}


def first_change(recorded: dict[str, Any], restamped: Files | None = None) -> str | None:
    """The first watched path whose content or listing differs from ``recorded``, or None.

    Files re-hashed and found equal go into ``restamped`` with their new stamp (when it can be
    trusted), so that the record can be refreshed and the next check costs a stat again.
    """
    for path, digest in recorded["folders"].items():
        if listing(path) != digest:
            return path
    for path, known in recorded["files"].items():
        if known[0] and _stamp(path) == known[0]:
            continue
        now = _stamped(path, None, sha256_file_at)
        if now[-1] != known[-1]:
            return path
        if restamped is not None and now[0]:
            restamped[path] = now
    return None


@dataclass
class _Walk:
    previous: Files
    digest: Callable[[str], str]
    files: Files = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)

    def visit(self, path: str) -> None:
        if not os.path.isdir(path):
            self.files[path] = _stamped(path, self.previous.get(path), self.digest)
            return
        self.folders[path] = listing(path)
        for name in sorted(os.listdir(path)):
            if name not in SKIPPED:
                self.visit(os.path.join(path, name))


def _stamped(path: str, known: list[Any] | None, digest: Callable[[str], str]) -> list[Any]:
    """[stamp, digest] of ``path`` now; ``known``'s digest if its stamp is unchanged."""
    try:
        stat = os.stat(path)
        stamp = stat_stamp(stat)
        found = known[-1] if known and known[0] == stamp else digest(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return [[], "missing"]
    except OSError:
        return [[], "unreadable"]
    trusted = time.time_ns() - stat.st_ctime_ns > RACY_NS
    return [stamp if trusted else [], found]


def _stamp(path: str) -> list[int] | None:
    try:
        return stat_stamp(os.stat(path))
    except OSError:
        return None


def listing(path: str) -> str:
    try:
        names = sorted(n for n in os.listdir(path) if n not in SKIPPED)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    return hashlib.sha256("\0".join(names).encode()).hexdigest()


def sha256_file_at(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
