"""Read-only and full directories, made real with tmpfs mounts: exit 5 naming the path.

As root, chmod does not stop writes, so the test mounts a tmpfs (read-only, or 1 MiB) and
unmounts it afterwards; without the right to mount, these tests skip.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import run_cli, run_record, statuses

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(name, size="1M")`` a tmpfs at ``tmp_path/name``; ``remount_ro(path)``."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1M") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(point)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def _fill(point: Path, leave: int) -> None:
    """Fill the file system at ``point`` until only ``leave`` bytes are free."""
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(point / "filler", (point / "filler").stat().st_size - leave)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("edgekiln: ")]
    return line


def test_read_only_artifacts_dir_exits_5_naming_it(tmpfs: Callable[..., Path]) -> None:
    artifacts = tmpfs("artifacts")
    _read_only(artifacts)
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}")
    assert result.code == 5, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith("edgekiln: environment: ")
    assert str(artifacts) in line
    assert "Read-only file system (EROFS)" in line


def test_full_artifacts_dir_is_refused_before_any_stage(tmpfs: Callable[..., Path]) -> None:
    artifacts = tmpfs("artifacts", "1M")
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}")
    assert result.code == 5, result.stderr
    line = _one_error_line(result.stderr)
    assert f"the artifacts dir {artifacts / 'digits_torch'} has" in line
    assert "run.min_free_mb" in line
    assert not (artifacts / ".cache").exists()  # no stage ran
    assert result.imported == []


def test_disk_full_during_a_stage_reports_that_stage(tmpfs: Callable[..., Path]) -> None:
    artifacts = tmpfs("artifacts", "1M")
    _fill(artifacts, leave=48 * 1024)  # the pre-flight passes (min_free_mb=0), export does not
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}",
                     "run.progress=false", "run.min_free_mb=0")
    assert result.code == 5, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith("edgekiln: environment: stage 'export': ")
    assert "No space left on device (ENOSPC)" in line
    leftovers = [p for p in artifacts.rglob("*") if p.name.endswith((".tmp", ".partial"))
                 or p.parent.name == "tmp"]
    assert leftovers == []


def test_read_only_cache_serves_a_cached_run_and_refuses_a_build(
        tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    shared = tmpfs("shared", "200M")
    built = run_cli("recipe=digits_torch", f"run.artifacts_dir={shared}", "run.progress=false")
    assert built.code == 0, built.stderr
    _read_only(shared)
    cache = f"run.cache_dir={shared / '.cache'}"
    served = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path / 'a'}", cache,
                     "run.progress=false")
    assert served.code == 0, served.stderr
    assert "everything is cached, so this run only reads it" in served.stderr
    assert set(statuses(run_record(tmp_path / "a", "digits_torch")).values()) == {"cached"}
    assert (tmp_path / "a" / "digits_torch" / "cpu" / "model.onnx").is_file()
    changed = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path / 'b'}", cache,
                      "quantize.calibration.samples=32")
    assert changed.code == 5, changed.stderr
    line = _one_error_line(changed.stderr)
    assert f"the cache dir {shared / '.cache'} is not writable" in line
    # and publishing into the read-only folder itself, everything cached, is refused too
    republish = run_cli("recipe=digits_torch", f"run.artifacts_dir={shared}")
    assert republish.code == 5, republish.stderr
    assert str(shared) in _one_error_line(republish.stderr)


def test_a_failure_after_the_stage_error_does_not_replace_it(tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "whole_module.pt"
    torch.save(torch.nn.Linear(2, 2), checkpoint)  # refused by export: exit 3
    cache = tmp_path / "cache"
    (cache / "state.json").mkdir(parents=True)  # saving the digest memo then fails
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path / 'a'}",
                     f"run.cache_dir={cache}", f"model.checkpoint={checkpoint}")
    assert result.code == 3, result.stderr
    line = _one_error_line(result.stderr)
    assert "weights_only" in line
    assert "publishing also failed" in result.stderr
    assert [p.name for p in cache.iterdir() if p.name.startswith("state.json")] == ["state.json"]
