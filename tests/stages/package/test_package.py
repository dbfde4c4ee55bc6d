"""The package stage on real exported models, and the loader it ships, run as a device would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.bundle.device_loader import check_feed, random_feed
from pipeline.schema import TargetConfig
from stages.common.onnx_files import EXTERNAL_DATA_THRESHOLD
from stages.package.stage import TEMPLATE, package
from tests.fixtures.digits_models import INPUTS, DigitsModels, digits_models, export_torch, mlp

TARGETS = Path(__file__).resolve().parents[3] / "recipes" / "target"
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


def config(*providers: dict[str, Any], **target: Any) -> dict[str, Any]:
    """The keys the package stage reads, as the executor resolves them from the schema."""
    section = OmegaConf.merge(OmegaConf.structured(TargetConfig),
                              {"device": "jetson-orin", "precision": "int8",
                               "execution_providers": list(providers)}, target)
    inputs = [spec | {"low": 0.0, "high": 1.0} for spec in INPUTS]
    return {"target": OmegaConf.to_container(section, enum_to_str=True),
            "model": {"name": "digits", "inputs": inputs},
            "package": {"archive": True, "max_cpu_fallback_nodes": None}}


def run(model: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_package_writes_model_metadata_and_loader(context_factory: Any,
                                                  models: DigitsModels) -> None:
    ctx = context_factory(config(CPU), inputs={"model": models.int8}, target="cpu")
    summary = package(ctx)
    files = {"model.onnx", "coverage.json", "providers.json", "signature.json",
             "load_model.py", "requirements.txt"}  # no validate report: no samples.npz
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
    assert {o["domain"] for o in signature["opset_imports"]} == {"ai.onnx"}
    logits, = run(ctx.out / "model.onnx", random_feed(signature))
    assert logits.shape == (1, 10)


def test_large_model_keeps_external_data_and_lists_providers_in_order(
        context_factory: Any, large_model: Path) -> None:
    ctx = context_factory(config(TRT, CPU), inputs={"model": large_model}, target="orin")
    summary = package(ctx)
    assert summary["files"]["model.onnx.data"] > EXTERNAL_DATA_THRESHOLD
    providers = json.loads((ctx.out / "providers.json").read_text())
    assert [p["name"] for p in providers["providers"]] == ["TensorrtExecutionProvider",
                                                           "CPUExecutionProvider"]
    assert providers["providers"][0]["options"] == TRT["options"]
    assert providers["cpu_fallback"] is True
    assert (providers["target"], providers["model"]) == ("orin", "model.onnx")
    signature = json.loads((ctx.out / "signature.json").read_text())
    logits, = run(ctx.out / "model.onnx", random_feed(signature))
    assert logits.shape == (1, 10)


def test_ort_format_model_loads_and_runs_in_onnxruntime(context_factory: Any,
                                                        models: DigitsModels) -> None:
    """An ORT-format target (the iOS CoreML profile): model.ort beside model.onnx, same logits."""
    profile = OmegaConf.load(TARGETS / "ios_coreml.yaml")
    ctx = context_factory(config(**profile), inputs={"model": models.fp32}, target="ios")
    summary = package(ctx)
    assert {"model.onnx", "model.ort", "coverage.json"} <= set(summary["files"])
    assert summary["fixed_dims"] == {"batch": 1}
    signature = json.loads((ctx.out / "signature.json").read_text())
    assert signature["inputs"][0]["shape"] == [1, 1, 8, 8]
    providers = json.loads((ctx.out / "providers.json").read_text())
    assert providers["model"] == "model.ort"
    assert providers["ort_format"]["format_version"] == "6"
    assert providers["ort_format"]["optimization_style"] == "runtime"
    feed = {"image": np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)}
    ort_logits, = run(ctx.out / "model.ort", feed)
    onnx_logits, = run(ctx.out / "model.onnx", feed)
    np.testing.assert_allclose(ort_logits, onnx_logits, rtol=1e-5, atol=1e-5)
    report = json.loads((ctx.out / "coverage.json").read_text())
    assert report["method"] == "mobile_usability_checker"
    assert report["source"]["ops_file"].endswith("coreml_supported_mlprogram_ops.md")
    # Conv, Relu, MaxPool, Reshape, Gemm: all in CoreML's ML Program list, one partition
    assert (report["nodes"], report["on_first_choice"], report["partitions"]) == (5, 5, 1)
    assert report["fallback"] == []


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
