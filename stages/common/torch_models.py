"""Torch models from a recipe's model section: the factory, strict weights, export dims.

Shared by the ``export`` kind and quantization-aware training, which rebuilds the same module.
torch is imported inside the functions.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.common.factories import import_callable

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def model_factory(model: Any) -> Callable[[], Any]:
    """Resolve ``model.factory`` by its explicit dotted path; bind ``model.factory_kwargs``."""
    target = import_callable(model.factory, "model.factory",
                             model.get("trusted_packages") or ())
    kwargs = OmegaConf.to_container(model.factory_kwargs, resolve=True)
    return lambda: target(**kwargs)


def load_checkpoint(module: Any, path: Path) -> None:
    """Load a .pt/.pth state dict (tensors only) or a .safetensors file, strictly."""
    if not path.is_file():
        raise InputError(f"model.checkpoint: {path} not found.")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    elif path.suffix in (".pt", ".pth"):
        state = _load_weights_only(path)
    else:
        raise InputError(f"model.checkpoint: {path} must be a .pt/.pth state dict or a "
                         ".safetensors file.")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"model.checkpoint: {path} does not fit the module built by "
                         f"model.factory: {exc}") from exc


def _load_safetensors(path: Path) -> Mapping[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise InputError(f"model.checkpoint: {path} is not a valid .safetensors file: "
                         f"{exc}") from exc


def _load_weights_only(path: Path) -> Mapping[str, Any]:
    import torch

    try:
        # weights_only refuses pickled code: a checkpoint must never run anything on load
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        refused = refused_global(str(exc))
        why = (f"it pickles the Python global '{refused}', which torch.load(weights_only=True) "
               "refuses: unpickling it could run code on this machine" if refused else
               f"torch.load(weights_only=True) fails: {_first_line(exc)}")
        raise InputError(
            f"model.checkpoint: {path} cannot be loaded: {why}. edgekiln never unpickles "
            "arbitrary objects; save the weights with torch.save(model.state_dict(), path) or "
            "as .safetensors instead.") from exc
    if not isinstance(state, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"model.checkpoint: {path} holds a {type(state).__name__}, not a state "
                         "dict of tensors; save model.state_dict().")
    return state


def refused_global(message: str) -> str | None:
    """The global torch's weights_only unpickler refused, from its message (which also
    suggests ways around the refusal that edgekiln does not offer)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1).rstrip(".") if found else None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines or [type(exc).__name__])[0]


def dynamic_shapes(inputs: Any) -> tuple[dict[int, Any] | None, ...] | None:
    """torch.export dims for the string-named axes; one Dim per name, shared across inputs."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = []
    for spec in inputs:
        axes = {}
        for axis, size in enumerate(spec.shape):
            if not isinstance(size, str):
                continue
            if not size.isidentifier():
                raise RecipeError(f"model.inputs '{spec.name}': dynamic dimension '{size}' must "
                                  "be a Python identifier such as 'batch'.")
            if size not in dims:
                dims[size] = Dim(size)
            axes[axis] = dims[size]
        shapes.append(axes or None)
    return tuple(shapes) if any(shapes) else None


def dynamic_axes(inputs: Any) -> dict[str, dict[int, str]]:
    """The TorchScript exporter's form of the string-named axes: input name -> {axis: name}."""
    axes = {spec.name: {axis: size for axis, size in enumerate(spec.shape)
                        if isinstance(size, str)} for spec in inputs}
    return {name: named for name, named in axes.items() if named}


def flatten(result: Any) -> list[Any]:
    """Outputs in the order the exporter flattens them: dicts by insertion, sequences in order."""
    if isinstance(result, Mapping):
        result = list(result.values())
    if isinstance(result, list | tuple):
        return [leaf for item in result for leaf in flatten(item)]
    return [result]
