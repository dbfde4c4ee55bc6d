"""export.exporter end to end: digits_torch through torch's TorchScript exporter and its dynamo
exporter, in subprocesses, and the plan-time refusals of settings TorchScript cannot honour."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import onnx
import pytest

from tests.fixtures.cli import run_cli, run_record, statuses

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def _export_model(artifacts: Path) -> onnx.ModelProto:
    record = run_record(artifacts, "digits_torch")
    key = next(s["key"] for s in record["stages"] if s["stage"] == "export")
    return onnx.load(str(artifacts / ".cache" / "objects" / key[:2] / key[2:] / "out"
                         / "model.onnx"))


def test_torchscript_builds_validates_and_publishes_a_graph_of_its_own(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    script = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}",
                     "export.exporter=torchscript")
    assert script.code == 0, script.stderr
    assert set(statuses(run_record(artifacts, "digits_torch")).values()) == {"ran"}
    # torch deprecates this exporter on every call: not the user's news on each build
    assert "TorchScript-based ONNX export" not in script.stderr
    assert "DeprecationWarning" not in script.stderr
    manifest = json.loads((artifacts / "digits_torch" / "cpu" / "manifest.json").read_text())
    assert manifest["stages"]["validate@cpu"]["summary"]["accuracy_drop"] <= 0.02
    scripted = _export_model(artifacts)

    dynamo = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}")
    assert dynamo.code == 0, dynamo.stderr
    # the exporter is in export's key: switching back is a new export, not a cache hit
    assert statuses(run_record(artifacts, "digits_torch"))["export"] == "ran"
    traced = _export_model(artifacts)
    # TorchScript names nodes by module scope and writes an older IR; dynamo names them by op
    assert all(node.name.startswith("/") for node in scripted.graph.node)
    assert not any(node.name.startswith("/") for node in traced.graph.node)
    assert scripted.ir_version < traced.ir_version
    for model in (scripted, traced):
        assert [o.name for o in model.graph.output] == ["logits"]
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param == "batch"


def test_an_opset_torchscript_does_not_write_exits_2_naming_both_keys(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}",
                     "export.exporter=torchscript", "export.opset=21")
    assert result.code == 2
    assert "export.opset=21 with export.exporter=torchscript" in result.stderr
    assert "7-20" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.imported == []  # refused at plan time, before torch


def test_an_unknown_exporter_lists_the_choices(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}",
                     "export.exporter=onnxscript")
    assert result.code == 2
    assert "export.exporter" in result.stderr
    assert "dynamo" in result.stderr
    assert "torchscript" in result.stderr
