"""ORT's quantization pre-processing leaves nothing in the user's working directory, even when
its symbolic shape inference gives up (in-process it then saves sym_shape_infer_temp.onnx and a
weights file into the current directory: 90 MB per run on MiniLM)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from stages.common.onnx_files import model_file
from stages.quantize.ptq import _pre_process

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _save(directory: Path, nodes: list[onnx.NodeProto], x_shape: list[object],
          initializers: list[onnx.TensorProto]) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    directory.mkdir()
    onnx.save(model, model_file(directory))
    return directory


def _col2im_model(directory: Path) -> Path:
    ints = [numpy_helper.from_array(np.array([3, 3], np.int64), "image"),
            numpy_helper.from_array(np.array([2, 2], np.int64), "block"),
            numpy_helper.from_array(np.ones((4, 4), np.float32), "w")]
    return _save(directory, [helper.make_node("MatMul", ["x", "w"], ["cols"]),
                             helper.make_node("Col2Im", ["cols", "image", "block"], ["y"])],
                 ["batch", 4, 4], ints)


def _user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "work").mkdir()
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    monkeypatch.chdir(user_dir)
    return user_dir


def test_pre_processing_writes_only_into_its_own_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    source = _col2im_model(tmp_path / "source")
    user_dir = _user_dir(tmp_path, monkeypatch)
    prepared = _pre_process(source, tmp_path / "work" / "prepared")
    assert list(user_dir.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["prepared"]
    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((2, 4, 4), np.float32)})[0]
    assert out.shape == (2, 1, 3, 3)


def test_what_symbolic_inference_leaves_when_it_gives_up_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # DFT over a signal without its trailing real/imaginary axis: symbolic inference gives up
    # and saves its temp model into the working directory; ONNX's inference alone goes on
    source = _save(tmp_path / "source", [helper.make_node("DFT", ["x"], ["y"])],
                   ["batch", 8], [])
    user_dir = _user_dir(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING):
        prepared = _pre_process(source, tmp_path / "work" / "prepared")
    assert "symbolic shape inference failed" in caplog.text
    assert list(user_dir.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["prepared"]
    assert prepared.is_file()
