"""A stage node's params: its kind's defaults with the recipe's layers merged on top, checked.

Layers, later ones winning: the kind's params dataclass; the recipe's top-level section named
like the stage (``quantize:``, for the built-in kinds); ``stages.<name>.params``; then, for a
per-target node, ``targets.<t>.stages.<name>`` (``targets.<t>.quantize`` in older recipes).
OmegaConf checks every value against the dataclass, so a typo or a wrong type fails here,
naming the layer's full key.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.bounds import check_bounds, check_list_items
from pipeline.errors import RecipeError, did_you_mean
from pipeline.targets import LEGACY_STAGE_OVERRIDES

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from pipeline.graph import Stage


def stage_params(resolved: dict[str, Any], stage: Stage, target: str | None) -> dict[str, Any]:
    """The params ``stage`` runs with on ``target``, resolved, enums as strings."""
    spec = stage.spec
    if spec.params is None:
        if stage.params:
            raise RecipeError(f"stages.{stage.name}.params: kind '{spec.kind}' takes no params.")
        return {}
    layers = _layers(resolved, stage, target)
    for where, layer in layers:  # each layer on its own: the error names the key it set
        check_bounds(spec.params, layer, where)
    if len(layers) == 1 and layers[0][0] == stage.name:
        # only the top-level section, which composition already checked against this very
        # dataclass and filled with its defaults: a second merge would only cost time
        return copy.deepcopy(layers[0][1])  # the node may take keys out of its own copy
    merged = OmegaConf.structured(spec.params)
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise RecipeError(_explain(where, exc, merged)) from None
        check_list_items(merged, where)
    return OmegaConf.to_container(merged, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def _layers(resolved: dict[str, Any], stage: Stage,
            target: str | None) -> list[tuple[str, dict[str, Any]]]:
    layers = []
    if stage.spec.section and stage.name == stage.spec.kind and stage.name in resolved:
        layers.append((stage.name, resolved[stage.name]))
    layers.append((f"stages.{stage.name}.params", stage.params))
    if target is not None:
        section = resolved["targets"][target]
        layers.append((f"targets.{target}.stages.{stage.name}",
                       section["stages"].get(stage.name) or {}))
        if stage.name in LEGACY_STAGE_OVERRIDES:
            layers.append((f"targets.{target}.{stage.name}", section[stage.name]))
    return [(where, layer) for where, layer in layers if layer]


def _explain(where: str, exc: OmegaConfBaseException, merged: DictConfig) -> str:
    key = str(exc.full_key or "")
    message = f"{where}.{key}".rstrip(".") + f": {str(exc).splitlines()[0]}"
    if isinstance(exc, ConfigKeyError) and key:
        parent, _, leaf = key.rpartition(".")
        options = OmegaConf.select(merged, parent) if parent else merged
        if options is not None and OmegaConf.is_dict(options):
            message += did_you_mean(leaf, list(options))
    return message
