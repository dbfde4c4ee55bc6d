"""Turn a composed recipe into a checked, ordered plan of stage nodes; nothing runs here.

The graph is fixed by the stage kinds' declared inputs; per-target kinds fan out::

    export ──> optimize ──┬──> quantize@t ──┬──> validate@t      (validate also reads optimize,
                          │                 └──> package@t        the FP32 reference)
                          └── (one copy of each per-target stage for every target t)

Every check that can fail does so here, before the first expensive step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import stages  # noqa: F401 -- importing it registers every stage kind
from pipeline.errors import RecipeError, did_you_mean
from pipeline.registry import REGISTRY, StageSpec
from pipeline.schema import DATASET_SOURCES
from stages.export.stage import require_framework

PIPELINE = ("export", "optimize", "quantize", "validate", "package")
KNOWN_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
    "NnapiExecutionProvider", "QNNExecutionProvider", "XnnpackExecutionProvider",
    "ROCMExecutionProvider", "MIGraphXExecutionProvider", "ACLExecutionProvider",
    "ArmNNExecutionProvider", "RknpuExecutionProvider", "VitisAIExecutionProvider",
    "WebGpuExecutionProvider", "AzureExecutionProvider", "SNPEExecutionProvider",
    "DnnlExecutionProvider", "TvmExecutionProvider", "CANNExecutionProvider",
)
DATASET_PATHS = tuple(k for k in DATASET_SOURCES if k.endswith("path"))


@dataclass(frozen=True)
class Node:
    name: str  # "export", or "quantize@jetson_orin" for per-target work
    spec: StageSpec
    target: str | None
    config: dict[str, Any]  # the recipe keys spec.reads, resolved; part of the cache key
    upstream: dict[str, str]  # input slot -> upstream node name
    sources: dict[str, str]  # recipe key -> file or directory whose content enters the key

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


def build(cfg: DictConfig) -> Plan:
    """Check ``cfg`` and expand it into nodes, in an order where inputs come first."""
    resolved = _resolve(cfg)
    _check_model(resolved)
    targets = _select_targets(resolved)
    views = {target: _target_view(cfg, resolved, target) for target in targets}
    nodes: dict[str, Node] = {}
    for kind in PIPELINE:
        spec = REGISTRY[kind]
        for target in targets if spec.per_target else (None,):
            node = _node(spec, views[target] if target else resolved, target)
            nodes[node.name] = node
    return Plan(recipe=resolved["name"], resolved=resolved, targets=targets, nodes=nodes,
                force=_forced(resolved["run"]["force"], nodes))


def node_name(kind: str, target: str | None) -> str:
    return f"{kind}@{target}" if target else kind


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True,
                                      throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{exc.full_key or 'recipe'}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def _node(spec: StageSpec, view: dict[str, Any], target: str | None) -> Node:
    config = {}
    for key in spec.reads:
        _set_path(config, key, _get_path(view, key))
    upstream = {}
    for slot, kind in spec.inputs.items():
        up_target = target if REGISTRY[kind].per_target else None
        upstream[slot] = node_name(kind, up_target)
    sources = {key: value for key in spec.sources if (value := _get_path(view, key))}
    return Node(node_name(spec.kind, target), spec, target, config, upstream, sources)


def _get_path(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _target_view(cfg: DictConfig, resolved: dict[str, Any], target: str) -> dict[str, Any]:
    """The recipe as one target sees it: its own section, and its quantize overrides applied."""
    overrides = resolved["targets"][target]["quantize"]
    try:
        quantize = OmegaConf.merge(cfg.quantize, overrides)
    except OmegaConfBaseException as exc:
        inner = str(exc.full_key).removeprefix("quantize").lstrip(".")
        key = f"targets.{target}.quantize.{inner}".rstrip(".")
        raise RecipeError(f"{key}: {_first_line(exc)}") from None
    # the name is part of the target section: stages that read it may write it into outputs
    return {**resolved, "target": {**resolved["targets"][target], "name": target},
            "quantize": OmegaConf.to_container(quantize, enum_to_str=True)}


def _select_targets(resolved: dict[str, Any]) -> tuple[str, ...]:
    available = resolved["targets"]
    if not available:
        raise RecipeError(f"recipe '{resolved['name']}' lists no targets: add one to its "
                          "defaults, e.g. '- /target@targets.cpu: x86_cpu'.")
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


def _check_model(resolved: dict[str, Any]) -> None:
    model = resolved["model"]
    framework = model["framework"]
    needs = {"torch": "factory", "tensorflow": None, "onnx": "path"}[framework]
    if needs and not model[needs]:
        raise RecipeError(f"model.{needs}: required when model.framework={framework}.")
    if framework == "tensorflow" and not (model["path"] or model["factory"]):
        raise RecipeError("model.path or model.factory: one is required for tensorflow.")
    for key in ("model.checkpoint", "model.path", *DATASET_PATHS):
        value = _get_path(resolved, key)
        if value and not Path(value).exists():
            raise RecipeError(f"{key}: '{value}' does not exist (paths are relative to "
                              f"{Path.cwd()}).")
    _check_dataset_source(resolved["dataset"])
    require_framework(framework)


def _check_dataset_source(dataset: dict[str, Any]) -> None:
    kind = dataset["kind"]
    if kind in ("npz", "npy", "images") and not any(
            _get_path({"dataset": dataset}, key) for key in DATASET_PATHS):
        raise RecipeError(f"dataset.path: required when dataset.kind={kind} (or give each split "
                          "its own dataset.calibration_path / evaluation_path).")
    if kind == "callable" and not dataset["factory"]:
        raise RecipeError("dataset.factory: required when dataset.kind=callable "
                          "('package.module:callable' yielding feed dicts).")


def _forced(requested: list[str], nodes: dict[str, Node]) -> frozenset[str]:
    forced = set()
    for item in requested:
        matches = [name for name, node in nodes.items()
                   if item in ("all", name, node.spec.kind)]
        if not matches:
            choices = ["all", *PIPELINE, *nodes]
            raise RecipeError(f"run.force: unknown stage '{item}'.{did_you_mean(item, choices)} "
                              f"Choose from: {', '.join(dict.fromkeys(choices))}.")
        forced.update(matches)
    return frozenset(forced)
