"""Sensitivity ranking survives graphs onnxruntime's own debugging tools trip over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from stages.quantize import sensitivity

if TYPE_CHECKING:
    from pathlib import Path


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._next = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)


def test_a_zero_dimensional_weight_does_not_crash_the_ranking(tmp_path: Path) -> None:
    # MatMul, then a Mul by a 0-d scalar initializer: quantized, that scalar made onnxruntime's
    # compute_weight_error raise "object of type 'numpy.float32' has no len()"
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
         helper.make_node("Mul", ["m", "s"], ["y"], name="mul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w"),
                     numpy_helper.from_array(np.array(0.5, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "float.onnx")
    feeds = [{"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(8)]
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), _Reader(feeds),
                    quant_format=QuantFormat.QDQ)
    units = sensitivity.rank(tmp_path / "float.onnx", tmp_path / "qdq.onnx", feeds)
    assert units, "the quantized nodes are ranked"
    assert {name for unit in units for name in unit.nodes} <= {"mm", "mul"}
    assert all(unit.added_noise > 0 for unit in units)
