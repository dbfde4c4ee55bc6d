"""The package stage on real exported models, and the loader it ships, run as a device would."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from digits_models import INPUTS, DigitsModels, digits_models, export_torch, mlp

from stages.package import TEMPLATE, package
from stages.support.load_model_template import check_feed, random_feed
from stages.support.onnx_files import EXTERNAL_DATA_THRESHOLD

if TYPE_CHECKING:
    from pathlib import Path

CPU = {"name": "CPUExecutionProvider", "options": {}}
TRT = {"name": "TensorrtExecutionProvider", "options": {"trt_fp16_enable": True,
                                                        "trt_max_workspace_size": 1 << 30}}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return digits_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def large_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP whose weights (about 1.2 MB) go to model.onnx.data."""
    import torch

    torch.manual_seed(0)
    return export_torch(mlp(4096), (1, 8, 8), tmp_path_factory.mktemp("mlp") / "model")


def config(*providers: dict[str, Any]) -> dict[str, Any]:
    target = {"description": "", "device": "jetson-orin", "precision": "int8", "quantize": {},
              "execution_providers": list(providers)}
    inputs = [spec | {"low": 0.0, "high": 1.0} for spec in INPUTS]
    return {"target": target, "model": {"name": "digits", "inputs": inputs},
            "package": {"archive": True}}


def run_loader(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "load_model.py"], cwd=folder, capture_output=True,
                          text=True, timeout=60, check=False)


def test_package_writes_model_metadata_and_loader(context_factory: Any,
                                                  models: DigitsModels) -> None:
    ctx = context_factory(config(CPU), inputs={"model": models.int8}, target="cpu")
    summary = package(ctx)
    files = {"model.onnx", "providers.json", "signature.json", "load_model.py"}
    assert set(summary["files"]) == files  # small model: no external data file
    assert {p.name for p in ctx.out.iterdir()} == files
    assert (ctx.out / "load_model.py").read_text() == TEMPLATE.read_text()
    signature = json.loads((ctx.out / "signature.json").read_text())
    assert signature["inputs"] == [{"name": "image", "dtype": "float32",
                                    "shape": ["batch", 1, 8, 8], "low": 0.0, "high": 1.0}]
    assert signature["outputs"] == [{"name": "logits", "dtype": "float32",
                                     "shape": ["batch", 10]}]
    assert signature["opset"] == summary["opset"] >= 18
    assert signature["ir_version"] == summary["ir_version"] > 0
    assert {"domain": "ai.onnx", "version": summary["opset"]} in signature["opset_imports"]
    result = run_loader(ctx.out)
    assert result.returncode == 0, result.stderr
    assert "logits: shape [1, 10] float32" in result.stdout


def test_large_model_keeps_external_data_and_loads_without_target_ep(
        context_factory: Any, large_model: Path) -> None:
    ctx = context_factory(config(TRT, CPU), inputs={"model": large_model}, target="orin")
    summary = package(ctx)
    assert summary["files"]["model.onnx.data"] > EXTERNAL_DATA_THRESHOLD
    providers = json.loads((ctx.out / "providers.json").read_text())
    assert [p["name"] for p in providers["providers"]] == ["TensorrtExecutionProvider",
                                                           "CPUExecutionProvider"]
    assert providers["providers"][0]["options"] == TRT["options"]
    assert providers["cpu_fallback"] is True
    assert providers["target"] == "orin"
    result = run_loader(ctx.out)
    assert result.returncode == 0, result.stderr
    assert "TensorrtExecutionProvider" in result.stderr  # warned as missing on this machine
    assert "on CPUExecutionProvider" in result.stdout


def test_loader_rejects_a_feed_that_does_not_match_the_signature() -> None:
    signature = {"inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]}
    feed = random_feed(signature)
    check_feed(feed, signature)
    assert feed["image"].shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="must be float32, got float64"):
        check_feed({"image": feed["image"].astype(np.float64)}, signature)
    with pytest.raises(ValueError, match=r"must have shape \['batch', 1, 8, 8\]"):
        check_feed({"image": np.zeros((4, 1, 8, 9), np.float32)}, signature)
    with pytest.raises(ValueError, match="the model takes"):
        check_feed({"pixels": feed["image"]}, signature)
