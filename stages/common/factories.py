"""Import a user's callable by its explicit dotted path: recipes never name arbitrary targets.

The module is checked before it is imported (``stages.common.trust``): a factory comes from
the working tree or a package the recipe trusts, never from the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from stages.common.trust import check_callable, check_factory, split

if TYPE_CHECKING:
    from collections.abc import Iterable


def import_callable(dotted: str, key: str, trusted: Iterable[str] = ()) -> Any:
    """The callable ``package.module:attr`` names; ``key`` is the recipe key, for errors;
    ``trusted`` the top-level packages outside the working tree it may come from."""
    check_factory(dotted, key, trusted)
    module_name, attribute = split(dotted, key)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
            check_callable(target, dotted, key)  # never through another module it imported
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"{key} '{dotted}' cannot be imported (modules are found from the "
                          f"current directory): {exc}") from exc
    if not callable(target):
        raise RecipeError(f"{key} '{dotted}' is a {type(target).__name__}, not a callable.")
    return target
