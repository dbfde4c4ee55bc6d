"""A candidate whose outputs hold NaN or infinity fails validation (exit 4) with the sample
named, even with every gate off: NaN metrics would otherwise pass unnoticed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from pipeline.errors import GateError
from stages.common.onnx_files import save_model
from tests.fixtures.digits_models import INPUT
from tests.stages.validate.test_validate import config, run

if TYPE_CHECKING:
    from pathlib import Path


def _affine(directory: Path, last: str | None) -> Path:
    """Flatten -> MatMul (-> ``last``, an elementwise op) as 'logits' (N, 10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    nodes = [helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits" if last is None else "mm"])]
    if last is not None:
        nodes.append(helper.make_node(last, ["mm"], ["logits"]))
    graph = helper.make_graph(
        nodes, "affine", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                        ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    save_model(model, directory)
    return directory


def test_nan_outputs_fail_validation_with_gates_off(context_factory: Any,
                                                    tmp_path: Path) -> None:
    reference = _affine(tmp_path / "reference", None)
    candidate = _affine(tmp_path / "candidate", "Log")  # log of negative logits: NaN
    with pytest.raises(GateError, match=r"target 't': the candidate's outputs hold NaN or "
                       r"infinite values: its first output on \d+ of 128 evaluation samples "
                       r"\(first: sample \d+, digits\[\d+\]; the FP32 reference is finite "
                       r"there\)"):
        run(context_factory, config(min_speedup=0.0), candidate, reference)


def test_finite_outputs_still_validate(context_factory: Any, tmp_path: Path) -> None:
    reference = _affine(tmp_path / "reference", None)
    candidate = _affine(tmp_path / "candidate", "Relu")
    summary = run(context_factory, config(min_speedup=0.0), candidate, reference)
    assert np.isfinite(summary["mean_cosine"])
