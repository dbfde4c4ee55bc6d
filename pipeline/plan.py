"""Turn a composed recipe into a checked, ordered plan of stage nodes; nothing runs here.

The recipe's declared graph (``pipeline.graph``) fans out over targets: a stage whose kind is
per-target becomes one node per target (``quantize@jetson_orin``), and a target-agnostic
upstream feeds every copy. A kind may fan a node out further into variants of itself
(``quantize.static@cpu``, ``quantize.dynamic@cpu`` feeding ``quantize@cpu``, which chooses
among them), each cached on its own. Each node gets its params (kind defaults < top-level section <
``stages.<name>.params`` < ``targets.<t>.stages.<name>``) and the shared recipe keys its kind
reads; together they are what enters its cache key. Every check that can fail does so here,
before the first expensive step.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import graph
from pipeline.bounds import check_bounds, check_list_items
from pipeline.errors import RecipeError, did_you_mean
from pipeline.params import stage_params
from pipeline.registry import REGISTRY, load_kinds
from pipeline.schema import CORE_SECTIONS, DATASET_SOURCES, DatasetConfig, ModelConfig, RunConfig
from pipeline.targets import KNOWN_PROVIDERS

if TYPE_CHECKING:
    from pipeline.registry import StageSpec

DATASET_PATHS = tuple(k for k in DATASET_SOURCES if k.endswith("path"))
# the slots in which a node reads the variants it fans out into: "variant.<name>"
VARIANT_SLOT = "variant."


@dataclass(frozen=True)
class Node:
    name: str  # "export", or "quantize@jetson_orin" for per-target work
    stage: str  # the stage's name in the recipe
    spec: StageSpec
    target: str | None
    config: dict[str, Any]  # the shared keys spec.reads + params under spec.kind; keyed
    upstream: dict[str, str]  # input slot -> upstream node name
    sources: dict[str, str]  # recipe key -> file or directory whose content enters the key
    cache: bool = True  # stages.<name>.cache: false -> always rebuilt
    publish: dict[str, Any] | None = None  # params only the publisher reads (signing)
    variant: bool = False  # one of the variants a node fans out into: its failure is contained

    @property
    def exclusive(self) -> bool:
        rule = self.spec.exclusive
        return rule(self.config) if callable(rule) else rule


@dataclass(frozen=True)
class Plan:
    recipe: str
    resolved: dict[str, Any]  # the whole recipe, resolved, for the manifest
    targets: tuple[str, ...]
    nodes: dict[str, Node]  # in execution (topological) order
    force: frozenset[str]  # node names to rebuild even when cached

    def chain(self, name: str) -> list[str]:
        """``name`` and every node it reads, directly or not, in plan order."""
        needed, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current not in needed:
                needed.add(current)
                todo.extend(self.nodes[current].upstream.values())
        return [n for n in self.nodes if n in needed]


def build(cfg: DictConfig) -> Plan:
    """Check ``cfg`` and expand it into nodes, in an order where inputs come first."""
    load_kinds()
    check_list_items(cfg, "")
    resolved = _resolve(_derived(cfg))
    _check_sections(resolved)
    for section, schema in (("model", ModelConfig), ("dataset", DatasetConfig), ("run", RunConfig)):
        check_bounds(schema, resolved[section], section)
    _check_files(resolved)
    stages = graph.declared(resolved["stages"])
    per_target = any(stage.spec.per_target for stage in stages.values())
    targets = _select_targets(resolved) if per_target else ()
    nodes: dict[str, Node] = {}
    for stage in stages.values():
        for target in targets if stage.spec.per_target else (None,):
            for node in _node(resolved, stage, target, stages):
                nodes[node.name] = node
    return Plan(recipe=resolved["name"], resolved=resolved, targets=targets, nodes=nodes,
                force=_forced(resolved["run"]["force"], nodes))


def node_name(stage: str, target: str | None) -> str:
    return f"{stage}@{target}" if target else stage


def _derived(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the keys that installed kinds derive for it (a copy, when there are any)."""
    found = {key: value for spec in REGISTRY.values() if spec.derive is not None
             for key, value in spec.derive(cfg).items()}
    if not found:
        return cfg
    cfg = copy.deepcopy(cfg)
    for key, value in found.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as exc:
            raise RecipeError(f"{key}: derived as {value!r}, which the schema refuses: "
                              f"{str(exc).splitlines()[0]}") from None
    return cfg


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True,
                                      throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{exc.full_key or 'recipe'}: {str(exc).splitlines()[0]}") from None


def _check_sections(resolved: dict[str, Any]) -> None:
    """Top-level keys are the recipe's own or the sections of installed stage kinds."""
    known = [*CORE_SECTIONS, *(kind for kind, spec in REGISTRY.items() if spec.section)]
    for key in resolved:
        if key not in known and key != "hydra":
            raise RecipeError(f"{key}: not a recipe key.{did_you_mean(key, known)} Top-level "
                              f"keys: {', '.join(known)}; a further stage's settings go under "
                              f"stages.<name>.params.")
    for key in ("model", "dataset", "targets", "stages"):
        # the schema types them as mappings, but a recipe's `stages: x` replaces the node whole
        if not isinstance(resolved.get(key, {}), dict):
            raise RecipeError(f"{key}: expected a mapping ({key}.<name>: ...), got "
                              f"{type(resolved[key]).__name__} {str(resolved[key])[:60]!r}.")


def _node(resolved: dict[str, Any], stage: graph.Stage, target: str | None,
          stages: dict[str, graph.Stage]) -> list[Node]:
    """The node of ``stage`` on ``target``, after the variants it fans out into (if any)."""
    spec = stage.spec
    view = _target_view(resolved, target) if target else resolved
    params = stage_params(resolved, stage, target)
    publish = {key: params.pop(key) for key in spec.publish_params if key in params}
    config = _config(spec, view, params)
    if spec.check is not None:
        spec.check(config)
    upstream = {}
    for slot, up in stage.inputs.items():
        upstream[slot] = node_name(up, target if stages[up].spec.per_target else None)
    sources = {key: value for key in spec.sources if (value := _get_path(view, key))}
    node = Node(node_name(stage.name, target), stage.name, spec, target, config, upstream,
                sources, stage.cache, publish or None)
    found = spec.variants(config) if spec.variants is not None else {}
    variants = [dataclasses.replace(node, name=node_name(f"{stage.name}.{name}", target),
                                    stage=f"{stage.name}.{name}", variant=True,
                                    config=_config(spec, view, variant))
                for name, variant in found.items()]
    slots = {f"{VARIANT_SLOT}{name}": variant.name
             for name, variant in zip(found, variants, strict=True)}
    return [*variants, dataclasses.replace(node, upstream={**upstream, **slots})]


def _config(spec: StageSpec, view: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The shared keys the kind reads with these params, and the params under its name."""
    config: dict[str, Any] = {}
    more = spec.reads_with(params, view) if spec.reads_with is not None else ()
    for key in (*spec.reads, *more):
        _set_path(config, key, _get_path(view, key))
    if spec.params is not None:
        config[spec.kind] = params
    return config


def _get_path(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _target_view(resolved: dict[str, Any], target: str) -> dict[str, Any]:
    # the name is part of the target section: stages that read it may write it into outputs;
    # where a stage runs (runtime.ray_resources) is not: it stays out of configs and keys
    section = resolved["targets"][target]
    runtime = {k: v for k, v in section["runtime"].items() if k != "ray_resources"}
    return {**resolved, "target": {**section, "runtime": runtime, "name": target}}


def _select_targets(resolved: dict[str, Any]) -> tuple[str, ...]:
    available = resolved["targets"]
    if not available:
        raise RecipeError(f"recipe '{resolved['name']}' lists no targets, but its per-target "
                          "stages need one: add one to its defaults, e.g. "
                          "'- /target@targets.cpu: x86_cpu'.")
    for name, target in available.items():
        _check_providers(name, target)
    wanted = resolved["run"]["targets"] or list(available)
    for name in wanted:
        if name not in available:
            raise RecipeError(f"run.targets: unknown target '{name}'."
                              f"{did_you_mean(name, available)} "
                              f"This recipe's targets: {', '.join(available)}.")
    return tuple(wanted)


def _check_providers(name: str, target: dict[str, Any]) -> None:
    providers = target["execution_providers"]
    if not providers:
        raise RecipeError(f"targets.{name}.execution_providers: list at least one provider.")
    for i, provider in enumerate(providers):
        if provider["name"] not in KNOWN_PROVIDERS:
            raise RecipeError(
                f"targets.{name}.execution_providers.{i}.name: unknown execution provider "
                f"'{provider['name']}'.{did_you_mean(provider['name'], KNOWN_PROVIDERS)}")


def _check_files(resolved: dict[str, Any]) -> None:
    for key in ("model.checkpoint", "model.path", *DATASET_PATHS):
        value = _get_path(resolved, key)
        if value and not Path(value).exists():
            raise RecipeError(f"{key}: '{value}' does not exist (paths are relative to "
                              f"{Path.cwd()}).")
    dataset = resolved["dataset"]
    kind = dataset["kind"]
    if kind in ("npz", "npy", "images", "text") and not any(
            _get_path(resolved, key) for key in DATASET_PATHS):
        raise RecipeError(f"dataset.path: required when dataset.kind={kind} (or give each split "
                          "its own dataset.calibration_path / evaluation_path).")
    if kind == "callable" and not dataset["factory"]:
        raise RecipeError("dataset.factory: required when dataset.kind=callable "
                          "('package.module:callable' yielding feed dicts).")


def _forced(requested: list[str], nodes: dict[str, Node]) -> frozenset[str]:
    forced = set()
    for item in requested:
        matches = [name for name, node in nodes.items()
                   if item in ("all", name, node.stage, node.spec.kind)]
        if not matches:
            choices = ["all", *(n.stage for n in nodes.values()), *nodes]
            raise RecipeError(f"run.force: unknown stage '{item}'.{did_you_mean(item, choices)} "
                              f"Choose from: {', '.join(dict.fromkeys(choices))}.")
        forced.update(matches)
    return frozenset(forced)
