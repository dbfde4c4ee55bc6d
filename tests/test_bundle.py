"""Publishing bundles: a killed publish never loses the last good bundle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.bundle import _recover

if TYPE_CHECKING:
    from pathlib import Path


def test_publish_recovers_a_bundle_retired_by_a_killed_run(tmp_path: Path) -> None:
    retired = tmp_path / ".cpu.retired.4242"
    retired.mkdir()
    (retired / "model.onnx").write_text("last good")
    (tmp_path / ".cpu.staging.4242").mkdir()
    _recover(tmp_path)
    assert (tmp_path / "cpu" / "model.onnx").read_text() == "last good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu"]
