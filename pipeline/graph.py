"""The stage graph a recipe declares under ``stages:``, checked and ordered; nothing runs here.

Each entry names a kind and wires the kind's input slots to other stages by name. Edges point
from a stage to the stages that read its output, as DVC draws them::

    export ──> optimize ──> quantize ──┬──> validate ──> package      (the default preset,
                   └───────────────────┴──────^                        recipes/pipeline/)

Every problem is a RecipeError naming ``stages.<name>...``: an unknown kind, a slot the kind
does not have or that is left unconnected, an input naming no stage, a cycle.
"""

from __future__ import annotations

import graphlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, did_you_mean
from pipeline.registry import get_stage

if TYPE_CHECKING:
    from pipeline.registry import StageSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    spec: StageSpec
    inputs: dict[str, str]  # input slot -> upstream stage name
    params: dict[str, Any]  # stages.<name>.params as written
    cache: bool


def declared(entries: dict[str, Any]) -> dict[str, Stage]:
    """The recipe's stages in an order where every stage follows the ones it reads."""
    if not entries:
        raise RecipeError("stages: the recipe declares no stages; pick a preset such as "
                          "'- override /pipeline: default' or list them under 'stages:'.")
    stages = {name: _stage(name, entry) for name, entry in entries.items()}
    for stage in stages.values():
        _check_inputs(stage, stages)
    order = _toposort(stages)
    _warn_unused(stages)
    return {name: stages[name] for name in order}


def _stage(name: str, entry: dict[str, Any]) -> Stage:
    spec = get_stage(entry["kind"], f"stages.{name}.kind")
    return Stage(name, spec, dict(entry["inputs"]), dict(entry["params"]), entry["cache"])


def _check_inputs(stage: Stage, stages: dict[str, Stage]) -> None:
    spec, where = stage.spec, f"stages.{stage.name}.inputs"
    for slot, upstream in stage.inputs.items():
        if slot not in spec.slots:
            raise RecipeError(
                f"{where}.{slot}: kind '{spec.kind}' has no input slot '{slot}'."
                f"{did_you_mean(slot, spec.slots)} Its slots: {_slot_list(spec)}.")
        if upstream not in stages:
            raise RecipeError(
                f"{where}.{slot}: no stage named '{upstream}'.{did_you_mean(upstream, stages)} "
                f"This recipe's stages: {', '.join(stages)}.")
        if stages[upstream].spec.per_target and not spec.per_target:
            raise RecipeError(
                f"{where}.{slot}: '{stage.name}' ({spec.kind}) runs once for all targets, so it "
                f"cannot read '{upstream}', which runs once per target.")
    missing = [slot for slot in spec.inputs if slot not in stage.inputs]
    if missing:
        raise RecipeError(
            f"{where}: kind '{spec.kind}' expects inputs {list(spec.inputs)}, got "
            f"{list(stage.inputs)}; connect {', '.join(missing)} to a stage, e.g. "
            f"'{missing[0]}: <stage name>'. Its slots: {_slot_list(spec)}.")


def _slot_list(spec: StageSpec) -> str:
    slots = [*spec.inputs, *(f"{slot} (optional)" for slot in spec.optional_inputs)]
    return ", ".join(slots) or "none"


def _toposort(stages: dict[str, Stage]) -> list[str]:
    """Kahn's order, ties broken by declaration order so a recipe always plans the same way."""
    position = {name: i for i, name in enumerate(stages)}
    sorter = graphlib.TopologicalSorter(
        {name: set(stage.inputs.values()) for name, stage in stages.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        loop = " -> ".join(exc.args[1][::-1])
        raise RecipeError(f"stages: the inputs form a cycle: {loop}. A stage can only read "
                          "stages that do not read it back.") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _warn_unused(stages: dict[str, Stage]) -> list[str]:
    """Stages no bundle depends on: they run and are cached, but nothing ships their output."""
    needed: set[str] = set()
    todo = [name for name, stage in stages.items() if stage.spec.publishes]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(stages[name].inputs.values())
    unused = [name for name in stages if name not in needed]
    for name in unused:
        log.warning("stages.%s: no bundle depends on this stage (no publishing stage such as "
                    "'package' reads it, directly or through others); it runs but nothing "
                    "ships its output", name)
    return unused
