"""Tiny real models for the export stage tests, importable by factory path ('export_models:...').

pytest puts this folder on sys.path (tests/stages has no __init__.py), so recipes in the tests
name these factories as ``export_models:<name>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def two_inputs() -> Any:
    """Float features plus int64 token ids -> (score, pooled embedding): two outputs."""
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.linear = nn.Linear(4, 1)

        def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> Any:
            pooled = self.embed(tokens).mean(dim=1) + features
            return self.linear(pooled), pooled

    torch.manual_seed(0)
    return TwoInputs()


def wide_mlp(width: int = 768) -> Any:
    """An MLP with 2 * width**2 float32 weights (4.5 MiB by default): needs external data."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


def drifting() -> Any:
    """A module whose eager output changes on every call, unlike its traced graph.

    A Python counter is a constant to ``torch.export``, so the ONNX model keeps the value seen
    while tracing and parity must fail: the bug class the check is there to catch.
    """
    import torch
    from torch import nn

    class Drifting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x + self.calls

    return Drifting()


def keras_two_inputs() -> Any:
    """A Keras 3 functional model: float32 (N, 3) features and int32 (N, 5) token ids."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input(shape=(3,), name="features", dtype="float32")
    tokens = keras.Input(shape=(5,), name="tokens", dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 3)(tokens))
    joined = keras.layers.Concatenate()([features, pooled])
    return keras.Model([features, tokens], keras.layers.Dense(2)(joined))


def save_tf_module(path: Path) -> None:
    """A SavedModel whose serving signature takes 'x' (N, 3) and returns {'y': (N, 2)}."""
    import numpy as np
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.nn.tanh(tf.matmul(x, self.weight))}

    module = Affine()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def save_onnx_affine(path: Path, location: str | None = None) -> None:
    """An ONNX model y = x @ W ('x' is (N, 3)); with ``location``, W points at external data."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, 2, dtype=np.float32), name="W")
    if location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
