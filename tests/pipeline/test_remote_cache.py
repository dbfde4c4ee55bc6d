"""The shared cache behind the local one (run.cache_url), against a real S3 server on loopback
(moto's, tests/fixtures/s3_server.py) and a file:// directory: round trips, partial and
damaged uploads, concurrent writers of one key, and the errors a user sees."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import pytest

from pipeline.cache import Cache, open_cache
from pipeline.errors import EnvironmentProblem, RecipeError
from tests.fixtures.s3_server import aws_env, free_port, start_moto

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.remote_cache import RemoteStore
    from tests.fixtures.s3_server import S3Bucket

KEY = "cd" + "1" * 62
FILES = {"model.onnx": b"weights " * 1000, "sub/report.json": b'{"ok": true}', "empty": b""}


def _commit(cache: Cache, key: str = KEY, files: dict[str, bytes] = FILES) -> None:
    staged = cache.staging(key)
    for name, data in files.items():
        (staged / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / "out" / name).write_bytes(data)
    cache.commit(key, staged, {"node": "export"})


def _contents(cache: Cache, key: str = KEY) -> dict[str, bytes] | None:
    entry = cache.lookup(key)
    if entry is None:
        return None
    return {p.relative_to(entry.out).as_posix(): p.read_bytes()
            for p in sorted(entry.out.rglob("*")) if p.is_file()}


def _cache(root: Path, url: str) -> Cache:
    return open_cache({"cache_dir": str(root), "cache_url": url})


def _record(store: RemoteStore, key: str = KEY) -> dict:
    return json.loads(store.fs.cat_file(f"{store.root}/meta/{key}.json"))


def test_an_entry_committed_on_one_machine_is_fetched_verified_on_another(
        s3_bucket: S3Bucket, tmp_path: Path) -> None:
    writer = _cache(tmp_path / "a", s3_bucket.url())
    _commit(writer)
    reader = _cache(tmp_path / "b", s3_bucket.url())
    fetched = reader.lookup(KEY)
    assert fetched is not None
    assert fetched.remote
    assert fetched.digest == writer.lookup(KEY).digest  # type: ignore[union-attr]
    assert _contents(reader) == FILES
    again = reader.lookup(KEY)  # now a plain local entry, read-only like any other
    assert again is not None
    assert not again.remote
    assert (again.out / "model.onnx").stat().st_mode & 0o222 == 0
    assert not list((tmp_path / "b" / "tmp").iterdir())
    record = _record(reader.remote)  # type: ignore[arg-type]
    names = reader.remote.fs.find(f"{s3_bucket.name}/cache/files/{KEY}")  # type: ignore[union-attr]
    assert sorted(n.rsplit(f"{record['upload']}/", 1)[1] for n in names) == sorted(FILES)


def test_files_without_their_metadata_object_are_a_miss(s3_bucket: S3Bucket,
                                                        tmp_path: Path) -> None:
    writer = _cache(tmp_path / "a", s3_bucket.url())
    _commit(writer)
    store = writer.remote
    store.fs.rm(f"{store.root}/meta/{KEY}.json")  # type: ignore[union-attr]  # upload cut short
    assert store.fs.find(f"{store.root}/files/{KEY}")  # type: ignore[union-attr]
    reader = _cache(tmp_path / "b", s3_bucket.url())
    assert reader.lookup(KEY) is None
    assert not (tmp_path / "b" / "objects").exists()


def _flip_a_byte(store: RemoteStore, path: str) -> None:
    data = bytearray(store.fs.cat_file(path))
    data[len(data) // 2] ^= 1
    store.fs.pipe_file(path, bytes(data))


@pytest.mark.parametrize("damage", [
    pytest.param(_flip_a_byte, id="flipped byte"),
    pytest.param(lambda store, path: store.fs.pipe_file(path, b"weights"), id="truncated"),
    pytest.param(lambda store, path: store.fs.rm(path), id="file missing"),
])
def test_a_damaged_remote_entry_is_a_miss_and_the_rebuild_replaces_it(
        s3_bucket: S3Bucket, tmp_path: Path, damage, caplog: pytest.LogCaptureFixture) -> None:
    writer = _cache(tmp_path / "a", s3_bucket.url())
    _commit(writer)
    store = writer.remote
    first = _record(store)  # type: ignore[arg-type]
    damage(store, f"{store.root}/files/{KEY}/{first['upload']}/model.onnx")  # type: ignore[union-attr]
    reader = _cache(tmp_path / "b", s3_bucket.url())
    with caplog.at_level(logging.WARNING):
        assert reader.lookup(KEY) is None
    assert "is damaged" in caplog.text
    assert KEY[:12] in caplog.text
    assert not (tmp_path / "b" / "objects").exists()  # nothing unverified was kept
    _commit(reader)  # the rebuild
    assert _record(reader.remote)["upload"] != first["upload"]  # type: ignore[arg-type]
    assert _contents(_cache(tmp_path / "c", s3_bucket.url())) == FILES


def test_a_second_writer_skips_the_upload_when_the_entry_exists(s3_bucket: S3Bucket,
                                                                tmp_path: Path) -> None:
    first = _cache(tmp_path / "a", s3_bucket.url())
    _commit(first)
    upload = _record(first.remote)["upload"]  # type: ignore[arg-type]
    _commit(_cache(tmp_path / "b", s3_bucket.url()), files={"model.onnx": b"other bytes"})
    assert _record(first.remote)["upload"] == upload  # type: ignore[arg-type]


def test_concurrent_writers_of_one_key_both_succeed_and_readers_see_one_whole_entry(
        s3_bucket: S3Bucket, tmp_path: Path) -> None:
    # the same key built twice with different bytes (a non-deterministic export), at once
    versions = [{"model.onnx": bytes([n]) * 200_000, "sub/report.json": b"%d" % n}
                for n in range(2)]
    seen: list[dict[str, bytes] | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def write(n: int) -> None:
        try:
            start.wait()
            _commit(_cache(tmp_path / f"w{n}", s3_bucket.url()), files=versions[n])
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    def read() -> None:
        start.wait()
        deadline = time.monotonic() + 30
        for n in range(1000):
            seen.append(_contents(_cache(tmp_path / f"r{n}", s3_bucket.url())))
            if (len(seen) > 3 and seen[-1] is not None) or time.monotonic() > deadline:
                return

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert all(got is None or got in versions for got in seen)
    assert seen[-1] in versions
    assert _contents(_cache(tmp_path / "late", s3_bucket.url())) in versions


def test_an_upload_under_way_never_changes_the_entry_readers_see(s3_bucket: S3Bucket,
                                                                  tmp_path: Path) -> None:
    # two writers past the existence check at once: B uploads its files while A's entry is
    # live; A's entry stays whole until B's metadata object replaces it, then B's is whole
    a, b = (_cache(tmp_path / name, s3_bucket.url()) for name in "ab")
    _commit(a)
    other = {"model.onnx": b"other bytes", "sub/report.json": b"{}", "empty": b""}
    _commit(b, files=other)  # built locally; its own upload is skipped: A's entry exists
    entry = b.lookup(KEY)
    assert entry is not None
    upload = b.remote.put_files(KEY, entry.out, entry.meta)  # type: ignore[union-attr]
    assert _contents(_cache(tmp_path / "r1", s3_bucket.url())) == FILES
    b.remote.put_meta(KEY, upload, entry.meta)  # type: ignore[union-attr]
    assert _contents(_cache(tmp_path / "r2", s3_bucket.url())) == other


def test_a_file_url_is_a_shared_cache_too(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    _commit(_cache(tmp_path / "a", url))
    assert list((tmp_path / "shared" / "meta").iterdir()) == [tmp_path / "shared" / "meta"
                                                               / f"{KEY}.json"]
    reader = _cache(tmp_path / "b", url)
    assert _contents(reader) == FILES
    assert reader.lookup(KEY) is not None


def test_metadata_naming_a_path_outside_the_entry_is_a_miss(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    _commit(_cache(tmp_path / "a", url))
    meta_path = tmp_path / "shared" / "meta" / f"{KEY}.json"
    record = json.loads(meta_path.read_text())
    files = {"../../../escaped": hashlib.sha256(b"x").hexdigest()}
    record["meta"].update(files=files, sizes={"../../../escaped": 1})
    from pipeline.hashing import tree_digest

    record["meta"]["digest"] = tree_digest(files)
    meta_path.write_text(json.dumps(record))
    assert _cache(tmp_path / "b", url).lookup(KEY) is None
    assert not list(tmp_path.rglob("escaped"))


@pytest.mark.parametrize(("url", "says"), [
    pytest.param("bucket/prefix", "is not a URL", id="no protocol"),
    pytest.param("fille:///srv/cache", "knows no protocol 'fille'. Did you mean 'file'?",
                 id="typo"),
    pytest.param("s3://", "names no bucket", id="no bucket"),
])
def test_a_wrong_url_is_a_recipe_error_naming_the_key(url: str, says: str,
                                                      tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"run\.cache_url") as caught:
        _cache(tmp_path, url)
    assert says in str(caught.value)


def test_a_protocol_without_its_package_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    import importlib.util

    protocol = next(p for p, package in (("gs", "gcsfs"), ("az", "adlfs"), ("oci", "ocifs"))
                    if importlib.util.find_spec(package) is None)
    with pytest.raises(RecipeError, match=r"pip install edgekiln\[cluster\]") as caught:
        _cache(tmp_path, f"{protocol}://bucket/prefix")
    assert f"run.cache_url={protocol}://bucket/prefix" in str(caught.value)


def test_a_missing_bucket_is_a_machine_problem(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="bucket does not exist"):
        _cache(tmp_path, "s3://no-such-bucket/p").lookup(KEY)


def _unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in aws_env(f"http://127.0.0.1:{free_port()}", tmp_path).items():
        monkeypatch.setenv(name, value)  # nothing listens on that port


def test_an_unreachable_endpoint_fails_in_seconds_before_any_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unreachable(tmp_path, monkeypatch)
    cache = _cache(tmp_path, "s3://bucket/p")
    start = time.monotonic()
    with pytest.raises(EnvironmentProblem, match="cannot be reached"):
        cache.lookup(KEY)
    assert time.monotonic() - start < 30
    with pytest.raises(EnvironmentProblem, match=r"run\.cache_url=s3://bucket/p"):
        cache.staging(KEY)  # a forced build, which looks nothing up, is stopped too
    assert not (tmp_path / "tmp").exists()


def test_a_rebuild_that_finds_everything_locally_never_opens_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _commit(Cache(tmp_path))
    _unreachable(tmp_path, monkeypatch)
    cache = _cache(tmp_path, "s3://bucket/p")
    assert cache.lookup(KEY) is not None
    assert cache.remote.fs is None  # type: ignore[union-attr]


def test_denied_access_is_a_machine_problem_naming_the_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_moto(deny_all=True) as server:
        for name, value in aws_env(server.endpoint, tmp_path).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(EnvironmentProblem, match="access denied") as caught:
            _cache(tmp_path, "s3://bucket/p").lookup(KEY)
    assert "run.cache_url=s3://bucket/p" in str(caught.value)
    assert "never from the recipe" in str(caught.value)
