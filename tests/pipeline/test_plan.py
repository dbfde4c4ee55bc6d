"""Recipes compose, check and expand into the stage graph before anything runs."""

from __future__ import annotations

import pytest

from pipeline import plan
from pipeline.errors import RecipeError
from tests.fixtures.recipes import compose_recipe


def test_shared_work_runs_once_and_targets_fan_out() -> None:
    the_plan = plan.build(compose_recipe("resnet_jetson"))
    assert list(the_plan.nodes) == [
        "export", "optimize",
        # quantize.mode=auto: TensorRT gets its static QDQ, the CPU static per channel/tensor
        "quantize.static@jetson_orin", "quantize@jetson_orin",
        "quantize.static@cpu", "quantize.static_per_tensor@cpu", "quantize@cpu",
        "validate@jetson_orin", "validate@cpu",
        "package@jetson_orin", "package@cpu",
    ]
    assert the_plan.nodes["validate@cpu"].upstream == {"candidate": "quantize@cpu",
                                                       "reference": "optimize"}


def test_target_quantize_overrides_apply_to_that_target_only() -> None:
    nodes = plan.build(compose_recipe("resnet_jetson")).nodes
    jetson = nodes["quantize.static@jetson_orin"].config["quantize"]
    cpu = nodes["quantize.static@cpu"].config["quantize"]
    assert jetson["activation_type"] == "int8"
    assert jetson["activation_symmetric"] is True
    assert cpu["activation_type"] == "uint8"
    # so equal settings share a cache key across targets with the same EPs (which decide
    # whether a fused transformer graph is read); only auto's choice reads the whole target
    assert set(nodes["quantize.static@cpu"].config["target"]) == {"execution_providers"}
    assert "device" in nodes["quantize@cpu"].config["target"]


def test_stage_config_holds_only_what_it_reads() -> None:
    nodes = plan.build(compose_recipe("digits_torch")).nodes
    assert set(nodes["export"].config) == {"model", "export"}
    assert set(nodes["validate@cpu"].config) == {"validate", "dataset", "model", "target"}
    assert set(nodes["validate@cpu"].config["model"]) == {"inputs"}


@pytest.mark.parametrize(("overrides", "message"), [
    pytest.param(["run.force=[quantise]"], "run.force: unknown stage 'quantise'. "
                 "Did you mean 'quantize'?", id="force-typo"),
    pytest.param(["run.targets=[cpux]"], "run.targets: unknown target 'cpux'. "
                 "Did you mean 'cpu'?", id="target-typo"),
    pytest.param(["model.checkpoint=recipes/zoo/nope.pt"], "model.checkpoint: "
                 "'recipes/zoo/nope.pt' does not exist", id="missing-file"),
    pytest.param(["targets.cpu.execution_providers.0.name=CPUExecutionProvidr"],
                 "targets.cpu.execution_providers.0.name: unknown execution provider "
                 "'CPUExecutionProvidr'. Did you mean 'CPUExecutionProvider'?", id="ep-typo"),
    pytest.param(["+targets.cpu.quantize.modee=static"], "targets.cpu.quantize.modee",
                 id="target-override-typo"),
    pytest.param(["~targets.cpu"], "lists no targets", id="no-targets"),
])
def test_bad_recipes_fail_before_running(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(".", r"\.")):
        plan.build(compose_recipe("digits_torch", *overrides))
