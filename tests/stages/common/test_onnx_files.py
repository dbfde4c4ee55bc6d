"""Models are saved as ``model.onnx`` + ``model.onnx.data`` whatever the working directory holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stages.common import onnx_files

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _large_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024),
                                     "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_model_data_file_in_the_working_directory_does_not_stop_a_save(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx's own save_as_external_data refused here: it checks the cwd for the data file."""
    monkeypatch.chdir(tmp_path)
    stray = tmp_path / onnx_files.WEIGHTS_FILE
    stray.write_bytes(b"a user's own weights")
    for _ in range(2):  # saving again into the same folder replaces, never appends
        onnx_files.save_model(_large_model(), tmp_path / "out")
    data = tmp_path / "out" / onnx_files.WEIGHTS_FILE
    assert data.stat().st_size == 512 * 1024 * 4
    assert stray.read_bytes() == b"a user's own weights"
    loaded = onnx_files.load_model(tmp_path / "out" / onnx_files.MODEL_FILE)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]),
                                  np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024))
