"""Checks of an exported model: its inputs against the recipe, its outputs against the source.

Parity uses np.allclose's rule, |onnx - ref| <= atol + rtol * |ref|, on seeded random samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, StageError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import onnx

    from stages.common.datasets.splits import Feed
    from stages.export.from_torch import Reference


@dataclass(frozen=True)
class Feeds:
    """What export runs the models on. The exporter traces ``trace`` (the first sample), which
    the source model also runs first, to name a bad input shape before the exporter does; the
    parity feeds start with that same sample, so its reference outputs are reused, and the
    other ``samples - 1`` follow as one batch, one run of each model instead of one a sample.
    The batch runs the ONNX model at another size than it was traced at, too."""

    trace: Feed
    parity: list[Feed]
    samples: int


def export_feeds(inputs: Any, samples: list[Feed], count: int) -> Feeds:
    """``samples[0]`` to trace, ``samples[:count]`` to compare on, batched where ``inputs``
    all lead with one dynamic dim (``batch``); else one feed a sample, as a fixed-size or
    differently-led input cannot stack them."""
    import numpy as np

    parity, leading = samples[:count], {spec.shape[0] if len(spec.shape) else None
                                        for spec in inputs}
    rest = parity[1:]
    if len(rest) > 1 and len(leading) == 1 and isinstance(next(iter(leading)), str):
        rest = [{name: np.concatenate([feed[name] for feed in rest]) for name in rest[0]}]
    return Feeds(trace=samples[0], parity=parity[:1] + rest, samples=len(parity))


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in weights]


def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """Name, numpy dtype name and shape (ints, or strings for dynamic dims) of a graph value."""
    import numpy as np
    import onnx

    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
             for dim in tensor.shape.dim]
    return {"name": value.name, "dtype": np.dtype(dtype).name, "shape": shape}


def check_signature(graph: onnx.GraphProto, inputs: Any, outputs: list[str]) -> None:
    """The ONNX model takes the recipe's inputs (dtypes, shapes) and returns its outputs."""
    found = [value.name for value in graph.output]
    if outputs and found != outputs:
        raise RecipeError(f"model.outputs are {outputs}, but the ONNX model's outputs are "
                          f"{found}.")
    actual = {value.name: describe(value) for value in graph_inputs(graph)}
    names = [spec.name for spec in inputs]
    for index, spec in enumerate(inputs):
        if spec.name not in actual:
            raise RecipeError(f"model.inputs.{index}.name: '{spec.name}' is not an input of the "
                              f"ONNX model; model.inputs are {names}, the model's inputs are "
                              f"{sorted(actual)}.")
    if set(actual) != set(names):
        raise RecipeError(f"model.inputs are {names}, but the ONNX model's inputs are "
                          f"{sorted(actual)}: declare every input.")
    for index, spec in enumerate(inputs):
        _check_input(index, spec, actual[spec.name])


def _check_input(index: int, spec: Any, found: dict[str, Any]) -> None:
    key, wanted = f"model.inputs.{index}", list(spec.shape)
    if found["dtype"] != spec.dtype:
        raise RecipeError(f"{key}.dtype: '{spec.name}' is {spec.dtype} in the recipe, "
                          f"{found['dtype']} in the ONNX model.")
    # a dynamic ONNX dim takes any size; a fixed one must be what the recipe says
    if len(found["shape"]) != len(wanted) or any(
            a != w and not isinstance(a, str)
            for a, w in zip(found["shape"], wanted, strict=False)):
        pinned = [w for a, w in zip(found["shape"], wanted, strict=False)
                  if isinstance(w, str) and not isinstance(a, str)]
        hint = (f"; the model fixes the dynamic dim(s) {pinned} (its code pins their size, "
                "e.g. a reshape to a constant): declare the size or make the code general"
                if pinned and len(found["shape"]) == len(wanted) else "")
        raise RecipeError(f"{key}.shape: '{spec.name}' is declared {wanted}, the ONNX model "
                          f"expects {found['shape']}{hint}.")


def declared(inputs: Any, sample: Feed) -> str:
    """``model.inputs`` as declared, and the shapes of the sample made from them, for a
    message about a model that does not take them."""
    return "; ".join(f"model.inputs.{i} '{spec.name}' {list(spec.shape)} {spec.dtype} (sampled "
                     f"as {list(sample[spec.name].shape)})" for i, spec in enumerate(inputs))


def parity(path: Path, reference: Reference | None, feeds: Feeds,
           settings: Any) -> dict[str, Any]:
    """Run the parity feeds through onnxruntime and ``reference``; fail beyond the tolerances.

    Without a reference (an ONNX source) the samples still prove that the model runs.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_outputs()]
    worst = {name: (0.0, 0.0) for name in names}
    for feed in feeds.parity:
        got = session.run(None, feed)
        if reference is None:
            continue
        want = reference(feed)
        if len(want) != len(got):
            raise StageError(f"the ONNX model has {len(got)} outputs, the source model "
                             f"{len(want)}.")
        for name, actual, expected in zip(names, got, want, strict=True):
            diffs = compare(name, actual, expected, settings)
            worst[name] = (max(worst[name][0], diffs[0]), max(worst[name][1], diffs[1]))
    checked = reference is not None and bool(feeds.parity)
    return {
        "samples": feeds.samples,
        "runs": len(feeds.parity),  # of each model: the traced sample, then the rest batched
        "max_abs_diff": max(a for a, _ in worst.values()) if checked else None,
        "max_rel_diff": max(r for _, r in worst.values()) if checked else None,
        "outputs": {name: {"max_abs_diff": a, "max_rel_diff": r}
                    for name, (a, r) in worst.items()} if checked else {},
    }


def compare(name: str, actual: np.ndarray, expected: np.ndarray,
            settings: Any) -> tuple[float, float]:
    """(max abs diff, max rel diff) of one output; StageError beyond atol + rtol * |ref|."""
    import numpy as np

    if actual.shape != expected.shape:
        raise StageError(f"export parity: output '{name}' has shape {list(actual.shape)} in "
                         f"onnxruntime, {list(expected.shape)} in the source model.")
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(actual - expected)
    allowed = settings.parity_atol + settings.parity_rtol * np.abs(expected)
    if not np.all(diff <= allowed):  # written so that NaN fails, as in np.allclose
        raise StageError(
            f"export parity: output '{name}' of onnxruntime differs from the source model by "
            f"up to {np.max(diff):.3g} (max abs diff), over the tolerance parity_atol + "
            f"parity_rtol*|ref| = {settings.parity_atol:g} + {settings.parity_rtol:g}*|ref| "
            f"by up to {np.max(diff - allowed):.3g}. Raise export.parity_atol/parity_rtol if "
            "this drift is expected.")
    # relative only where the reference exceeds atol, so that near-zero values don't explode
    scale = np.abs(expected)
    meaningful = scale > max(settings.parity_atol, np.finfo(np.float32).tiny)
    relative = diff[meaningful] / scale[meaningful]
    return float(diff.max(initial=0.0)), float(relative.max(initial=0.0))
