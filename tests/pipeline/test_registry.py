"""Stage kinds register once, with a checked signature, and every built-in kind is declared as
an entry point (a forgotten one would silently vanish from every recipe)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import RecipeError
from pipeline.registry import ENTRY_POINTS, REGISTRY, get_stage, load_kinds, stage

ROOT = Path(__file__).resolve().parents[2]


def test_every_built_in_kind_is_an_entry_point_and_loads() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "project"]["entry-points"][ENTRY_POINTS]
    folders = {p.parent.name: f"stages.{p.parent.name}.stage"
               for p in (ROOT / "stages").glob("*/stage.py")}
    assert declared == folders
    kinds = load_kinds()
    assert set(declared) <= set(kinds)
    for name in declared:
        assert kinds[name].fn.__module__ == declared[name]


def test_an_unknown_kind_gets_the_nearest_name() -> None:
    load_kinds()
    with pytest.raises(RecipeError, match=r"stages\.q\.kind: unknown stage kind 'quantise'\. "
                                          r"Did you mean 'quantize'\?"):
        get_stage("quantise", "stages.q.kind")


def test_a_kind_is_registered_once_with_a_ctx_only_signature() -> None:
    load_kinds()
    with pytest.raises(ValueError, match="stage kind 'export' is registered twice"):
        stage("export")(lambda ctx: {})
    with pytest.raises(TypeError, match=r"must take exactly \(ctx\), not \(ctx, extra\)"):
        stage("toy_kind")(lambda ctx, extra: {})

    class NotADataclass:
        pass

    with pytest.raises(TypeError, match="params must be a dataclass"):
        stage("toy_kind", params=NotADataclass)(lambda ctx: {})
    assert "toy_kind" not in REGISTRY


def test_a_registered_kind_keeps_its_params_schema() -> None:
    @dataclass
    class ToyParams:
        level: int = 1

    try:
        stage("toy_params_kind", params=ToyParams, inputs=("model",))(lambda ctx: {})
        spec = REGISTRY["toy_params_kind"]
        assert (spec.params, spec.slots) == (ToyParams, ("model",))
    finally:
        REGISTRY.pop("toy_params_kind", None)
