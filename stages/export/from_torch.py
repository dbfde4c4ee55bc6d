"""PyTorch -> ONNX with the dynamo exporter (``torch.export``), plus the eager reference.

torch is imported inside the functions, so recipes for other frameworks never pay for it.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from stages.common.torch_models import dynamic_shapes, flatten, load_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import onnx

    from stages.common.datasets.splits import Feed

    # runs the source model on one feed and returns its outputs, flattened in graph order
    Reference = Callable[[Feed], list[np.ndarray]]


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
    with warnings.catch_warnings():
        # one Dim shared by several inputs (a common "batch") is intended, not worth a warning
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            module, args, dynamo=True, verbose=False, input_names=names,
            output_names=list(model.outputs) or None, opset_version=export.opset,
            dynamic_shapes=dynamic_shapes(model.inputs))
    return program.model_proto, _reference(module, names)


def _reference(module: Any, names: list[str]) -> Reference:
    import torch

    def run(feed: Feed) -> list[np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(feed[name]) for name in names))
        return [tensor.detach().cpu().numpy() for tensor in flatten(result)]

    return run
