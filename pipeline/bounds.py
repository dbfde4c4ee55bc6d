"""Lower bounds of numeric recipe keys, declared beside the field and checked at plan time.

A params or schema dataclass marks a count with ``at_least``::

    samples: int = at_least(1, 128)
    samples: int = at_least(0, 0, "0 = the whole evaluation split")

and ``check_bounds`` walks a resolved section against its dataclass, nested dataclasses
included, so ``quantize.calibration.samples=-5`` fails before any stage runs, naming the key.
``check_list_items`` covers a gap in OmegaConf 2.3's own checks: a typed list of scalars
(``run.targets: list[str]``) takes a list or mapping as an item unchecked (``[[]]``).
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from omegaconf import Container, ListConfig

from pipeline.errors import RecipeError

MINIMUM = "edgekiln.minimum"


def at_least(minimum: int, default: int | None, meaning: str = "") -> Any:
    """A dataclass field defaulting to ``default`` whose value may not be below ``minimum``
    (None stays allowed for an optional field); ``meaning`` explains the smallest value."""
    return dataclasses.field(default=default, metadata={MINIMUM: (minimum, meaning)})


def check_bounds(schema: type, values: Any, where: str) -> None:
    """Raise RecipeError naming ``where.<field>`` for the first value below its minimum."""
    if not dataclasses.is_dataclass(schema) or not isinstance(values, dict):
        return
    for spec in dataclasses.fields(schema):
        if spec.name not in values:
            continue
        value, key = values[spec.name], f"{where}.{spec.name}"
        if MINIMUM in spec.metadata:
            _check(key, value, *spec.metadata[MINIMUM])
        else:
            check_bounds(_nested(spec), value, key)


def _check(key: str, value: Any, minimum: int, meaning: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return  # types are OmegaConf's to check
    if value < minimum:
        allowed = f"at least {minimum}" + (f" ({meaning})" if meaning else "")
        raise RecipeError(f"{key}: {value} is out of range; it must be {allowed}.")


def _nested(spec: dataclasses.Field[Any]) -> type:
    """The dataclass a field holds, judged from its default (types may be strings here)."""
    if spec.default_factory is not dataclasses.MISSING:
        default = spec.default_factory()
        return type(default) if dataclasses.is_dataclass(default) else object
    return type(spec.default) if dataclasses.is_dataclass(spec.default) else object


def check_list_items(node: Container, where: str) -> None:
    """Raise RecipeError naming ``where.<key>.<i>`` for a list or mapping given as an item of a
    list the schema types as scalars. Child nodes are read unresolved (OmegaConf's node API,
    which holds each list's element type), so an interpolation is never evaluated here."""
    if isinstance(node, ListConfig):
        children = [(str(i), node._get_node(i)) for i in range(len(node))]
        element = node._metadata.element_type
        for index, item in children if _is_scalar_type(element) else ():
            if isinstance(item, Container) and not item._is_none():
                kind = "a list" if isinstance(item, ListConfig) else "a mapping"
                raise RecipeError(f"{where}.{index}: expected a {element.__name__}, got "
                                  f"{kind} ({item}).")
    else:  # a None or missing mapping has no keys
        children = [(str(key), node._get_node(key)) for key in node]
    for key, child in children:
        if isinstance(child, Container):
            check_list_items(child, f"{where}.{key}".lstrip("."))


def _is_scalar_type(element: Any) -> bool:
    return element in (str, int, float, bool) or (isinstance(element, type)
                                                  and issubclass(element, Enum))
