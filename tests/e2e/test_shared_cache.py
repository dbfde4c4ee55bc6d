"""run.cache_url through the CLI: digits_torch built in one working directory against a real S3
server on loopback (moto's), then in another with an empty local cache, which reads every stage
from the bucket and publishes the same bundle; and an unreachable bucket (exit 5)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import ROOT, run_cli, run_record, statuses
from tests.fixtures.s3_server import aws_env, free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.s3_server import S3Bucket

pytestmark = pytest.mark.slow


def _workdir(path: Path) -> Path:
    # the checkpoint's path is part of the export's key: the same relative path in each folder
    path.mkdir()
    shutil.copy(ROOT / "recipes" / "zoo" / "digits_cnn.pt", path / "digits_cnn.pt")
    return path


def _build(root: Path, url: str, env: dict[str, str]) -> dict:
    result = run_cli("recipe=digits_torch", "run.artifacts_dir=artifacts",
                     "model.checkpoint=digits_cnn.pt", f"run.cache_url={url}",
                     "run.progress=false", cwd=root, env=env)
    assert result.code == 0, result.stderr[-3000:]
    return run_record(root / "artifacts", "digits_torch")


def _bundle_files(root: Path) -> dict[str, bytes]:
    bundle = root / "artifacts" / "digits_torch" / "cpu"
    return {p.relative_to(bundle).as_posix(): p.read_bytes()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def test_a_second_machine_gets_every_stage_from_the_bucket(s3_bucket: S3Bucket,
                                                           tmp_path: Path) -> None:
    url = s3_bucket.url("team/cache")
    first = _build(_workdir(tmp_path / "a"), url, s3_bucket.env)
    assert set(statuses(first).values()) == {"ran"}
    assert not any("from" in stage for stage in first["stages"])

    second_dir = _workdir(tmp_path / "b")
    second = _build(second_dir, url, s3_bucket.env)
    assert set(statuses(second).values()) == {"cached"}
    assert all(stage.get("from") == "remote" for stage in second["stages"])
    assert [s["key"] for s in second["stages"]] == [s["key"] for s in first["stages"]]
    assert _bundle_files(second_dir) == _bundle_files(tmp_path / "a")
    # the fetched entries are now local: a third run reads nothing from the bucket
    third = _build(second_dir, url, s3_bucket.env)
    assert not any("from" in stage for stage in third["stages"])


def test_an_unreachable_bucket_stops_the_run_before_any_build(tmp_path: Path) -> None:
    work = _workdir(tmp_path / "w")
    env = aws_env(f"http://127.0.0.1:{free_port()}", tmp_path)  # nothing listens there
    result = run_cli("recipe=digits_torch", "run.artifacts_dir=artifacts",
                     "model.checkpoint=digits_cnn.pt", "run.cache_url=s3://nightly/cache",
                     cwd=work, env=env, timeout=120)
    assert result.code == 5, result.stderr
    assert "edgekiln: environment: stage 'export': run.cache_url=s3://nightly/cache: cannot " \
        "be reached" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ran" not in statuses(run_record(work / "artifacts", "digits_torch")).values()
    assert not (work / "artifacts" / ".cache" / "objects").exists()
