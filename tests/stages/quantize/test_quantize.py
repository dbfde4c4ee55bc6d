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
from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.common.datasets.splits import load_dataset
from stages.common.onnx_files import WEIGHTS_FILE, load_model, model_file
from stages.optimize.stage import optimize
from stages.quantize.stage import quantize
from tests.fixtures.digits_models import INPUT, INPUTS, digits_models, export_torch
from tests.fixtures.zoo_digits import stage_config

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
    config = OmegaConf.create(stage_config())
    split = load_dataset(config.dataset, config.model.inputs).evaluation
    return np.concatenate([feed[INPUT] for feed in split.feeds]), split.labels


def _config(inputs: list[dict[str, Any]] = INPUTS, **quantize: Any) -> dict[str, Any]:
    return stage_config(**quantize) | {"model": {"inputs": inputs}}


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


# ---- every PTQ knob, seen in the graph it produces -------------------------------------------

def _graph(directory: Path) -> onnx.GraphProto:
    return onnx.load(str(model_file(directory))).graph


def _quantized_inputs(graph: onnx.GraphProto) -> dict[str, bool]:
    """Node name -> whether any of its inputs (weights included) comes out of a
    DequantizeLinear; a node kept float reads its float weights straight from initializers."""
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: any(i in dequantized for i in n.input) for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}


def _float_weights(graph: onnx.GraphProto) -> dict[str, bool]:
    """Conv/Gemm node name -> whether it reads its weight as a float initializer."""
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {n.name: n.input[1] in floats for n in graph.node if n.op_type in ("Conv", "Gemm")}


def _activation_quantizers(graph: onnx.GraphProto) -> dict[str, tuple[float, int]]:
    """Activation tensor -> (scale, zero-point type) of the QuantizeLinear that quantizes it."""
    weights = {t.name: t for t in graph.initializer}
    return {n.input[0]: (float(onnx.numpy_helper.to_array(weights[n.input[1]])),
                         weights[n.input[2]].data_type)
            for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights}


def _weights(graph: onnx.GraphProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Quantized weight -> (values, scale, zero point) of the DequantizeLinear reading it."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: (inits[n.input[0]], inits[n.input[1]], inits[n.input[2]])
            for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and n.input[0].endswith("weight_quantized")}


def test_nodes_to_exclude_by_name_and_pattern_stay_float(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "name", nodes_to_exclude=["node_conv2d"])
    assert summary["nodes_to_exclude"] == ["node_conv2d"]
    assert _quantized_inputs(_graph(tmp_path / "name"))["node_conv2d"] is False
    assert _float_weights(_graph(tmp_path / "name")) == {"node_conv2d": True,
                                                         "node_linear": False}
    summary = _quantize(cnn, tmp_path / "regex", nodes_to_exclude=["node_lin.*"])
    assert summary["nodes_to_exclude"] == ["node_linear"]
    assert _float_weights(_graph(tmp_path / "regex")) == {"node_conv2d": False,
                                                          "node_linear": True}


def test_nodes_to_exclude_matching_nothing_names_the_key_and_the_nodes(cnn: Path,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"quantize.nodes_to_exclude: 'conv_.*' matches no node"
                                          r".*Its nodes are: node_conv2d, node_relu"):
        _quantize(cnn, tmp_path / "out", nodes_to_exclude=["conv_.*"])


def test_op_types_to_quantize_limits_what_is_quantized(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "int8", op_types_to_quantize=["Conv"])
    assert summary["op_types_to_quantize"] == ["Conv"]
    assert _float_weights(_graph(tmp_path / "int8")) == {"node_conv2d": False,
                                                         "node_linear": True}
    with pytest.raises(RecipeError, match=r"op_types_to_quantize: \['conv'\] .* Did you mean"):
        _quantize(cnn, tmp_path / "typo", op_types_to_quantize=["conv"])


def test_a16w8_has_16_bit_activations_and_8_bit_weights(cnn: Path, tmp_path: Path,
                                                        evaluation: tuple[np.ndarray, Any]) -> None:
    _quantize(cnn, tmp_path / "a16w8", activation_type="uint16", weight_type="int8")
    graph = _graph(tmp_path / "a16w8")
    assert {t for _, t in _activation_quantizers(graph).values()} == {onnx.TensorProto.UINT16}
    assert {w[0].dtype for w in _weights(graph).values()} == {np.dtype(np.int8)}
    model = onnx.load(str(model_file(tmp_path / "a16w8")))
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset[""] >= 21  # 16-bit QuantizeLinear is standard from opset 21
    images = evaluation[0]
    assert _cosine(_run(cnn, images), _run(tmp_path / "a16w8", images)) > 0.999


@pytest.mark.parametrize(("settings", "message"), [
    ({"format": "qoperator", "activation_type": "uint16"}, "format=qoperator: 16-bit types"),
    ({"mode": "dynamic", "weight_type": "int16"}, "weight_type=int16: mode=dynamic"),
    ({"calibration": {"method": "percentile", "percentile": 0.0}}, "calibration.percentile"),
])
def test_combinations_ort_cannot_build_are_recipe_errors(cnn: Path, tmp_path: Path,
                                                         settings: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        _quantize(cnn, tmp_path / "out", **settings)


def test_percentile_value_sets_the_activation_ranges(cnn: Path, tmp_path: Path) -> None:
    ranges = {}
    for percentile in (90.0, 99.999):
        calibration = {"method": "percentile", "percentile": percentile, "samples": 64}
        summary = _quantize(cnn, tmp_path / str(percentile), calibration=calibration)
        assert summary["calibration_percentile"] == percentile
        ranges[percentile] = _activation_quantizers(_graph(tmp_path / str(percentile)))
    assert ranges[90.0].keys() == ranges[99.999].keys()
    clipped = [t for t in ranges[90.0] if ranges[90.0][t][0] < 0.9 * ranges[99.999][t][0]]
    assert clipped  # a lower percentile clips: smaller scales


def test_weight_knobs_shape_the_quantized_weights(cnn: Path, tmp_path: Path) -> None:
    _quantize(cnn, tmp_path / "default")
    default = _weights(_graph(tmp_path / "default"))
    assert all(scale.size > 1 for _, scale, _ in default.values())  # per channel
    assert max(int(np.abs(w).max()) for w, _, _ in default.values()) == 127
    assert all(not zp.any() for _, _, zp in default.values())  # symmetric
    _quantize(cnn, tmp_path / "knobs", per_channel=False, reduce_range=True,
              weight_symmetric=False, weight_type="uint8")
    knobs = _weights(_graph(tmp_path / "knobs"))
    assert all(scale.size == 1 for _, scale, _ in knobs.values())
    assert max(int(w.max()) for w, _, _ in knobs.values()) <= 127  # 7 bits of uint8
    assert any(zp.any() for _, _, zp in knobs.values())


def test_minimum_real_range_widens_small_ranges(cnn: Path, tmp_path: Path) -> None:
    _quantize(cnn, tmp_path / "int8", minimum_real_range=100.0)
    scales = [s for s, _ in _activation_quantizers(_graph(tmp_path / "int8")).values()]
    assert min(scales) >= 100.0 / 256


@pytest.mark.parametrize("pre_process", [True, False])
def test_pre_process_can_be_turned_off(cnn: Path, tmp_path: Path, pre_process: bool) -> None:
    summary = _quantize(cnn, tmp_path / "int8", pre_process=pre_process)
    assert summary["pre_process"] is pre_process
    metadata = {p.key for p in onnx.load(str(model_file(tmp_path / "int8"))).metadata_props}
    assert ("onnx.quant.pre_process" in metadata) is pre_process


def test_batched_calibration_measures_the_same_ranges(cnn: Path, tmp_path: Path) -> None:
    """MinMax ranges are the min/max over every sample, however the samples are grouped: a
    batch of 16 gives the same model bytes as one sample at a time, and the same bytes again
    on a second run."""
    builds = {name: _quantize(cnn, tmp_path / name, calibration={"samples": 64,
                                                                   "batch_size": batch})
              for name, batch in (("one", 1), ("batched", 16), ("again", 16))}
    assert builds["batched"]["calibration_batch_size"] == 16
    models = {name: (tmp_path / name / "model.onnx").read_bytes() for name in builds}
    assert models["one"] == models["batched"] == models["again"]
