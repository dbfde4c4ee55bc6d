"""resnet_multi end to end: one export, four target bundles, OpenVINO validated for real."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import run_cli, run_record, statuses

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow
TARGETS = ("jetson_orin", "intel_cpu_openvino", "x86_cpu", "android_nnapi")


def test_resnet_multi_builds_a_bundle_per_target(tmp_path: Path) -> None:
    result = run_cli("recipe=resnet_multi", f"run.artifacts_dir={tmp_path}",
                     "quantize.calibration.samples=16", "validate.samples=16",
                     "dataset.calibration_size=16", "dataset.evaluation_size=16")
    assert result.code == 0, result.stderr
    record = run_record(tmp_path, "resnet_multi")
    got = statuses(record)
    assert [s["stage"] for s in record["stages"]].count("export") == 1
    assert got["export"] == got["optimize"] == "ran"
    # x86_cpu, OpenVINO and NNAPI ask for the same static candidate: it runs once; each
    # target's auto choice times on its own runtime, so that runs per target
    assert sorted(got[f"quantize.static@{t}"] for t in TARGETS) == ["cached", "cached", "ran",
                                                                     "ran"]
    assert [got[f"quantize@{t}"] for t in TARGETS] == ["ran"] * 4
    manifests = {t: json.loads((tmp_path / "resnet_multi" / t / "manifest.json").read_text())
                 for t in TARGETS}
    openvino = manifests["intel_cpu_openvino"]["stages"]["validate@intel_cpu_openvino"]["summary"]
    assert openvino["validated_on_target_ep"] is True
    assert openvino["ran_on"][0] == "OpenVINOExecutionProvider"
    for target in ("jetson_orin", "android_nnapi"):
        validation = manifests[target]["stages"][f"validate@{target}"]["summary"]
        assert validation["validated_on_target_ep"] is False
        assert "not available" in validation["not_validated_reason"]
    assert (tmp_path / "resnet_multi" / "android_nnapi" / "model.ort").is_file()
