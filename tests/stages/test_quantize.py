"""Stage ``quantize`` on real models: the trained digits CNN and a >1 MiB MLP, both dynamo
exports run through ``optimize`` first, as in a pipeline."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_context
from digits_models import DIGITS, INPUT, INPUTS, digits_models, export_torch
from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.optimize import optimize
from stages.quantize import quantize
from stages.support.datasets import load_dataset
from stages.support.onnx_files import WEIGHTS_FILE, load_model, model_file

if TYPE_CHECKING:
    from pathlib import Path


def _optimized(source: Path, out: Path) -> Path:
    config = {"optimize": {"level": "basic", "shape_inference": True}}
    optimize(make_context(config, out, {"model": source}))
    return out


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN (trained to ~97%), optimized."""
    pytest.importorskip("torch")
    fp32 = digits_models(tmp_path_factory.getbasetemp()).fp32
    return _optimized(fp32, tmp_path_factory.mktemp("cnn_optimized"))


@pytest.fixture(scope="module")
def big_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MLP with 1.2 MB of weights, so it travels with external data.

    Its 512x512 layer keeps per-channel scales and int32 biases a small part of the INT8 model.
    """
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    exported = export_torch(net, (1, 8, 8), tmp_path_factory.mktemp("mlp_export"))
    optimized = _optimized(exported, tmp_path_factory.mktemp("mlp_optimized"))
    assert (optimized / WEIGHTS_FILE).is_file()
    return optimized


@pytest.fixture(scope="module")
def evaluation() -> tuple[np.ndarray, np.ndarray]:
    """The digits evaluation split as one batch, with its labels."""
    split = load_dataset(OmegaConf.create(DIGITS), OmegaConf.create(INPUTS)).evaluation
    return np.concatenate([feed[INPUT] for feed in split.feeds]), split.labels


def _config(inputs: list[dict[str, Any]] = INPUTS, **quantize: Any) -> dict[str, Any]:
    settings = {"mode": "static", "format": "qdq", "per_channel": True,
                "activation_type": "uint8", "weight_type": "int8", "reduce_range": False,
                "activation_symmetric": False, "weight_symmetric": True,
                "calibration": {"method": "minmax", "samples": 64}}
    return {"quantize": settings | quantize, "dataset": DIGITS, "model": {"inputs": inputs}}


def _quantize(source: Path, out: Path, **settings: Any) -> dict[str, Any]:
    return quantize(make_context(_config(**settings), out, {"model": source}, target="cpu"))


def _run(directory: Path, batch: np.ndarray) -> np.ndarray:
    load_model(model_file(directory))  # also checks where the external data lives
    session = ort.InferenceSession(str(model_file(directory)), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: batch})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_static_qdq_stays_close_to_fp32_on_digits(cnn: Path, tmp_path: Path,
                                                  evaluation: tuple[np.ndarray, Any]) -> None:
    summary = _quantize(cnn, tmp_path / "int8")
    assert summary["quant_ops"]["QuantizeLinear"] > 0
    assert summary["quant_ops"]["DequantizeLinear"] > 0
    assert summary["calibration_samples"] == 64
    assert summary["calibration_seconds"] >= 0
    written = json.loads((tmp_path / "int8" / "quantize.json").read_text())
    assert written == {k: v for k, v in summary.items() if k != "calibration_seconds"}
    images, labels = evaluation
    fp32, int8 = _run(cnn, images), _run(tmp_path / "int8", images)
    assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.97
    assert np.mean(int8.argmax(1) == labels) >= np.mean(fp32.argmax(1) == labels) - 0.02
    assert _cosine(fp32, int8) > 0.99


def test_large_model_quantizes_to_under_a_third(big_mlp: Path, tmp_path: Path,
                                                evaluation: tuple[np.ndarray, Any]) -> None:
    summary = _quantize(big_mlp, tmp_path / "int8")
    assert summary["size_ratio"] <= 0.3
    assert summary["size_before"] > 1 << 20
    assert summary["quant_ops"]["DequantizeLinear"] > 0
    images = evaluation[0]
    assert _cosine(_run(big_mlp, images), _run(tmp_path / "int8", images)) > 0.99


def test_qoperator_emits_qlinear_ops(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "int8", format="qoperator")
    ops = onnx.load(str(model_file(tmp_path / "int8"))).graph.node
    assert "QLinearConv" in {node.op_type for node in ops}
    assert summary["quant_ops"]["QLinear*"] >= 1


def test_dynamic_quantizes_weights_without_calibration(big_mlp: Path, tmp_path: Path,
                                                       evaluation: tuple[np.ndarray, Any]) -> None:
    summary = _quantize(big_mlp, tmp_path / "int8", mode="dynamic")
    assert summary["quant_ops"]["integer"] > 0
    assert "calibration_samples" not in summary
    assert summary["size_ratio"] <= 0.3
    images = evaluation[0]
    assert _cosine(_run(big_mlp, images), _run(tmp_path / "int8", images)) > 0.99


def test_fp16_halves_size_and_keeps_float32_io(big_mlp: Path, tmp_path: Path,
                                               evaluation: tuple[np.ndarray, Any]) -> None:
    summary = _quantize(big_mlp, tmp_path / "fp16", mode="fp16")
    assert 0.45 <= summary["size_ratio"] <= 0.55
    graph = onnx.load(str(model_file(tmp_path / "fp16"))).graph
    io_types = {value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    images = evaluation[0]
    np.testing.assert_allclose(_run(tmp_path / "fp16", images), _run(big_mlp, images),
                               atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibration_is_deterministic(cnn: Path, tmp_path: Path, method: str) -> None:
    calibration = {"method": method, "samples": 32}
    _quantize(cnn, tmp_path / "a", calibration=calibration)
    _quantize(cnn, tmp_path / "b", calibration=calibration)
    first = model_file(tmp_path / "a").read_bytes()
    assert first == model_file(tmp_path / "b").read_bytes()


def test_symmetric_int8_has_zero_points_of_zero(cnn: Path, tmp_path: Path) -> None:
    _quantize(cnn, tmp_path / "int8", activation_type="int8", activation_symmetric=True)
    model = onnx.load(str(model_file(tmp_path / "int8")))
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    zero_points = [weights[node.input[2]] for node in model.graph.node
                   if node.op_type == "QuantizeLinear"]
    assert zero_points
    assert all(not onnx.numpy_helper.to_array(zp).any() for zp in zero_points)
    assert {zp.data_type for zp in zero_points} == {onnx.TensorProto.INT8}


def test_contrib_ops_from_extended_level_are_reported(tmp_path: Path,
                                                     tmp_path_factory: pytest.TempPathFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fp32 = digits_models(tmp_path_factory.getbasetemp()).fp32
    config = {"optimize": {"level": "extended", "shape_inference": True}}
    optimize(make_context(config, tmp_path / "extended", {"model": fp32}))
    with caplog.at_level(logging.WARNING, logger="stages.quantize"):
        _quantize(tmp_path / "extended", tmp_path / "int8")
    assert "contrib ops com.microsoft:FusedConv in float" in caplog.text
    _run(tmp_path / "int8", np.zeros((2, 1, 8, 8), np.float32))


def test_dataset_that_does_not_fit_the_model_raises(cnn: Path, tmp_path: Path) -> None:
    inputs = [{"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 16, 16]}]
    with pytest.raises(InputError, match=f"model input '{INPUT}' expects samples of shape"):
        quantize(make_context(_config(inputs), tmp_path / "out", {"model": cnn}))


def test_int8_activations_with_uint8_weights_is_a_recipe_error(cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="activation_type=int8 with weight_type=uint8"):
        _quantize(cnn, tmp_path / "out", activation_type="int8", weight_type="uint8")


def test_none_copies_the_model(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "out", mode="none")
    assert summary["size_ratio"] == 1.0
    assert model_file(tmp_path / "out").read_bytes() == model_file(cnn).read_bytes()
