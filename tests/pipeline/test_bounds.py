"""Counts below their declared minimum are recipe errors when the plan is built, naming the key
the recipe set, wherever it set it."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pytest

from pipeline import plan
from pipeline.bounds import MINIMUM, at_least, check_bounds
from pipeline.errors import RecipeError
from tests.fixtures.cli import run_cli
from tests.fixtures.recipes import compose_recipe

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(("override", "key", "minimum"), [
    ("quantize.calibration.samples=-5", "quantize.calibration.samples", 1),
    ("quantize.calibration.samples=0", "quantize.calibration.samples", 1),
    ("quantize.calibration.batch_size=0", "quantize.calibration.batch_size", 1),
    ("quantize.accuracy_budget.samples=-1", "quantize.accuracy_budget.samples", 0),
    ("quantize.auto.samples=0", "quantize.auto.samples", 1),
    ("quantize.qat.epochs=0", "quantize.qat.epochs", 1),
    ("validate.samples=0", "validate.samples", 1),
    ("validate.gates.max_cpu_fallback_nodes=-1", "validate.gates.max_cpu_fallback_nodes", 0),
    ("export.parity_samples=-2", "export.parity_samples", 0),
    ("dataset.calibration_size=0", "dataset.calibration_size", 1),
    ("dataset.evaluation_size=-3", "dataset.evaluation_size", 1),
    ("dataset.training_size=-1", "dataset.training_size", 0),
    ("model.dynamic_size=0", "model.dynamic_size", 1),
    ("run.jobs=0", "run.jobs", 1),
    ("+stages.quantize.params.calibration.samples=-5",
     "stages.quantize.params.calibration.samples", 1),
    ("+targets.cpu.stages.validate.samples=0", "targets.cpu.stages.validate.samples", 1),
])
def test_a_count_below_its_minimum_fails_the_plan_naming_the_key(override: str, key: str,
                                                                 minimum: int) -> None:
    value = override.rpartition("=")[2]
    with pytest.raises(RecipeError, match=rf"^{re.escape(key)}: {value} is out of range; it "
                                          rf"must be at least {minimum}"):
        plan.build(compose_recipe("digits_torch", override))


def test_the_smallest_allowed_values_plan() -> None:
    nodes = plan.build(compose_recipe(
        "digits_torch", "quantize.accuracy_budget.samples=0", "export.parity_samples=0",
        "quantize.calibration.samples=1", "dataset.training_size=0")).nodes
    assert nodes["quantize.static@cpu"].config["quantize"]["calibration"]["samples"] == 1


def test_nested_and_optional_fields_are_walked() -> None:
    @dataclasses.dataclass
    class Inner:
        count: int | None = at_least(1, None)

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        name: str = "x"

    assert dataclasses.fields(Inner)[0].metadata[MINIMUM] == (1, "")
    check_bounds(Outer, {"inner": {"count": None}, "name": "y"}, "section")
    with pytest.raises(RecipeError, match=r"^section\.inner\.count: 0 is out of range"):
        check_bounds(Outer, {"inner": {"count": 0}}, "section")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_the_cli_refuses_calibration_samples_below_one(tmp_path: Path, value: str) -> None:
    result = run_cli("recipe=digits_torch", f"quantize.calibration.samples={value}",
                     f"run.artifacts_dir={tmp_path}")
    assert result.code == 2, result.stderr
    assert (f"recipe error: quantize.calibration.samples: {value} is out of range; it must be "
            "at least 1.") in result.stderr
    assert "Traceback" not in result.stderr
    assert result.imported == []  # refused at plan time, before any framework loaded
    assert not (tmp_path / ".cache").exists()  # nothing was built


@pytest.mark.parametrize(("override", "message"), [
    pytest.param("run.targets=[[]]", r"^run\.targets\.0: expected a str, got a list \(\[\]\)\.$",
                 id="top-level section"),
    pytest.param("quantize.auto.candidates=[dynamic,{a: 1}]",
                 r"^quantize\.auto\.candidates\.1: expected a str, got a mapping",
                 id="a stage's section"),
    pytest.param("+stages.quantize.params.auto.candidates=[[static]]",
                 r"^stages\.quantize\.params\.auto\.candidates\.0: expected a str, got a list",
                 id="stages.<name>.params"),
])
def test_a_list_where_the_schema_wants_a_string_fails_the_plan(override: str,
                                                               message: str) -> None:
    # OmegaConf 2.3 lets a container stand in for a str item of a typed list; plan.build once
    # crashed on run.targets=[[]] with "unhashable type: 'list'" (found by test_recipe_fuzz)
    with pytest.raises(RecipeError, match=message):
        plan.build(compose_recipe("digits_torch", override))


def test_lists_of_mappings_and_interpolated_items_still_plan() -> None:
    # the x86_cpu target's execution_providers is a list of mappings, by its schema
    nodes = plan.build(compose_recipe("digits_torch",
                                      "run.targets=[${oc.env:EDGEKILN_T,cpu}]")).nodes
    assert "quantize.static@cpu" in nodes
