"""Recipes declare their stage graph: presets, added and repeated stages, and every mistake in
the graph caught at plan time with the key that is wrong."""

from __future__ import annotations

import logging
import re
import textwrap
from typing import TYPE_CHECKING

import pytest

from pipeline import plan
from pipeline.errors import RecipeError
from tests.fixtures.recipes import compose_recipe, write_recipe

if TYPE_CHECKING:
    from pathlib import Path


def _plan(tmp_path: Path, body: str, *overrides: str) -> plan.Plan:
    """digits_torch with ``body`` on top, quantized with static INT8 (one quantize node)."""
    header = "defaults:\n  - digits_torch\n  - _self_\nname: team\n"
    write_recipe(tmp_path, "team", header + textwrap.dedent(body))
    return plan.build(compose_recipe("team", "quantize=int8_static", *overrides,
                                     config_dir=tmp_path))


def test_a_recipe_that_says_nothing_about_stages_gets_the_default_graph() -> None:
    nodes = plan.build(compose_recipe("digits_torch")).nodes
    assert {name: node.upstream for name, node in nodes.items()} == {
        "export": {},
        "optimize": {"model": "export"},
        # quantize.mode=auto (the bundled /quantize: int8): a node per candidate, then the choice
        "quantize.static@cpu": {"model": "optimize"},
        "quantize.static_per_tensor@cpu": {"model": "optimize"},
        "quantize@cpu": {"model": "optimize", "variant.static": "quantize.static@cpu",
                         "variant.static_per_tensor": "quantize.static_per_tensor@cpu"},
        "validate@cpu": {"candidate": "quantize@cpu", "reference": "optimize"},
        "package@cpu": {"model": "quantize@cpu", "report": "validate@cpu"},
    }


def test_the_fp32_preset_skips_quantization() -> None:
    nodes = plan.build(compose_recipe("digits_torch", "pipeline=fp32")).nodes
    assert list(nodes) == ["export", "optimize", "validate@cpu", "package@cpu"]
    assert nodes["package@cpu"].upstream == {"model": "optimize", "report": "validate@cpu"}


def test_two_optimize_passes_in_a_row_each_with_its_own_params(tmp_path: Path) -> None:
    nodes = _plan(tmp_path, """
        stages:
          optimize_more: {kind: optimize, inputs: {model: optimize}, params: {level: extended}}
          quantize: {inputs: {model: optimize_more}}
        optimize: {level: basic}
    """).nodes
    assert list(nodes)[:4] == ["export", "optimize", "optimize_more", "quantize@cpu"]
    assert nodes["optimize"].config["optimize"]["level"] == "basic"
    assert nodes["optimize_more"].config["optimize"]["level"] == "extended"
    assert nodes["quantize@cpu"].upstream == {"model": "optimize_more"}


def test_a_repeated_quantize_stage_gets_the_kind_defaults_not_the_section(
        tmp_path: Path) -> None:
    nodes = _plan(tmp_path, """
        stages:
          quantize_dynamic: {kind: quantize, inputs: {model: optimize}, params: {mode: dynamic}}
          validate_dynamic:
            kind: validate
            inputs: {candidate: quantize_dynamic, reference: optimize}
    """, "quantize.calibration.samples=64").nodes
    static = nodes["quantize@cpu"].config["quantize"]
    dynamic = nodes["quantize_dynamic@cpu"].config["quantize"]
    assert (static["mode"], static["calibration"]["samples"]) == ("static", 64)
    assert (dynamic["mode"], dynamic["calibration"]["samples"]) == ("dynamic", 128)
    assert nodes["validate_dynamic@cpu"].upstream["candidate"] == "quantize_dynamic@cpu"


def test_a_target_overrides_params_of_any_stage(tmp_path: Path) -> None:
    nodes = _plan(tmp_path, """
        stages:
          quantize_dynamic: {kind: quantize, inputs: {model: optimize}, params: {mode: dynamic}}
        targets:
          cpu:
            stages: {quantize_dynamic: {per_channel: false}}
    """).nodes
    assert nodes["quantize_dynamic@cpu"].config["quantize"]["per_channel"] is False
    assert nodes["quantize@cpu"].config["quantize"]["per_channel"] is True


def test_a_stage_no_bundle_depends_on_is_warned_about(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _plan(tmp_path, """
            stages:
              spare: {kind: optimize, inputs: {model: export}}
        """)
    assert "stages.spare: no bundle depends on this stage" in caplog.text


CYCLE = ("stages: {optimize: {inputs: {model: optimize_more}}, "
         "optimize_more: {kind: optimize, inputs: {model: optimize}}}")


@pytest.mark.parametrize(("body", "message"), [
    pytest.param("stages: {spare: {kind: quantise, inputs: {model: optimize}}}",
                 "stages.spare.kind: unknown stage kind 'quantise'. Did you mean 'quantize'? "
                 "Known kinds: export, optimize, package, quantize, validate", id="kind-typo"),
    pytest.param("stages: {validate: {inputs: {modle: quantize}}}",
                 "stages.validate.inputs.modle: kind 'validate' has no input slot 'modle'. "
                 "Its slots: candidate, reference", id="slot-typo"),
    pytest.param("stages: {spare: {kind: validate, inputs: {candidate: quantize}}}",
                 "stages.spare.inputs: kind 'validate' expects inputs ['candidate', 'reference'],"
                 " got ['candidate']", id="missing-slot"),
    pytest.param("stages: {package: {inputs: {model: quantise}}}",
                 "stages.package.inputs.model: no stage named 'quantise'. Did you mean "
                 "'quantize'?", id="upstream-typo"),
    pytest.param(CYCLE, "stages: the inputs form a cycle: ", id="cycle"),
    pytest.param("stages: {optimize: {inputs: {model: quantize}}}",
                 "stages.optimize.inputs.model: 'optimize' (optimize) runs once for all "
                 "targets, so it cannot read 'quantize'", id="agnostic-reads-per-target"),
    pytest.param("stages: {quantize: {params: {calibration: {sampels: 64}}}}",
                 "stages.quantize.params.calibration.sampels: Key 'sampels' not in "
                 "'CalibrationParams' Did you mean 'samples'?", id="params-typo"),
    pytest.param("stages: {quantize: {params: {mode: statc}}}",
                 "stages.quantize.params.mode: Invalid value 'statc'", id="params-bad-enum"),
    pytest.param("quantise: {mode: static}", "quantise: not a recipe key. Did you mean "
                 "'quantize'?", id="section-typo"),
    pytest.param("targets: {cpu: {stages: {quantize: {modee: static}}}}",
                 "targets.cpu.stages.quantize.modee: Key 'modee' not in 'QuantizeParams' Did "
                 "you mean 'mode'?", id="target-override-typo"),
])
def test_graph_mistakes_fail_at_plan_time(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(message)):
        _plan(tmp_path, body)


def test_a_cycle_names_the_stages_in_it(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cycle") as raised:
        _plan(tmp_path, CYCLE)
    loop = str(raised.value).split("cycle: ")[1].split(". ")[0]
    assert set(loop.split(" -> ")) == {"optimize", "optimize_more"}
