"""The content-addressed store: atomic commits, damaged entries, concurrent builders."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cache import Cache
from pipeline.hashing import RACY_NS, DigestState, canonical_json, digest_json, tree_digest

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
    assert entry.meta["sizes"] == {"model.onnx": len(b"weights")}
    assert entry.digest == tree_digest(entry.meta["files"])
    assert not list((tmp_path / "tmp").iterdir())


def digest_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_damaged_meta_is_a_miss_and_is_quarantined(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    _stage_and_commit(cache, KEY, "weights")
    meta = cache.lookup(KEY).path / "meta.json"  # type: ignore[union-attr]
    meta.write_text("{ truncated")
    assert cache.lookup(KEY) is None
    assert not meta.parent.exists()
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert (moved / "meta.json").read_text() == "{ truncated"


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



def _rewrite(path: Path, data: bytes) -> None:
    """Write ``data`` into ``path`` in place (same inode), as a user with write access can."""
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(data)
    path.chmod(0o444)


def _flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    _rewrite(path, bytes(data))


@pytest.mark.parametrize("damage", [
    pytest.param(_flip_first_byte, id="flipped byte"),
    pytest.param(lambda p: _rewrite(p, b""), id="zero bytes"),
    pytest.param(lambda p: p.unlink(), id="deleted blob"),
    pytest.param(lambda p: (p.parent.parent / "meta.json").unlink(), id="missing meta"),
    pytest.param(lambda p: (p.parent / "extra.bin").write_bytes(b"x"), id="extra file"),
])
def test_a_damaged_entry_is_quarantined_with_a_warning_naming_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage) -> None:
    cache = Cache(tmp_path)
    _stage_and_commit(cache, KEY, "weights")
    assert cache.lookup(KEY) is not None  # verified once: its digests are memoized now
    damage(tmp_path / "objects" / "ab" / ("0" * 62) / "out" / "model.onnx")
    with caplog.at_level(logging.WARNING, logger="pipeline.cache"):
        assert cache.lookup(KEY) is None
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert moved.name.startswith(f"{KEY}-")
    assert not (tmp_path / "objects" / "ab" / ("0" * 62)).exists()
    why = (moved / "why.txt").read_text()
    assert ("out/" in why) or ("meta.json" in why)
    assert KEY[:12] in caplog.text
    assert str(moved) in caplog.text
    assert KEY in cache.repaired
    _stage_and_commit(cache, KEY, "weights")  # the rebuild
    assert cache.lookup(KEY) is not None


def test_a_same_size_rewrite_is_caught_by_the_digest(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    _stage_and_commit(cache, KEY, "weights")
    blob = tmp_path / "objects" / "ab" / ("0" * 62) / "out" / "model.onnx"
    time.sleep(RACY_NS / 1e9 + 0.05)
    assert cache.lookup(KEY) is not None  # memoized, no longer racy
    stat = blob.stat()
    _rewrite(blob, b"WEIGHTS")
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.lookup(KEY) is None


def test_digest_memo_key_holds_ctime_so_a_restored_mtime_is_rehashed(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1234")
    time.sleep(RACY_NS / 1e9 + 0.05)
    state = DigestState(tmp_path / "state.json")
    assert state.file(weights) == digest_of(b"1234")
    (memo,) = state._memo.values()
    assert memo[:4] == [weights.stat().st_ino, 4, weights.stat().st_mtime_ns,
                        weights.stat().st_ctime_ns]
    before = weights.stat()
    with weights.open("r+b") as handle:  # same inode, same size
        handle.write(b"4321")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_mtime_ns == before.st_mtime_ns
    assert state.file(weights) == digest_of(b"4321")


def test_a_file_changed_just_now_is_hashed_but_not_memoized(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1234")
    state = DigestState(tmp_path / "state.json")
    assert state.file(weights) == digest_of(b"1234")
    assert state._memo == {}  # a write in the same clock tick would not move the stamp


_HOLD = """
import sys, time
from pathlib import Path
from pipeline.cache import Cache
with Cache(Path(sys.argv[1])).lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""

_WAIT = """
import logging, sys
from pathlib import Path
from pipeline.cache import Cache
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with Cache(Path(sys.argv[1])).lock(sys.argv[2], "stage 'export'"):
    print("acquired", flush=True)
"""


def test_a_run_waiting_for_a_lock_says_who_holds_it(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), KEY, "3"],
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    record = json.loads((tmp_path / "locks" / f"{KEY}.holder").read_text())
    assert record["pid"] == holder.pid
    waiter = subprocess.run([sys.executable, "-c", _WAIT, str(tmp_path), KEY], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    holder.wait(30)
    assert f"stage 'export' waits for cache key {KEY[:12]}" in waiter.stderr
    assert f"pid {holder.pid} on " in waiter.stderr
    assert "since " in waiter.stderr
    assert waiter.stdout == "acquired\n"  # and it kept waiting until the holder let go
    assert not (tmp_path / "locks" / f"{KEY}.holder").exists()


def test_a_stale_holder_record_is_named_stale(tmp_path: Path) -> None:
    from pipeline.cache import describe_holder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record = tmp_path / "k.holder"

    record.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                  "since": "2026-01-01 00:00:00 UTC"}))
    assert "stale" in describe_holder(record)
    record.write_text("{ half")
    assert describe_holder(record) == "it left no holder record"
