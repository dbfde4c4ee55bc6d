"""PyTorch -> ONNX with torch's dynamo exporter (``torch.export``) or its legacy TorchScript
exporter (``export.exporter``), plus the eager reference.

torch is imported inside the functions, so recipes for other frameworks never pay for it.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from stages.common.torch_models import dynamic_axes, dynamic_shapes, flatten, load_checkpoint
from stages.export.checks import declared

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import onnx

    from stages.common.datasets.splits import Feed

    # runs the source model on one feed and returns its outputs, flattened in graph order
    Reference = Callable[[Feed], list[np.ndarray]]

# the opsets torch.onnx.export(dynamo=False) implements (torch.onnx._constants, torch 2.14):
# above 20 it only warns, and writes a model whose newer ops it never emitted
TORCHSCRIPT_OPSETS = range(7, 21)


def export_torch(make: Callable[[], Any], model: Any, export: Any,
                 sample: Feed) -> tuple[onnx.ModelProto, Reference]:
    """Build the module, load ``model.checkpoint``, export it; return (ONNX, eager reference)."""
    import torch

    module = make()
    if not isinstance(module, torch.nn.Module):
        raise RecipeError(f"model.factory '{model.factory}' returned {type(module).__name__}, "
                          "not a torch.nn.Module.")
    if model.checkpoint:
        load_checkpoint(module, Path(model.checkpoint))
    module.eval()
    names = [spec.name for spec in model.inputs]
    args = tuple(torch.from_numpy(sample[name]) for name in names)
    try:
        inspect.signature(module.forward).bind(*args)
    except TypeError as exc:
        raise RecipeError(f"model.inputs {names} do not fit {type(module).__name__}.forward"
                          f"{inspect.signature(module.forward)}: {exc}") from exc
    probed = probe(lambda: module(*args), "torch model", model.inputs, sample,
                   "Check model.inputs.<i>.shape/dtype (and low/high for indices) against what "
                   "the model's forward expects.")
    if export.exporter == "torchscript":
        proto = torchscript(module, args, model, export)
    else:
        proto = _dynamo(module, args, model, export)
    return proto, reference(module, names, seen=(sample, probed))


def _dynamo(module: Any, args: tuple[Any, ...], model: Any, export: Any) -> onnx.ModelProto:
    import torch

    with warnings.catch_warnings():
        # one Dim shared by several inputs (a common "batch") is intended, not worth a warning
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            module, args, dynamo=True, verbose=False, input_names=[s.name for s in model.inputs],
            output_names=list(model.outputs) or None, opset_version=export.opset,
            dynamic_shapes=dynamic_shapes(model.inputs))
    return program.model_proto


def torchscript(module: Any, args: Any, model: Any, export: Any,
                outputs: dict[str, dict[int, str]] | None = None) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=False)``: the string-named dims of ``model.inputs`` become
    dynamic axes. ``args`` is a tuple, ending in a dict of keyword inputs if any. ``outputs``
    names the outputs and their dynamic axes, where the caller knows them (else
    ``model.outputs``, and the exporter's shape inference names what it derives)."""
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        if os.environ.get("PIPELINE_FULL_ERROR") != "1":  # --verbose shows them
            # torch deprecates this exporter on every call; the README says so once
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            torch.onnx.export(module, args, buffer, dynamo=False, verbose=False,
                              input_names=[spec.name for spec in model.inputs],
                              output_names=list(outputs or model.outputs) or None,
                              opset_version=export.opset,
                              dynamic_axes=dynamic_axes(model.inputs) | (outputs or {}))
        except ValueError as exc:
            if "2GiB" not in str(exc):
                raise
            raise RecipeError("export.exporter=torchscript: the model is over protobuf's 2 GiB; "
                              "export.exporter=dynamo writes its weights as external data."
                              ) from exc
    return onnx.load_model_from_string(buffer.getvalue())


def probe(run: Callable[[], Any], what: str, inputs: Any, sample: Feed, advice: str) -> Any:
    """One eager ``run()`` on the sample shaped as ``model.inputs`` declares: a wrong shape or
    dtype is then named as the recipe's, not found deep in the exporter's trace (torch.export
    reports it as an error of some matmul, after a page of fake-tensor logs). Returns the
    outputs as numpy arrays, which the reference then reuses for this sample."""
    import torch

    try:
        with torch.no_grad():
            return _numpy(run())
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(
            f"the {what} fails on inputs shaped as declared ({declared(inputs, sample)}): "
            f"{type(exc).__name__}: {cause}. {advice}") from exc


def reference(module: Any, names: list[str], by_name: bool = False,
              seen: tuple[Feed, list[np.ndarray]] | None = None) -> Reference:
    """The eager module on one feed, its outputs flattened in graph order; ``by_name`` passes
    the inputs as keywords (transformers' forward takes input_ids=..., attention_mask=...).
    ``seen`` is a feed the module already ran on (the probe's) with its outputs: that feed
    gets them back instead of running again."""
    import torch

    def run(feed: Feed) -> list[np.ndarray]:
        if seen is not None and feed is seen[0]:
            return seen[1]
        tensors = {name: torch.from_numpy(feed[name]) for name in names}
        with torch.no_grad():
            return _numpy(module(**tensors) if by_name else module(*tensors.values()))

    return run


def _numpy(result: Any) -> list[np.ndarray]:
    return [tensor.detach().cpu().numpy() for tensor in flatten(result)]
