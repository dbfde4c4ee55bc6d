"""Stage ``optimize`` on real models: a dynamo-exported torch CNN and a hand-built graph."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_context
from onnx import TensorProto, helper, numpy_helper

from stages.common.onnx_files import WEIGHTS_FILE, load_model, model_file, save_model
from stages.optimize.stage import optimize

if TYPE_CHECKING:
    from pathlib import Path

HIDDEN = 4096  # 64 x 4096 float32 weights = 1 MiB, so with the rest the model is "large"


@pytest.fixture(scope="module")
def torch_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Conv-BN-ReLU CNN exported with the dynamo exporter, batch dimension dynamic."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    raw = tmp_path_factory.mktemp("torch_raw") / "model.onnx"
    torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), str(raw), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["input"])
    directory = tmp_path_factory.mktemp("torch_cnn")
    save_model(load_model(raw), directory)
    return directory


@pytest.fixture(scope="module")
def folded_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP with >1 MiB of weights and nodes ORT folds away: a Transpose of a constant
    weight, an Identity and a Dropout."""
    rng = np.random.default_rng(0)
    w1_t = numpy_helper.from_array(rng.normal(0, 0.1, (HIDDEN, 64)).astype(np.float32), "w1_t")
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (HIDDEN, 10)).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Transpose", ["w1_t"], ["w1"], perm=[1, 0]),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Identity", ["h"], ["h_id"]),
        helper.make_node("Relu", ["h_id"], ["h_relu"]),
        helper.make_node("Dropout", ["h_relu"], ["h_drop"]),
        helper.make_node("MatMul", ["h_drop", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "folded_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[w1_t, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    directory = tmp_path_factory.mktemp("folded_mlp")
    save_model(model, directory)
    assert (directory / WEIGHTS_FILE).is_file()
    return directory


def _run(directory: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file(directory)), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _digits_batch() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:16, None] / 16.0).astype(np.float32)


def _optimize(source: Path, out: Path, level: str, shape_inference: bool = True) -> dict:
    config = {"optimize": {"level": level, "shape_inference": shape_inference}}
    return optimize(make_context(config, out, {"model": source}))


def test_basic_keeps_outputs_and_records_counts(torch_cnn: Path, tmp_path: Path) -> None:
    summary = _optimize(torch_cnn, tmp_path / "out", "basic")
    batch = _digits_batch()
    np.testing.assert_allclose(_run(tmp_path / "out", batch), _run(torch_cnn, batch),
                               rtol=1e-5, atol=1e-5)
    assert summary["nodes_before"] == len(load_model(model_file(torch_cnn)).graph.node)
    assert summary["nodes_after"] == sum(summary["ops_after"].values())
    assert summary["ops_after"]["Conv"] == 2
    assert "BatchNormalization" not in summary["ops_after"]
    assert summary["size_before"] > 0
    assert summary["size_after"] > 0
    assert json.loads((tmp_path / "out" / "optimize.json").read_text()) == summary


def test_large_model_is_folded_and_keeps_external_data(folded_mlp: Path, tmp_path: Path) -> None:
    summary = _optimize(folded_mlp, tmp_path / "out", "basic")
    assert summary["nodes_before"] == 7
    # Transpose of a constant is folded, Identity and inference-time Dropout removed
    assert summary["nodes_after"] == 4
    assert summary["ops_after"] == {"MatMul": 2, "Relu": 1, "Reshape": 1}
    assert (tmp_path / "out" / WEIGHTS_FILE).is_file()
    assert summary["size_after"] > 1 << 20
    batch = _digits_batch()
    np.testing.assert_allclose(_run(tmp_path / "out", batch), _run(folded_mlp, batch),
                               rtol=1e-5, atol=1e-5)


def test_level_none_only_infers_shapes(folded_mlp: Path, tmp_path: Path) -> None:
    summary = _optimize(folded_mlp, tmp_path / "out", "none")
    assert summary["nodes_after"] == summary["nodes_before"] == 7
    model = onnx.load(str(model_file(tmp_path / "out")), load_external_data=False)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    assert shapes["h"][1:] == [HIDDEN]  # the batch dim comes out of Reshape as unk__0


def test_extended_warns_and_still_runs_on_cpu(torch_cnn: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.optimize"):
        summary = _optimize(torch_cnn, tmp_path / "out", "extended", shape_inference=False)
    assert "com.microsoft contrib ops" in caplog.text
    # Conv+Relu fuse into the contrib op FusedConv, which the CPU EP runs
    assert summary["ops_after"].get("com.microsoft:FusedConv", 0) >= 1
    batch = _digits_batch()
    np.testing.assert_allclose(_run(tmp_path / "out", batch), _run(torch_cnn, batch),
                               rtol=1e-4, atol=1e-5)
