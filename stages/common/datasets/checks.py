"""Whether samples fit the model's inputs: names, dtypes, fixed dims and shared dynamic dims.

One comparison serves both times data is checked: when a stage loads a split (``splits.py``)
and when the plan is built (``early.py``), from what one sample of each source looks like.
It compares layouts (input name -> dtype name and shape), not arrays, so the plan-time check
never has to shape a sample, and this module needs no numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError

if TYPE_CHECKING:
    from collections.abc import Mapping

SPLITS = ("calibration", "evaluation", "training")

# input name -> (dtype name, shape with the batch axis)
Layout = dict[str, tuple[str, tuple[int, ...]]]


def layout_of(feed: Mapping[str, Any]) -> Layout:
    """The layout of a feed dict of numpy arrays."""
    return {name: (dtype_name(array.dtype), tuple(array.shape)) for name, array in feed.items()}


def dtype_name(dtype: Any) -> str:
    # a big-endian float32 is not what the model takes, so it must not pass as "float32"
    return dtype.name if dtype.isnative else dtype.str


def problem(layout: Layout, specs: list[Any]) -> str | None:
    """What about a sample of ``layout`` does not fit ``specs`` (``model.inputs``), if anything."""
    names = [spec.name for spec in specs]
    missing = [i for i, name in enumerate(names) if name not in layout]
    if missing:
        return (f"model input '{names[missing[0]]}' (model.inputs.{missing[0]}) has no data "
                f"(the sample has {sorted(layout)})")
    extra = sorted(set(layout) - set(names))
    if extra:
        return f"data {extra} matches no model input (the model's inputs are {names})"
    seen: dict[str, tuple[int, str]] = {}  # dynamic dim -> (its size, the input that has it)
    for index, spec in enumerate(specs):
        found = _input_problem(index, spec, layout[spec.name], seen)
        if found:
            return found
    return None


def _input_problem(index: int, spec: Any, found: tuple[str, tuple[int, ...]],
                   seen: dict[str, tuple[int, str]]) -> str | None:
    dtype, shape = found
    declared, key = list(spec.shape), f"model.inputs.{index}"
    if dtype != spec.dtype:
        return (f"model input '{spec.name}' expects {spec.dtype} ({key}.dtype), the sample is "
                f"{dtype}")
    fits = len(shape) == len(declared) and all(
        size == dim for size, dim in zip(shape, declared, strict=True) if isinstance(dim, int))
    if not fits:
        return (f"model input '{spec.name}' expects samples of shape {declared} ({key}.shape, "
                f"batch axis included), the sample has {list(shape)}")
    # one name is one size: the torch exporter makes a dim that inputs share a single symbol
    for size, dim in zip(shape, declared, strict=True):
        if not isinstance(dim, str):
            continue
        first, where = seen.setdefault(dim, (size, f"'{spec.name}' ({key})"))
        if first != size:
            return (f"dynamic dim '{dim}' is {first} in model input {where} but {size} in "
                    f"'{spec.name}' ({key}) of the same sample; a dim named alike must have "
                    "one size")
    return None


def one_image_input(kind: str, names: list[str]) -> str:
    """The input an image source (digits, images) feeds; it feeds exactly one."""
    if len(names) != 1:
        raise RecipeError(f"dataset.kind={kind} feeds one image input; the model has "
                          f"{len(names)} inputs {names}.")
    return names[0]
