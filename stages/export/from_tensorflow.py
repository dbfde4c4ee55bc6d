"""TensorFlow / Keras 3 -> ONNX through ``tf2onnx.convert.from_function``.

``tf2onnx.convert.from_keras`` does not work with Keras 3, so every source (a .keras file, a
SavedModel directory or a factory) becomes one ``tf.function`` with an input signature named
like the recipe's inputs. tensorflow is imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, RecipeError, StageError
from stages.export.checks import declared
from stages.export.savedmodel_scan import check_saved_model

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import onnx

    from stages.common.datasets.splits import Feed
    from stages.export.from_torch import Reference


def export_tensorflow(make: Callable[[], Any] | None, model: Any, export: Any,
                      sample: Feed) -> tuple[onnx.ModelProto, Reference]:
    """Load or build the model, convert it; return (ONNX model, TensorFlow reference)."""
    import tensorflow as tf
    import tf2onnx

    call = _load(make, model)
    names = [spec.name for spec in model.inputs]
    keys = _output_keys(_probe(call, model.inputs, sample), list(model.outputs))
    specs = [tf.TensorSpec([None if isinstance(d, str) else d for d in spec.shape],
                           tf.as_dtype(spec.dtype), name=spec.name) for spec in model.inputs]
    function = tf.function(lambda *args: _flatten(call(*args), keys), input_signature=specs)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=export.opset)
    _name_dims(proto.graph, model.inputs)
    _name_outputs(proto.graph, list(model.outputs) or keys or [])

    def run(feed: Feed) -> list[np.ndarray]:
        return [tensor.numpy() for tensor in function(*(feed[name] for name in names))]

    return proto, run


def _load(make: Callable[[], Any] | None, model: Any) -> Callable[..., Any]:
    """A callable taking the inputs positionally, in the recipe's order."""
    import keras
    import tensorflow as tf

    if make is not None:
        built = make()
        return _keras_call(built, model.inputs) if isinstance(built, keras.Model) else built
    if not model.path:
        raise RecipeError("model.framework=tensorflow needs model.path (a .keras file or a "
                          "SavedModel directory) or model.factory.")
    path = Path(model.path)
    if path.is_file() and path.suffix == ".keras":
        return _keras_call(_load_keras(path), model.inputs)
    if path.is_dir():
        check_saved_model(path)  # before TensorFlow builds any of its functions
        loaded = tf.saved_model.load(str(path))
        if "serving_default" in loaded.signatures:
            return _signature_call(loaded, [spec.name for spec in model.inputs])
        if callable(loaded):
            return loaded
        raise InputError(f"model.path: SavedModel {path} has neither a serving_default "
                         "signature nor a __call__ function.")
    raise InputError(f"model.path: {path} is neither a .keras file nor a SavedModel directory.")


def _load_keras(path: Path) -> Any:
    """The Keras model of a .keras file, in safe mode: code inside the file (a Lambda layer's
    function) is refused, whatever keras.config.enable_unsafe_deserialization() says."""
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError) as exc:
        sentences = str(exc).replace("\n", " ").split(". ")
        # Keras goes on to explain how to switch safe mode off, which edgekiln never does
        cause = ". ".join(x for x in sentences if "safe_mode" not in x and "trust" not in x)
        unsafe = "arbitrary code" in str(exc) or "safe_mode" in str(exc)
        raise InputError(
            f"model.path: {path} was refused by Keras safe mode: {cause.rstrip('.')}. edgekiln "
            "loads .keras files only in safe mode; rebuild the model without Python code in "
            "its layers (a Lambda layer's function) or give it as model.factory."
            if unsafe else f"model.path: {path} cannot be loaded as a .keras file: "
            f"{cause.rstrip('.')}.") from exc


def _keras_call(model: Any, inputs: Any) -> Callable[..., Any]:
    """The Keras model called with the recipe's inputs, after checking their declared shapes
    against those it was built for (in the order the recipe's inputs feed it)."""
    for index, (spec, tensor) in enumerate(zip(inputs, model.inputs, strict=False)):
        _check_expected(index, spec, tuple(tensor.shape))

    def call(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return call


def _probe(call: Callable[..., Any], inputs: Any, sample: Feed) -> Any:
    """One eager call on the sample shaped as ``model.inputs`` declares; it also tells whether
    outputs come as a dict (a SavedModel signature does)."""
    import tensorflow as tf

    try:
        return call(*(tf.constant(sample[spec.name]) for spec in inputs))
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(
            f"the TensorFlow model fails on inputs shaped as declared ({declared(inputs, sample)})"
            f": {type(exc).__name__}: {cause}. Check model.inputs.<i>.shape/dtype against what "
            "the model expects.") from exc


def _check_expected(index: int, spec: Any, shape: tuple[int | None, ...]) -> None:
    """A Keras input's fixed dims are what ``model.inputs.<index>`` declares (None: any)."""
    wanted = list(spec.shape)
    expected = ["?" if size is None else size for size in shape]
    if len(shape) != len(wanted) or any(
            size is not None and size != dim for size, dim in zip(shape, wanted, strict=False)):
        raise RecipeError(f"model.inputs.{index}.shape: '{spec.name}' is declared {wanted}, the "
                          f"Keras model expects {expected} ('?' takes any size).")


def _signature_call(loaded: Any, names: list[str]) -> Callable[..., Any]:
    """Call the serving signature (keyword inputs) with the recipe's inputs, matched by name."""
    signature = loaded.signatures["serving_default"]
    expected = list(signature.structured_input_signature[1])
    if set(expected) == set(names):
        keywords = names
    elif len(expected) == len(names) == 1:
        keywords = expected
    else:
        raise RecipeError(f"model.inputs are {sorted(names)}, but the SavedModel's "
                          f"serving_default signature takes {sorted(expected)}.")

    def call(*args: Any) -> Any:
        # through `loaded`, which owns the variables: they die with it
        return loaded.signatures["serving_default"](**dict(zip(keywords, args, strict=True)))

    return call


def _output_keys(probe: Any, wanted: list[str]) -> list[str] | None:
    """Order of a dict's outputs: the recipe's when it names them all, else sorted keys."""
    if not isinstance(probe, dict):
        return None
    return wanted if wanted and set(wanted) <= set(probe) else sorted(probe)


def _flatten(result: Any, keys: list[str] | None) -> list[Any]:
    if keys is not None:
        return [result[key] for key in keys]
    return list(result) if isinstance(result, list | tuple) else [result]


def _name_dims(graph: onnx.GraphProto, inputs: Any) -> None:
    """Give the input dims tf2onnx calls 'unk__N' the recipe's names, everywhere they occur."""
    renamed = {}
    by_name = {value.name: value for value in graph.input}
    for spec in inputs:
        dims = by_name[spec.name].type.tensor_type.shape.dim if spec.name in by_name else []
        for dim, size in zip(dims, spec.shape, strict=False):
            if isinstance(size, str) and dim.dim_param:
                renamed[dim.dim_param] = size
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


def _name_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    """Rename graph outputs (tf2onnx's 'Identity:0') to ``names``, else to output_0, ..."""
    if names and len(names) != len(graph.output):
        raise RecipeError(f"model.outputs names {len(names)} outputs, the model has "
                          f"{len(graph.output)}.")
    taken = {name for node in graph.node for name in node.output}
    for index, value in enumerate(graph.output):
        old, new = value.name, names[index] if names else f"output_{index}"
        if old == new:
            continue
        if new in taken:
            raise StageError(f"cannot name output {index} '{new}': the converted graph already "
                             "has a value of that name.")
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]
            node.output[:] = [new if name == old else name for name in node.output]
        for info in graph.value_info:
            if info.name == old:
                info.name = new
        value.name = new
