"""Content-addressed store of stage outputs, one directory per cache key.

Layout under the cache root::

    objects/<key[:2]>/<key[2:]>/out/...      the stage's output files (read-only)
                                /meta.json   key payload, per-file sha256 and size, output
                                             digest, working-tree imports, summary, seconds
    tmp/<key>.<pid>.<n>/                     builds in progress (never looked up)
    locks/<key>.lock                         one builder per key across processes
    locks/<key>.holder                       who holds that lock (pid, host, since)
    quarantine/<key>-<time>-<pid>-<n>/       damaged entries, moved aside with why.txt

An entry exists only once its directory has been renamed into ``objects/``, complete with
``meta.json``; a killed build leaves at most a directory under ``tmp/``, which nothing reads.
With ``run.cache_url`` a shared store (pipeline/remote_cache.py) stands behind this one: a local
miss is fetched from it, verified and committed here; each local commit is uploaded to it.
Every lookup verifies the entry before handing it on (as Bazel checks its action outputs):
each file's size and sha256 against meta.json, through the digest memo, so an unchanged entry
costs a stat per file. A damaged entry is moved to ``quarantine/`` and is a miss.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from pipeline import faults
from pipeline.hashing import DigestState, file_digests, list_files, tree_digest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.remote_cache import RemoteStore

log = logging.getLogger(__name__)
_counter = itertools.count()
WAIT_NOTICE_S = 1.0  # a run waiting longer than this for a lock says who holds it


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]
    remote: bool = False  # fetched from the shared cache (run.cache_url) by this lookup

    @property
    def out(self) -> Path:
        return self.path / "out"

    @property
    def digest(self) -> str:
        return self.meta["digest"]


def open_cache(run: dict[str, Any]) -> Cache:
    """The cache a run's ``run:`` section names: ``run.cache_dir``, and ``run.cache_url``
    behind it if set (its bucket is checked at the first local miss, before any build)."""
    remote = None
    if run.get("cache_url"):
        from pipeline.remote_cache import RemoteStore  # fsspec only for a shared cache

        remote = RemoteStore(run["cache_url"])
    return Cache(Path(run["cache_dir"]), remote)


class Cache:
    def __init__(self, root: Path, remote: RemoteStore | None = None) -> None:
        self.root = root
        self.remote = remote
        self.state = DigestState(root / "state.json")
        # key -> why its damaged entry was quarantined this run (the rebuild's note)
        self.repaired: dict[str, str] = {}
        self._held = threading.local()  # keys whose lock this thread holds

    def _entry_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key[2:]

    def lookup(self, key: str) -> Entry | None:
        """The verified entry for ``key``, or None: missing, damaged or out of date."""
        entry, damage = self._read(key)
        if damage is not None:
            # a concurrent commit may be replacing the entry: judge it again under its lock
            with self.lock(key):
                entry, damage = self._read(key)
                if damage is not None:
                    self._quarantine(key, damage)
        if entry is None and self.remote is not None:
            entry = self._fetch(key)
        if entry is not None and (changed := self._changed_import(entry)):
            log.info("cache entry %s is out of date: %s changed", key[:12], changed)
            if self.remote is not None:  # the shared copy is as old: the rebuild replaces it
                self.remote.replace.add(key)
            return None
        return entry

    def _read(self, key: str) -> tuple[Entry | None, str | None]:
        """The entry and None, or None and what is wrong with it (None, None: no entry)."""
        path = self._entry_dir(key)
        if not path.exists():
            return None, None
        try:
            meta = json.loads((path / "meta.json").read_text())
        except FileNotFoundError:
            return None, "meta.json is missing"
        except (OSError, ValueError) as exc:
            return None, f"meta.json cannot be read ({exc})"
        if (not isinstance(meta, dict) or meta.get("key") != key
                or not isinstance(meta.get("files"), dict) or "digest" not in meta):
            return None, "meta.json does not describe this entry"
        damage = self._verify(path / "out", meta)
        return (None, damage) if damage else (Entry(key, path, meta), None)

    def _fetch(self, key: str) -> Entry | None:
        """The shared cache's entry for ``key``, downloaded, verified and committed here."""
        try:
            with self.lock(key):
                if self._entry_dir(key).exists():  # another run fetched or built it meanwhile
                    return self._read(key)[0]
                staged = self.staging(key)
                try:
                    meta = self.remote.fetch(key, staged / "out")  # type: ignore[union-attr]
                    if meta is None:
                        return None
                    _seal(staged / "out")
                    return replace(self._install(key, staged, meta), remote=True)
                finally:
                    self.discard(staged)  # nothing left once installed
        except OSError as exc:  # a read-only or full local cache cannot keep it: a miss
            log.warning("cache entry %s cannot be fetched into %s (%s)", key[:12], self.root,
                        exc.strerror or exc)
            return None

    def _verify(self, out: Path, meta: dict[str, Any]) -> str | None:
        files: dict[str, str] = meta["files"]
        if tree_digest(files) != meta["digest"]:
            return "meta.json's digest does not match its list of files"
        present = {p.relative_to(out).as_posix() for p in list_files(out)}
        for name in sorted(set(files) ^ present):
            return f"out/{name} " + ("is missing" if name in files else "is not in meta.json")
        for name, digest in sorted(files.items()):
            damage = self._check_file(out / name, digest, meta.get("sizes", {}).get(name))
            if damage:
                return f"out/{name} {damage}"
        return None

    def _check_file(self, path: Path, digest: str, size: int | None) -> str | None:
        try:
            actual = path.stat().st_size
            if size is not None and actual != size:
                return f"is {actual} bytes, meta.json records {size}"
            if self.state.file(path) != digest:
                return "does not match the sha256 meta.json records"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        return None

    def _quarantine(self, key: str, damage: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest = self.root / "quarantine" / f"{key}-{stamp}-{os.getpid()}-{next(_counter)}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._entry_dir(key), dest)
        except FileNotFoundError:
            return  # another run moved it first
        except OSError as exc:  # still a miss: the rebuild's commit replaces it
            log.warning("cache entry %s is damaged: %s. It could not be moved aside (%s); "
                        "rebuilding it.", key[:12], damage, exc.strerror)
            self.repaired[key] = f"cache entry was damaged ({damage})"
            return
        with contextlib.suppress(OSError):
            (dest / "why.txt").write_text(f"{damage}\n")
        log.warning("cache entry %s is damaged: %s. Moved it to %s; rebuilding it.",
                    key[:12], damage, dest)
        self.repaired[key] = f"cache entry was damaged ({damage}), quarantined in {dest}"

    def _changed_import(self, entry: Entry) -> str | None:
        """The first working-tree module the entry's build imported that has changed since."""
        for name, digest in sorted(entry.meta.get("imports", {}).items()):
            try:
                if self.state.file(Path(name)) != digest:
                    return name
            except OSError:
                return name
        return None

    @contextlib.contextmanager
    def lock(self, key: str, what: str = "") -> Iterator[None]:
        """Hold the build lock of ``key``: a concurrent run waits, then finds the entry."""
        held: set[str] = self._held.__dict__.setdefault("keys", set())
        if key in held:  # this thread holds it already (a lookup inside a build)
            yield
            return
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_dir / f"{key}.lock")
        holder = lock_dir / f"{key}.holder"
        try:
            lock.acquire(timeout=WAIT_NOTICE_S)
        except Timeout:
            log.warning("%s waits for cache key %s: another run is building it (%s)",
                        what or "a stage", key[:12], describe_holder(holder))
            lock.acquire()
        held.add(key)
        try:
            _write_holder(holder)
            yield
        finally:
            held.discard(key)
            holder.unlink(missing_ok=True)
            lock.release()

    def staging(self, key: str) -> Path:
        """A fresh, empty build directory for ``key`` (call while holding its lock)."""
        if self.remote is not None:  # nothing builds unless its output can be shared
            self.remote.ready()
        tmp_root = self.root / "tmp"
        for stale in tmp_root.glob(f"{key}.*"):
            _remove(stale)  # left by a killed run; we hold the lock, so nobody uses it
        path = tmp_root / f"{key}.{os.getpid()}.{next(_counter)}"
        (path / "out").mkdir(parents=True)
        return path

    def commit(self, key: str, staged: Path, meta: dict[str, Any]) -> Entry:
        """Digest the staged output, seal it read-only and move it into place atomically;
        then upload it to the shared cache, if there is one."""
        out = staged / "out"
        _seal(out)  # before digesting: what is digested can no longer be written
        files = file_digests(out)
        sizes = {name: (out / name).stat().st_size for name in files}
        meta = {**meta, "key": key, "files": files, "sizes": sizes,
                "digest": tree_digest(files), "created": time.time()}
        entry = self._install(key, staged, meta)
        if self.remote is not None:
            self.remote.upload(key, entry.out, entry.meta)
        return entry

    def _install(self, key: str, staged: Path, meta: dict[str, Any]) -> Entry:
        """Add ``meta`` (its digests known) to sealed ``staged`` and rename it into place."""
        (staged / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        final = self._entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        old = staged.with_name(f"{staged.name}.replaced")
        if final.exists():  # a forced rebuild moves the old entry aside, then drops it
            faults.point("cache.remove")
            with contextlib.suppress(FileNotFoundError):
                os.replace(final, old)
        faults.point("cache.commit")
        os.replace(staged, final)
        _remove(old)
        return Entry(key, final, meta)

    def discard(self, staged: Path) -> None:
        _remove(staged)


def _write_holder(path: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


def describe_holder(path: Path) -> str:
    """Who holds a lock, from its holder record; tolerates a missing or stale record."""
    try:
        record = json.loads(path.read_text())
        pid, host, since = int(record["pid"]), str(record["host"]), str(record["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "it left no holder record"
    gone = host == socket.gethostname() and not _alive(pid)
    return (f"pid {pid} on {host}, since {since}"
            + ("; that process is gone, so the record is stale" if gone else ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def _seal(out: Path) -> None:
    for path in list_files(out):
        path.chmod(0o444)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
