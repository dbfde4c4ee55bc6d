"""The stage contract: a plain function plus a declared spec, kept in one registry.

A stage function takes a ``StageContext`` and writes its output files into ``ctx.out``. It
reads only the recipe keys it declares in ``reads`` (the context holds nothing else, so the
cache key, which is built from the same keys, cannot miss an input), and its upstream outputs
through ``ctx.inputs``. It returns a small JSON-able summary (metrics, digests) that the
executor records beside the output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, did_you_mean

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig


@dataclass(frozen=True)
class StageContext:
    """What a running stage may see."""

    config: DictConfig  # only the keys in spec.reads, resolved and read-only
    inputs: dict[str, Path]  # input slot -> upstream output directory
    out: Path  # empty directory the stage writes into
    target: str | None = None  # target name for per-target stages
    report: Callable[[str], None] = field(default=lambda _msg: None)  # live status line


StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    fn: StageFn
    # input slot -> kind of the upstream stage that feeds it
    inputs: dict[str, str]
    # dotted recipe keys the stage reads; they (resolved) enter the cache key
    reads: tuple[str, ...]
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


REGISTRY: dict[str, StageSpec] = {}


def stage(kind: str, **spec: Any) -> Callable[[StageFn], StageFn]:
    """Register ``fn`` as the implementation of stage ``kind``."""

    def register(fn: StageFn) -> StageFn:
        if kind in REGISTRY:
            raise ValueError(f"stage kind '{kind}' is registered twice")
        params = list(inspect.signature(fn).parameters)
        if params != ["ctx"]:
            raise TypeError(f"stage '{kind}' must take exactly (ctx), not ({', '.join(params)})")
        REGISTRY[kind] = StageSpec(kind=kind, fn=fn, **spec)
        return fn

    return register


def get_stage(kind: str) -> StageSpec:
    """Look up a stage kind, suggesting the nearest name when it is unknown."""
    try:
        return REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise RecipeError(
            f"unknown stage '{kind}'.{did_you_mean(kind, REGISTRY)} Known stages: {known}."
        ) from None
