"""The stage contract: a plain function plus a declared spec, kept in one registry.

A stage function takes a ``StageContext`` and writes its output files into ``ctx.out``. It
reads its own settings (``ctx.params``, checked against the kind's params dataclass), the
shared recipe keys it declares in ``reads`` (the context holds nothing else, so the cache key,
which is built from the same values, cannot miss an input), and its upstream outputs through
``ctx.inputs``. It returns a small JSON-able summary that the executor records beside it.

Kinds are found through the ``edgekiln.stages`` entry-point group, edgekiln's own included, so
the core never names one. A kind that fails to load fails the run (never warn and skip).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem, RecipeError, did_you_mean

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig

ENTRY_POINTS = "edgekiln.stages"


@dataclass(frozen=True)
class StageContext:
    """What a running stage may see."""

    # the shared keys in spec.reads and, under the kind's name, the stage's own params
    config: DictConfig
    inputs: dict[str, Path]  # input slot -> upstream output directory
    out: Path  # empty directory the stage writes into
    target: str | None = None  # target name for per-target stages
    report: Callable[[str], None] = field(default=lambda _msg: None)  # live status line
    kind: str | None = None
    # input slots whose variant failed to build, with why (the node chooses among the rest)
    lost: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> DictConfig:
        """This stage's own settings (``stages.<name>.params`` or its top-level section)."""
        return self.config[self.kind]


StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    fn: StageFn
    # dataclass of the kind's settings; a recipe's params are checked against it at plan time
    params: type | None = None
    # input slots a recipe must connect, and those it may leave out
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    # shared recipe keys (model, dataset, target, ...) the stage reads; they enter the key
    reads: tuple[str, ...] = ()
    # further shared keys read only with some params or recipes (quantize.mode=auto reads the
    # target), given (the node's params, the resolved recipe): the rest keep them out of keys
    reads_with: Callable[[dict[str, Any], dict[str, Any]], tuple[str, ...]] | None = None
    # bump when the output bytes change for the same inputs
    version: int = 1
    # one node per target; a target-agnostic upstream feeds every copy
    per_target: bool = False
    # distributions whose versions enter the cache key
    tools: tuple[str, ...] = ()
    # recipe keys naming files or directories whose content enters the cache key
    sources: tuple[str, ...] = ()
    # runs alone, with no other stage beside it: latency measured next to a busy core lies;
    # a function of the node's config when only some settings time things
    exclusive: bool | Callable[[dict[str, Any]], bool] = False
    # measures the target's hardware: with run.executor=ray it runs only on a worker that
    # advertises the target's runtime.ray_resources
    on_target: bool = False
    # its output is a target's bundle; the publisher adds the manifest and archive
    publishes: bool = False
    # params the publisher reads, not the stage (signing keys): kept out of the stage's key
    publish_params: tuple[str, ...] = ()
    # the recipe may give the params of a stage of this kind's name in a top-level section
    # (``quantize:``), as recipes written before declared graphs do
    section: bool = False
    # checks of the resolved recipe (as this stage's node sees it) that must fail at plan time
    check: Callable[[dict[str, Any]], None] | None = None
    # recipe keys the recipe left unset that the kind derives from files it names (the inputs
    # of a Hugging Face model folder): given the composed recipe, {dotted key: value}. The
    # plan sets them before anything reads the recipe, so every node sees and keys them
    derive: Callable[[DictConfig], dict[str, Any]] | None = None
    # plan-time fan-out of one node into variants of the same kind (quantize.mode=auto's
    # candidates): given the node's config, {variant: its params}. Each variant becomes a node
    # of its own, with its own cache key, reading the node's inputs; the node reads them back
    # in slots "variant.<name>" and chooses among them
    variants: Callable[[dict[str, Any]], dict[str, dict[str, Any]]] | None = None

    @property
    def slots(self) -> tuple[str, ...]:
        return (*self.inputs, *self.optional_inputs)


REGISTRY: dict[str, StageSpec] = {}


def stage(kind: str, **spec: Any) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the implementation of stage ``kind``."""

    def register(fn: StageFn) -> StageFn:
        if kind in REGISTRY:
            raise ValueError(f"stage kind '{kind}' is registered twice")
        params = list(inspect.signature(fn).parameters)
        if params != ["ctx"]:
            raise TypeError(f"stage '{kind}' must take exactly (ctx), not ({', '.join(params)})")
        schema = spec.get("params")
        if schema is not None and not is_dataclass(schema):
            raise TypeError(f"stage '{kind}': params must be a dataclass, not {schema!r}")
        REGISTRY[kind] = StageSpec(kind=kind, fn=fn, **spec)
        return fn

    return register


def load_kinds() -> dict[str, StageSpec]:
    """Import every module of the ``edgekiln.stages`` entry points; each registers its kinds."""
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if point.name in REGISTRY:
            continue
        try:
            point.load()
        except Exception as exc:
            raise EnvironmentProblem(
                f"stage kind '{point.name}' (entry point '{point.value}' in group "
                f"'{ENTRY_POINTS}', from {_distribution(point)}) failed to load: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall that package.") from exc
        if point.name not in REGISTRY:
            raise EnvironmentProblem(
                f"entry point '{point.name} = {point.value}' in group '{ENTRY_POINTS}' "
                f"(from {_distribution(point)}) registered no stage kind named "
                f"'{point.name}'; its module must decorate a function with "
                f"@stage('{point.name}', ...).")
    if not REGISTRY:
        raise EnvironmentProblem("no stage kinds are installed: edgekiln's own come from its "
                                 "package metadata; run pip install -e . first.")
    return REGISTRY


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    return f"{dist.name} {dist.version}" if dist else "an unknown distribution"


def get_stage(kind: str, where: str) -> StageSpec:
    """Look up a stage kind, suggesting the nearest name when it is unknown."""
    try:
        return REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise RecipeError(
            f"{where}: unknown stage kind '{kind}'.{did_you_mean(kind, REGISTRY)} "
            f"Known kinds: {known}. A team's own kind is installed as an entry point in "
            f"group '{ENTRY_POINTS}' (README, 'Adding a stage kind')."
        ) from None
