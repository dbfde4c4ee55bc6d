"""pipeline.noop.watch on real files: what counts as a change, and what only costs a re-hash."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from pipeline.noop import watch

if TYPE_CHECKING:
    from pathlib import Path


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "recipes" / "target").mkdir(parents=True)
    (tmp_path / "recipes" / "a.yaml").write_text("a: 1\n")
    (tmp_path / "recipes" / "target" / "cpu.yaml").write_text("device: cpu\n")
    old = time.time() - 10  # older than the clock's granularity: their stamps are trusted
    for path in (tmp_path / "recipes").rglob("*"):
        os.utime(path, (old, old))
    time.sleep(watch.RACY_NS / 1e9)
    return tmp_path / "recipes"


def test_an_unchanged_tree_has_no_change(tmp_path: Path) -> None:
    recorded = watch.take([str(_tree(tmp_path))])
    assert all(stamp for stamp, _ in recorded["files"].values())
    assert watch.first_change(recorded) is None


def test_a_rewrite_that_restores_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    recorded = watch.take([str(root)])
    path = root / "a.yaml"
    stat = path.stat()
    path.write_text("a: 2\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the ctime still moves
    assert watch.first_change(recorded) == str(path)


def test_same_bytes_under_a_new_stamp_are_restamped(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    recorded = watch.take([str(root)])
    os.utime(root / "a.yaml", (1, 1))
    time.sleep(watch.RACY_NS / 1e9)
    restamped: watch.Files = {}
    assert watch.first_change(recorded, restamped) is None
    assert list(restamped) == [str(root / "a.yaml")]
    assert restamped[str(root / "a.yaml")][-1] == recorded["files"][str(root / "a.yaml")][-1]


def test_a_new_or_removed_file_changes_its_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    recorded = watch.take([str(root), str(tmp_path / "not_yet")])
    (root / "target" / "gpu.yaml").write_text("device: gpu\n")
    assert watch.first_change(recorded) == str(root / "target")
    (root / "target" / "gpu.yaml").unlink()
    assert watch.first_change(recorded) is None
    (tmp_path / "not_yet").write_text("appeared\n")  # a path recorded as missing
    assert watch.first_change(recorded) == str(tmp_path / "not_yet")


def test_a_file_written_just_now_is_hashed_again_next_time(tmp_path: Path) -> None:
    (tmp_path / "fresh.txt").write_text("x\n")
    recorded = watch.take([str(tmp_path / "fresh.txt")])
    assert recorded["files"][str(tmp_path / "fresh.txt")][0] == []  # racy: no trusted stamp
    assert watch.first_change(recorded) is None
