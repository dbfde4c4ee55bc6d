"""How far a case may move from its last green night before it counts as a regression.

Defaults below; a tolerance file (``--tolerance-file nightly.yaml``) changes them for every
case, per recipe (fnmatch patterns, in file order) and per target of a recipe::

    defaults: {latency_slowdown: 0.25}
    recipes:
      resnet_*:
        size_growth: 0.10
        targets:
          jetson_orin: {require_target_ep: false}

A target key matches the bundle's target or its folder name (``cpu-package_dynamic``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, did_you_mean

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Tolerances:
    """Allowed change vs the last green night; drops and growths are absolute unless noted."""

    top1_agreement_drop: float = 0.01
    mean_cosine_drop: float = 0.005
    # increase of accuracy_drop (FP32 accuracy minus the candidate's), when labels exist
    accuracy_drop: float = 0.01
    max_abs_diff_growth: float = 0.5  # relative: a max over samples moves a lot on its own
    size_growth: float = 0.05  # relative, of the model and of the whole bundle
    cpu_fallback_growth: int = 0  # more nodes left to the CPU EP
    require_target_ep: bool = True  # validated on its EP last green night, and not tonight
    # latency: slower by more than max(slowdown x median, noise_k x noise, floor_ms); see
    # pipeline.nightly.regression.latency_check
    latency_slowdown: float = 0.15  # relative
    latency_noise_k: float = 3.0
    latency_floor_ms: float = 0.05


FIELDS = {f.name: f for f in dataclasses.fields(Tolerances)}


@dataclass(frozen=True)
class Policy:
    """The tolerance file, resolved per case."""

    defaults: dict[str, Any]
    recipes: dict[str, dict[str, Any]]

    def for_case(self, recipe: str, bundle: str, target: str | None) -> Tolerances:
        """Defaults < the file's defaults < matching recipe sections < their target's."""
        values = dict(self.defaults)
        for pattern, section in self.recipes.items():
            if fnmatch.fnmatchcase(recipe, pattern):
                values |= {k: v for k, v in section.items() if k != "targets"}
                for name, override in section.get("targets", {}).items():
                    if name in (bundle, target):
                        values |= override
        return Tolerances(**values)


def load(path: Path | None) -> Policy:
    """The policy of the tolerance file at ``path`` (defaults only without one)."""
    if path is None:
        return Policy({}, {})
    raw = _read(path)
    _check_keys(raw, {"defaults", "recipes"}, str(path))
    defaults = _values(raw.get("defaults") or {}, f"{path}: defaults")
    recipes = {str(pattern): _recipe_section(section or {}, f"{path}: recipes.{pattern}")
               for pattern, section in (raw.get("recipes") or {}).items()}
    return Policy(defaults, recipes)


def _recipe_section(section: Any, where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise RecipeError(f"{where}: expected a mapping of tolerance names to values.")
    targets = section.get("targets") or {}
    if not isinstance(targets, dict):
        raise RecipeError(f"{where}.targets: expected a mapping of target names.")
    values = _values({k: v for k, v in section.items() if k != "targets"}, where)
    return values | {"targets": {str(name): _values(override or {}, f"{where}.targets.{name}")
                                 for name, override in targets.items()}}


def _read(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    if not path.is_file():
        raise RecipeError(f"--tolerance-file: '{path}' does not exist.")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, YAMLError) as exc:
        raise RecipeError(f"{path}: not a readable YAML mapping: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping with 'defaults' and/or 'recipes'.")
    return raw


def _values(section: Any, where: str) -> dict[str, Any]:
    """Check one mapping of tolerance names to values (names known, numbers numeric)."""
    if not isinstance(section, dict):
        raise RecipeError(f"{where}: expected a mapping of tolerance names to values.")
    _check_keys(section, set(FIELDS), where)
    for key, value in section.items():
        kind = FIELDS[key].type  # a string: annotations are not evaluated
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (isinstance(value, bool) if kind == "bool" else number and value >= 0):
            raise RecipeError(f"{where}.{key}: expected a{'' if kind == 'bool' else ' positive'}"
                              f" {kind}, got {value!r}.")
    return dict(section)


def _check_keys(section: dict[str, Any], known: set[str], where: str) -> None:
    for key in section:
        if key not in known:
            raise RecipeError(f"{where}: unknown key '{key}'.{did_you_mean(str(key), known)} "
                              f"Known: {', '.join(sorted(known))}.")
