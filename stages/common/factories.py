"""Import a user's callable by its explicit dotted path: recipes never name arbitrary targets."""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.errors import RecipeError


def import_callable(dotted: str, key: str) -> Any:
    """The callable ``package.module:attr`` names; ``key`` is the recipe key, for errors."""
    module_name, _, attribute = dotted.partition(":")
    if not module_name or not attribute:
        raise RecipeError(f"{key} '{dotted}' must look like 'package.module:callable'.")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"{key} '{dotted}' cannot be imported (modules are found from the "
                          f"current directory): {exc}") from exc
    if not callable(target):
        raise RecipeError(f"{key} '{dotted}' is a {type(target).__name__}, not a callable.")
    return target
