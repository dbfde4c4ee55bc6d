"""The shared half of the cache: entries on object storage behind the local cache (fsspec).

Layout under ``run.cache_url``::

    meta/<key>.json                      {"upload": <id>, "meta": the entry's meta.json}
    files/<key>/<upload id>/<path>       the entry's output files, as that upload wrote them

S3 has no rename, so an entry becomes visible by its metadata object alone, written after every
file of its upload: a reader finds a complete entry or none. Each upload writes its files under
its own unique id and its metadata object names that id, so two machines uploading the same key
at once never mix their files; the last metadata object written wins, and each one describes
exactly the files it names. Every download is checked against the metadata (size and sha256 of
each file, the entry's digest) before the local cache takes it; anything wrong is a miss.

Credentials and endpoints come from where fsspec's implementation looks for them (for S3,
botocore: AWS_* variables, ~/.aws, instance roles; AWS_ENDPOINT_URL for a test server; FSSPEC_S3_*
for s3fs options), never from the recipe. fsspec and its implementations are imported only here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem, RecipeError, did_you_mean
from pipeline.hashing import sha256_file, tree_digest

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)
INSTALL = "pip install edgekiln[cluster]"
# botocore waits 60 s per connection attempt and retries; a dead endpoint should fail in seconds
S3_DEFAULTS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                 "retries": {"max_attempts": 3, "mode": "standard"}}}


class RemoteStore:
    """Entries under one fsspec URL: ``fetch`` (verified download) and ``upload``.

    The URL is checked when the store is made (a recipe error); the connection is opened and
    the bucket checked at the first use (``ready``), before the first download or build, so a
    rebuild that finds everything in the local cache never pays for importing s3fs.
    """

    def __init__(self, url: str) -> None:
        check_url(url)
        self.url = url
        self.fs: AbstractFileSystem | None = None  # set by ready()
        self.root = ""
        self.local = False  # a directory tree (file://): it has directories and a rename
        self._opening = threading.Lock()
        self._problem: str | None = None  # why the store cannot be used, once found
        # keys whose remote entry was found damaged or out of date: their rebuild replaces it
        self.replace: set[str] = set()
        self.read_only: str | None = None  # why uploads stopped (access denied), if they did

    def ready(self) -> None:
        """Connect once and check the bucket: EnvironmentProblem (exit 5) if it cannot be used."""
        with self._opening:
            if self._problem is not None:
                raise EnvironmentProblem(self._problem)
            if self.fs is not None:
                return
            fs, root = _filesystem(self.url)
            try:
                _probe(fs, root.rstrip("/"), f"run.cache_url={self.url}")
            except EnvironmentProblem as exc:
                self._problem = str(exc)
                raise
            self.fs, self.root = fs, root.rstrip("/")
            self.local = bool(getattr(fs, "local_file", False))

    def _meta_path(self, key: str) -> str:
        return f"{self.root}/meta/{key}.json"

    def _files_path(self, key: str, upload: str) -> str:
        return f"{self.root}/files/{key}/{upload}"

    def fetch(self, key: str, out: Path) -> dict[str, Any] | None:
        """Download the entry ``key`` into ``out`` and return its meta; None is a miss.

        A damaged or partial remote entry is logged and is a miss (its key goes into
        ``replace``, so the rebuild's upload replaces it); a network error is a miss too.
        """
        self.ready()
        try:
            record = json.loads(self.fs.cat_file(self._meta_path(key)))  # type: ignore[union-attr]
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreadable JSON, or the implementation's network error
            return self._miss(key, f"its metadata object cannot be read ({exc})")
        meta, damage = _check_record(record, key)
        if damage is None:
            damage = self._download(key, record["upload"], meta, out)
        return meta if damage is None else self._miss(key, damage)

    def _download(self, key: str, upload: str, meta: dict[str, Any], out: Path) -> str | None:
        names = sorted(meta["files"])
        base = self._files_path(key, upload)
        local = [out / name for name in names]
        for path in local:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if names:
                self.fs.get([f"{base}/{name}" for name in names], [str(p) for p in local])
        except Exception as exc:  # a file is missing (a partial upload) or the network failed
            return f"its files cannot be downloaded ({type(exc).__name__}: {exc})"
        for name, path in zip(names, local, strict=True):
            size = path.stat().st_size if path.is_file() else None
            if size != meta["sizes"][name]:
                return f"{name} is {size} bytes, its metadata records {meta['sizes'][name]}"
            if sha256_file(path) != meta["files"][name]:
                return f"{name} does not match the sha256 its metadata records"
        return None

    def _miss(self, key: str, damage: str) -> None:
        log.warning("shared cache entry %s at %s is damaged: %s; rebuilding it", key[:12],
                    self.url, damage)
        self.replace.add(key)

    def upload(self, key: str, out: Path, meta: dict[str, Any]) -> None:
        """Upload a committed local entry, unless the store has it (or had it damaged).

        A failed upload is logged and leaves the entry local only: the build itself is done
        and correct, and other machines simply build it too.
        """
        if self.read_only is not None:
            return
        self.ready()
        try:
            if key not in self.replace and self.fs.exists(self._meta_path(key)):
                return
            self._put(key, out, meta)
            self.replace.discard(key)
        except PermissionError as exc:
            self.read_only = str(exc)
            log.warning("cannot upload to the shared cache %s (access denied: %s); this run "
                        "only reads it", self.url, exc)
        except Exception as exc:  # the implementation's network errors: stay local
            log.warning("uploading cache entry %s to %s failed (%s: %s); it stays local only",
                        key[:12], self.url, type(exc).__name__, exc)

    def _put(self, key: str, out: Path, meta: dict[str, Any]) -> None:
        self.put_meta(key, self.put_files(key, out, meta), meta)

    def put_files(self, key: str, out: Path, meta: dict[str, Any]) -> str:
        """The first half of an upload: the files, under a new upload id (returned)."""
        upload = uuid.uuid4().hex
        base = self._files_path(key, upload)
        names = sorted(meta["files"])
        if self.local:  # a directory tree needs its directories (a bucket has none)
            for parent in {f"{base}/{name}".rsplit("/", 1)[0] for name in names} | {
                    f"{self.root}/meta"}:
                self.fs.makedirs(parent, exist_ok=True)
        if names:
            self.fs.put([str(out / name) for name in names], [f"{base}/{name}" for name in names])
        return upload

    def put_meta(self, key: str, upload: str, meta: dict[str, Any]) -> None:
        """The second half: the metadata object naming ``upload``, which makes it visible."""
        body = json.dumps({"upload": upload, "meta": meta}, indent=1, sort_keys=True).encode()
        final = self._meta_path(key)
        if not self.local:
            self.fs.pipe_file(final, body)  # one PUT: the object appears whole or not at all
            return
        partial = f"{final}.{upload}.partial"  # a directory tree: write aside, then rename
        self.fs.pipe_file(partial, body)
        self.fs.mv(partial, final)


def _check_record(record: Any, key: str) -> tuple[dict[str, Any], str | None]:
    """The entry's meta from a metadata object, and what is wrong with it (None: nothing)."""
    meta = record.get("meta") if isinstance(record, dict) else None
    if not isinstance(meta, dict) or not isinstance(record.get("upload"), str):
        return {}, "its metadata object has no entry"
    files, sizes = meta.get("files"), meta.get("sizes")
    if (meta.get("key") != key or not isinstance(files, dict) or not isinstance(sizes, dict)
            or set(files) != set(sizes)):
        return meta, "its metadata object does not describe this entry"
    if tree_digest(files) != meta.get("digest"):
        return meta, "its metadata's digest does not match its list of files"
    if not all(_safe_name(name) for name in files) or not _safe_name(record["upload"]):
        return meta, "its metadata names a file outside the entry"
    return meta, None


def _safe_name(name: str) -> bool:
    """A relative path that stays inside its directory (the metadata comes from elsewhere)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and not {"..", "."} & set(parts)


def _probe(fs: AbstractFileSystem, root: str, where: str) -> None:
    try:
        if getattr(fs, "local_file", False):  # a directory tree: make it, as the local cache does
            fs.makedirs(root, exist_ok=True)
        else:  # a bucket: it must exist; a prefix is only a name and needs nothing
            fs.info(root.split("/", 1)[0])
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{where}: the bucket does not exist ({exc}); create it "
                                 "or point run.cache_url at an existing one") from exc
    except PermissionError as exc:
        raise EnvironmentProblem(
            f"{where}: access denied ({exc}); the credentials come from the environment "
            "(for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws or the "
            "machine's role), never from the recipe") from exc
    except Exception as exc:  # each fsspec implementation raises its own network errors
        raise EnvironmentProblem(
            f"{where}: cannot be reached ({type(exc).__name__}: {exc}); check the network "
            "and the endpoint (AWS_ENDPOINT_URL for an S3-compatible server)") from exc


def check_url(url: str) -> None:
    """RecipeError unless fsspec here has an implementation for ``url`` (imports none)."""
    protocol, _, path = url.partition("://")
    if "://" not in url:
        raise RecipeError(f"run.cache_url={url} is not a URL: expected one such as "
                          "s3://bucket/prefix, gs://bucket/prefix or file:///path")
    if not path.strip("/"):
        raise RecipeError(f"run.cache_url={url} names no bucket or directory")
    try:
        import fsspec
        from fsspec.registry import known_implementations, registry
    except ImportError as exc:
        raise RecipeError(f"run.cache_url={url} needs fsspec, which is not installed: "
                          f"{INSTALL}") from exc
    if protocol not in fsspec.available_protocols():
        raise RecipeError(f"run.cache_url={url}: fsspec knows no protocol '{protocol}'."
                          + did_you_mean(protocol, fsspec.available_protocols())
                          + " Expected s3://, gs://, file:// or another fsspec protocol")
    known = known_implementations.get(protocol, {})
    module = known.get("class", "fsspec").split(".", 1)[0]
    if protocol not in registry and importlib.util.find_spec(module) is None:
        raise RecipeError(f"run.cache_url={url}: fsspec's {protocol}:// needs the package "
                          f"{module}, which is not installed ({known.get('err', '')}); for "
                          f"s3:// and file://: {INSTALL}")


def _filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """fsspec's file system and root path for a checked ``url`` (imports its package)."""
    import fsspec
    from fsspec.core import url_to_fs

    options: dict[str, Any] = {"skip_instance_cache": True}  # each run reads the env afresh
    if url.startswith(("s3://", "s3a://")) and "config_kwargs" not in fsspec.config.conf.get(
            "s3", {}):
        options.update(S3_DEFAULTS)
    try:
        return url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # check_url passed: a broken installation
        raise RecipeError(f"run.cache_url={url}: fsspec cannot open it ({exc}); "
                          f"{INSTALL}") from exc
