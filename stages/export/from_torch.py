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
from stages.export.checks import declared

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
    probe(lambda: module(*args), "torch model", model.inputs, sample,
          "Check model.inputs.<i>.shape/dtype (and low/high for indices) against what the "
          "model's forward expects.")
    with warnings.catch_warnings():
        # one Dim shared by several inputs (a common "batch") is intended, not worth a warning
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            module, args, dynamo=True, verbose=False, input_names=names,
            output_names=list(model.outputs) or None, opset_version=export.opset,
            dynamic_shapes=dynamic_shapes(model.inputs))
    return program.model_proto, reference(module, names)


def probe(run: Callable[[], Any], what: str, inputs: Any, sample: Feed, advice: str) -> None:
    """One eager ``run()`` on the sample shaped as ``model.inputs`` declares: a wrong shape or
    dtype is then named as the recipe's, not found deep in the exporter's trace (torch.export
    reports it as an error of some matmul, after a page of fake-tensor logs)."""
    import torch

    try:
        with torch.no_grad():
            run()
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RecipeError(
            f"the {what} fails on inputs shaped as declared ({declared(inputs, sample)}): "
            f"{type(exc).__name__}: {cause}. {advice}") from exc


def reference(module: Any, names: list[str], by_name: bool = False) -> Reference:
    """The eager module on one feed, its outputs flattened in graph order; ``by_name`` passes
    the inputs as keywords (transformers' forward takes input_ids=..., attention_mask=...)."""
    import torch

    def run(feed: Feed) -> list[np.ndarray]:
        tensors = {name: torch.from_numpy(feed[name]) for name in names}
        with torch.no_grad():
            result = module(**tensors) if by_name else module(*tensors.values())
        return [tensor.detach().cpu().numpy() for tensor in flatten(result)]

    return run
