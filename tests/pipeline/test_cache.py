"""The content-addressed store: atomic commits, damaged entries, concurrent builders."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from pipeline.cache import Cache
from pipeline.hashing import DigestState, canonical_json, digest_json, tree_digest

KEY = "ab" + "0" * 62


def _stage_and_commit(cache: Cache, key: str, text: str) -> None:
    staged = cache.staging(key)
    (staged / "out" / "model.onnx").write_text(text)
    cache.commit(key, staged, {"node": "export"})


def test_commit_makes_a_complete_read_only_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert cache.lookup(KEY) is None
    _stage_and_commit(cache, KEY, "weights")
    entry = cache.lookup(KEY)
    assert entry is not None
    assert entry.path == tmp_path / "objects" / "ab" / ("0" * 62)
    assert (entry.out / "model.onnx").read_text() == "weights"
    assert (entry.out / "model.onnx").stat().st_mode & 0o222 == 0
    assert entry.meta["files"] == {"model.onnx": digest_of(b"weights")}
    assert entry.digest == tree_digest(entry.meta["files"])
    assert not list((tmp_path / "tmp").iterdir())


def digest_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_damaged_meta_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    _stage_and_commit(cache, KEY, "weights")
    meta = cache.lookup(KEY).path / "meta.json"  # type: ignore[union-attr]
    meta.write_text("{ truncated")
    assert cache.lookup(KEY) is None
    assert not meta.parent.exists()


def test_a_killed_build_leaves_nothing_that_looks_like_an_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    staged = cache.staging(KEY)
    (staged / "out" / "model.onnx").write_text("half")  # the process dies here
    assert cache.lookup(KEY) is None
    fresh = cache.staging(KEY)  # the next builder clears the leftovers
    assert not staged.exists()
    assert fresh.exists()


def test_digest_state_memoizes_by_stat_and_notices_changes(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1234")
    state = DigestState(tmp_path / "state.json")
    first = state.file(weights)
    state.save()
    assert DigestState(tmp_path / "state.json").file(weights) == first
    time.sleep(0.01)
    weights.write_bytes(b"12345")
    assert state.file(weights) == digest_of(b"12345") != first


def test_canonical_json_ignores_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert digest_json({"b": 1, "a": 2}) == digest_json({"a": 2, "b": 1})


def _build_once(root: str, log: str) -> None:
    cache = Cache(Path(root))
    with cache.lock(KEY):
        if cache.lookup(KEY) is None:
            with open(log, "a") as handle:
                handle.write("built\n")
            time.sleep(0.3)
            _stage_and_commit(cache, KEY, "weights")


def test_two_processes_build_a_key_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_build_once, args=(str(tmp_path / "c"), str(log)))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert log.read_text() == "built\n"
    meta = json.loads((Cache(tmp_path / "c").lookup(KEY).path / "meta.json").read_text())  # type: ignore[union-attr]
    assert meta["key"] == KEY

