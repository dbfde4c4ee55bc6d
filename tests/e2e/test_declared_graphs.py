"""Declared graphs through the real CLI: an FP32 bundle without quantization, two quantized
candidates published side by side, a recipe from the last release unchanged, a team's own
stage kind installed from its own package, and graph mistakes as one-paragraph errors."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

import onnx
import pytest

from tests.fixtures.cli import run_cli, run_record, statuses
from tests.fixtures.team import install_kind, team_dir

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

HEADER = "# @package _global_\ndefaults:\n  - team_linear\n  - _self_\n"
# a team's recipe as written for edgekiln before declared graphs (the last release's layout):
# top-level sections, a per-target quantize override, a package gate
RELEASED = """\
# @package _global_
defaults:
  - /dataset: digits
  - /quantize: int8_static
  - /target@targets.cpu: x86_cpu
  - _self_
name: released
model:
  name: linear
  framework: onnx
  path: {model}
  inputs:
    - name: pixels
      shape: [batch, 1, 8, 8]
targets:
  cpu:
    quantize: {per_channel: false}
validate:
  samples: 64
  gates: {min_top1_agreement: 0.9}
package:
  max_cpu_fallback_nodes: 0
"""
CENSUS = '''
"""A team's own stage kind: the op-type census of a model, as an internal report."""

import json
from collections import Counter
from dataclasses import dataclass

from pipeline.registry import stage


@dataclass
class CensusParams:
    top: int = 5


@stage("op_census", params=CensusParams, inputs=("model",), per_target=True, tools=("onnx",))
def op_census(ctx):
    import onnx

    model = onnx.load(str(ctx.inputs["model"] / "model.onnx"), load_external_data=False)
    top = dict(Counter(n.op_type for n in model.graph.node).most_common(ctx.params.top))
    (ctx.out / "census.json").write_text(json.dumps(top, sort_keys=True))
    return {"top": top, "target": ctx.target}
'''


def _recipe(config_dir: Path, name: str, body: str) -> None:
    text = HEADER + f"name: {name}\n" + textwrap.dedent(body)
    (config_dir / "recipe" / f"{name}.yaml").write_text(text)


def _build(tmp_path: Path, config_dir: Path, recipe: str, *args: str,
           env: dict[str, str] | None = None):
    return run_cli(f"recipe={recipe}", f"run.artifacts_dir={tmp_path / 'artifacts'}",
                   "run.progress=false", "--config-dir", str(config_dir), *args, env=env)


def _ops(bundle: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(bundle / "model.onnx")).graph.node}


def test_fp32_bundle_without_a_quantize_stage(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    _recipe(config_dir, "team_fp32", "")
    text = (config_dir / "recipe" / "team_fp32.yaml").read_text()
    (config_dir / "recipe" / "team_fp32.yaml").write_text(
        text.replace("  - _self_", "  - override /pipeline: fp32\n  - _self_"))
    result = _build(tmp_path, config_dir, "team_fp32")
    assert result.code == 0, result.stderr
    assert set(statuses(run_record(tmp_path / "artifacts", "team_fp32"))) == {
        "export", "optimize", "validate@cpu", "package@cpu"}
    bundle = tmp_path / "artifacts" / "team_fp32" / "cpu"
    assert _ops(bundle) == {"Flatten", "Gemm"}  # optimize fused MatMul+Add; nothing quantized
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["stages"]["validate@cpu"]["summary"]["top1_agreement"] == 1.0


def test_two_quantized_candidates_are_validated_and_published_side_by_side(
        tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    _recipe(config_dir, "team_two", """
        stages:
          quantize_dynamic: {kind: quantize, inputs: {model: optimize}, params: {mode: dynamic}}
          validate_dynamic:
            kind: validate
            inputs: {candidate: quantize_dynamic, reference: optimize}
            # a further stage gets its kind's defaults, not the validate: section's; this
            # one publishes the (slower) dynamic INT8 anyway, as the section does
            params: {gates: {min_speedup: 0}}
          package_dynamic:
            kind: package
            inputs: {model: quantize_dynamic, report: validate_dynamic}
    """)
    result = _build(tmp_path, config_dir, "team_two")
    assert result.code == 0, result.stderr
    record = run_record(tmp_path / "artifacts", "team_two")
    assert statuses(record)["export"] == "ran"  # once, for both candidates
    # the end-of-run summary: one row per bundle, what shipped and how it compares with FP32
    rows = {row["bundle"]: row for row in record["bundles_summary"]}
    assert {b: (r["precision"], r["verdict"]) for b, r in rows.items()} == {
        "cpu-package": ("static", "published"), "cpu-package_dynamic": ("dynamic", "published")}
    assert 0 < rows["cpu-package"]["size"] < rows["cpu-package"]["size_fp32"]
    assert 0.9 < rows["cpu-package"]["min_sample_cosine"] <= rows["cpu-package"]["mean_cosine"]
    assert "cpu-package_dynamic │ dynamic" in result.stderr
    static, dynamic = (tmp_path / "artifacts" / "team_two" / f"cpu-{name}"
                       for name in ("package", "package_dynamic"))
    assert "QuantizeLinear" in _ops(static)
    assert "DynamicQuantizeLinear" in _ops(dynamic)
    manifest = json.loads((dynamic / "manifest.json").read_text())
    assert manifest["bundle"] == "cpu-package_dynamic"
    assert "quantize@cpu" not in manifest["stages"]
    assert manifest["stages"]["quantize_dynamic@cpu"]["summary"]["mode"] == "dynamic"


def test_a_recipe_from_the_last_release_builds_unchanged(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    model = tmp_path / "linear.onnx"
    (config_dir / "recipe" / "released.yaml").write_text(RELEASED.replace("{model}", str(model)))
    # its INT8 of one 64x10 MatMul runs slower than FP32, which validate now refuses by
    # default (validate.gates.min_speedup): the file stays as released, the override says so
    result = _build(tmp_path, config_dir, "released", "quantize.calibration.samples=64",
                    "validate.gates.min_speedup=0")
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "artifacts" / "released" / "cpu" /
                           "manifest.json").read_text())
    quantized = manifest["stages"]["quantize@cpu"]["summary"]
    assert (quantized["calibration_samples"], quantized["per_channel"]) == (64, False)


def _site(tmp_path: Path, module: str, source: str) -> dict[str, str]:
    return install_kind(tmp_path / "site", "team_kinds", f"op_census = team_kinds.{module}",
                        {"__init__.py": "", f"{module}.py": source})


def test_a_team_kind_from_its_own_package_runs_in_the_graph(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    env = _site(tmp_path, "census", CENSUS)
    _recipe(config_dir, "team_census", """
        stages:
          census: {kind: op_census, inputs: {model: quantize}, params: {top: 2}}
    """)
    first = _build(tmp_path, config_dir, "team_census", env=env)
    assert first.code == 0, first.stderr
    # Hydra's logging prints warnings on stdout
    assert "stages.census: no bundle depends on this stage" in first.stdout
    again = _build(tmp_path, config_dir, "team_census", env=env)
    assert again.code == 0, again.stderr
    record = run_record(tmp_path / "artifacts", "team_census")
    assert statuses(record)["census@cpu"] == "cached"
    census = next((tmp_path / "artifacts" / ".cache" / "objects").glob("*/*/out/census.json"))
    assert len(json.loads(census.read_text())) == 2


def test_a_kind_that_fails_to_load_fails_the_run(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    env = _site(tmp_path, "broken", "import no_such_module\n")
    result = _build(tmp_path, config_dir, "team_linear", env=env)
    assert result.code == 5
    assert ("stage kind 'op_census' (entry point 'team_kinds.broken' in group "
            "'edgekiln.stages', from team-kinds 0.1) failed to load: ModuleNotFoundError"
            in result.stderr)
    assert "Traceback" not in result.stderr


def test_a_graph_mistake_is_one_paragraph_with_exit_2(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    _recipe(config_dir, "team_typo", """
        stages:
          extra: {kind: optimise, inputs: {model: export}}
    """)
    result = _build(tmp_path, config_dir, "team_typo")
    assert result.code == 2
    assert ("edgekiln: recipe error: stages.extra.kind: unknown stage kind 'optimise'. Did you "
            "mean 'optimize'?") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "artifacts" / ".cache" / "objects").exists()


FAILING = '''
from pipeline.registry import stage


@stage("op_census", inputs=("model",))
def op_census(ctx):
    raise ValueError("census could not count")  # the line --verbose must show
'''


def test_verbose_shows_the_stage_s_own_traceback(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    env = _site(tmp_path, "failing", FAILING)
    _recipe(config_dir, "team_failing", """
        stages:
          census: {kind: op_census, inputs: {model: optimize}}
    """)
    quiet = _build(tmp_path, config_dir, "team_failing", env=env)
    assert quiet.code == 1
    assert ("stage failed: stage 'census': failed: ValueError: census could not count"
            in quiet.stderr)
    assert "Traceback" not in quiet.stderr
    loud = _build(tmp_path, config_dir, "team_failing", "--verbose", env=env)
    assert loud.code == 1
    assert 'raise ValueError("census could not count")' in loud.stderr


def test_one_target_failing_its_gate_leaves_the_other_validated_and_published(
        tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    (config_dir / "recipe" / "team_gate.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - team_linear
          - /target@targets.strict: x86_cpu
          - _self_
        name: team_gate
        targets:
          strict:
            stages: {validate: {gates: {min_cosine: 1.5}}}
    """))
    result = _build(tmp_path, config_dir, "team_gate")
    assert result.code == 4, result.stderr
    assert "validate.gates.min_cosine: measured" in result.stderr
    record = run_record(tmp_path / "artifacts", "team_gate")
    assert statuses(record)["validate@cpu"] == "ran"
    assert statuses(record)["package@strict"] == "skipped"
    verdicts = {row["bundle"]: row["verdict"] for row in record["bundles_summary"]}
    assert verdicts["cpu"] == "published"
    assert verdicts["strict"].startswith("FAILED validate@strict")
    assert (tmp_path / "artifacts" / "team_gate" / "cpu" / "manifest.json").is_file()
    assert not (tmp_path / "artifacts" / "team_gate" / "strict").exists()
