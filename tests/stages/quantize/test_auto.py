"""quantize.mode=auto: candidates as cached nodes of their own, chosen by measurement, FP32
shipped with the reason when none qualifies. Fidelity and speed thresholds are set so that
the outcome does not depend on how fast this machine is today (min_speedup 0 or 100)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import onnx
import pytest

from pipeline import plan
from pipeline.hashing import DigestState
from pipeline.keys import cache_key, key_payload
from tests.fixtures.cli import run_cli, run_record, statuses
from tests.fixtures.recipes import compose_recipe, write_recipe
from tests.fixtures.team import team_dir

if TYPE_CHECKING:
    from pathlib import Path

AUTO = ("quantize=int8", "run.progress=false")
# every candidate is fast enough: the fastest one that keeps fidelity must win
ANY_SPEED = ("quantize.auto.min_speedup=0", "quantize.auto.min_saving_ms=-1")


def _plan(config_dir: Path, *overrides: str) -> plan.Plan:
    return plan.build(compose_recipe("team_linear", *AUTO, *overrides, config_dir=config_dir))


def _keys(the_plan: plan.Plan, state: DigestState) -> dict[str, str]:
    return {name: cache_key(key_payload(node, dict.fromkeys(node.upstream, "0" * 64), state))
            for name, node in the_plan.nodes.items()}


def test_auto_fans_out_into_candidate_nodes_the_auto_node_reads(tmp_path: Path) -> None:
    nodes = _plan(team_dir(tmp_path)).nodes
    assert list(nodes)[2:5] == ["quantize.static@cpu", "quantize.static_per_tensor@cpu",
                                "quantize@cpu"]
    assert nodes["quantize@cpu"].upstream == {
        "model": "optimize", "variant.static": "quantize.static@cpu",
        "variant.static_per_tensor": "quantize.static_per_tensor@cpu"}
    static = nodes["quantize.static@cpu"].config
    assert static["quantize"]["mode"] == "static"
    assert static["quantize"]["per_channel"] is True
    assert nodes["quantize.static_per_tensor@cpu"].config["quantize"]["per_channel"] is False
    # only the auto node reads the target (it times on its EP); candidates share keys across
    # targets with equal settings, as every other quantize node does
    assert "target" in nodes["quantize@cpu"].config
    assert "target" not in static


def test_changing_the_choice_keeps_every_candidate_key(tmp_path: Path) -> None:
    config_dir, state = team_dir(tmp_path), DigestState(tmp_path / "state.json")
    before = _keys(_plan(config_dir), state)
    after = _keys(_plan(config_dir, "quantize.auto.min_speedup=2.0",
                        "quantize.auto.gates.min_cosine=0.9"), state)
    assert before["quantize.static@cpu"] == after["quantize.static@cpu"]
    assert before["quantize@cpu"] != after["quantize@cpu"]


@pytest.mark.parametrize(("target", "inputs", "expected"), [
    pytest.param("x86_cpu", "float32", ["static", "static_per_tensor"], id="cpu-images"),
    pytest.param("x86_cpu", "int64",
                 ["dynamic", "dynamic_matmul", "static_matmul", "static", "int4_rtn"],
                 id="cpu-tokens"),
    pytest.param("jetson_orin", "float32", ["static"], id="tensorrt"),
])
def test_candidates_suit_the_inputs_and_the_target(tmp_path: Path, target: str, inputs: str,
                                                   expected: list[str]) -> None:
    # synthetic data fits any declared inputs; the plan checks the digits against them
    nodes = _plan(team_dir(tmp_path), f"model.inputs.0.dtype={inputs}", "dataset.kind=synthetic",
                  f"targets.cpu.execution_providers={_providers(target)}").nodes
    found = [n.removeprefix("quantize.").removesuffix("@cpu") for n in nodes
             if n.startswith("quantize.")]
    assert found == expected


def _providers(target: str) -> str:
    first = {"x86_cpu": "CPUExecutionProvider", "jetson_orin": "TensorrtExecutionProvider"}
    return f"[{{name: {first[target]}}}]"


def _run(root: Path, *overrides: str) -> tuple[int, str, dict[str, Any]]:
    result = run_cli("recipe=team_linear", "--config-dir", str(root / "team" / "recipes"),
                     *AUTO, f"run.artifacts_dir={root / 'artifacts'}", *overrides, cwd=root)
    record = run_record(root / "artifacts", "team_linear") if result.code in (0, 4) else {}
    return result.code, result.stderr, record


def _quantization(root: Path) -> dict[str, Any]:
    manifest = json.loads((root / "artifacts" / "team_linear" / "cpu" / "manifest.json")
                          .read_text())
    return manifest["stages"]["quantize@cpu"]["summary"]


def test_fastest_qualifying_candidate_ships_and_a_new_candidate_builds_alone(
        tmp_path: Path) -> None:
    team_dir(tmp_path)
    code, stderr, record = _run(tmp_path, *ANY_SPEED, "quantize.auto.candidates=[static]")
    assert code == 0, stderr
    summary = _quantization(tmp_path)
    assert summary["quantization"]["chosen"] == "static"
    assert summary["quantization"]["fallback_reason"] is None
    assert summary["mode"] == "auto: static"
    code, stderr, record = _run(tmp_path, *ANY_SPEED,
                                "quantize.auto.candidates=[static,static_per_tensor]")
    assert code == 0, stderr
    ran = statuses(record)
    assert ran["quantize.static@cpu"] == "cached"
    assert ran["quantize.static_per_tensor@cpu"] == "ran"
    rows = {row["name"]: row for row in _quantization(tmp_path)["candidates"]}
    assert set(rows) == {"static", "static_per_tensor"}
    chosen = _quantization(tmp_path)["quantization"]["chosen"]
    fastest = min(rows.values(), key=lambda row: row["p50_ms"])
    assert rows[chosen]["p50_ms"] <= fastest["p50_ms"] * 1.05
    for row in rows.values():
        assert row["min_sample_cosine"] > 0.9  # scored against FP32 on the evaluation split


def test_no_qualifying_candidate_ships_fp32_with_the_reason(tmp_path: Path) -> None:
    team_dir(tmp_path)
    code, stderr, record = _run(tmp_path, "quantize.auto.min_speedup=100")
    assert code == 0, stderr
    summary = _quantization(tmp_path)
    reason = summary["quantization"]["fallback_reason"]
    assert summary["quantization"]["chosen"] == "fp32"
    assert "static: speedup" in reason
    assert "< quantize.auto.min_speedup 100x" in reason
    assert "published as FP32: no quantized candidate qualified" in stderr
    bundle = onnx.load(tmp_path / "artifacts" / "team_linear" / "cpu" / "model.onnx")
    key = record_key(record, "optimize")
    fp32 = onnx.load(tmp_path / "artifacts" / ".cache" / "objects" / key[:2] / key[2:] / "out"
                     / "model.onnx")
    assert [n.op_type for n in bundle.graph.node] == [n.op_type for n in fp32.graph.node]
    row = record["bundles_summary"][0]
    assert row["precision"] == "auto: fp32"
    assert row["verdict"].startswith("published as FP32")


def record_key(record: dict[str, Any], stage: str) -> str:
    return next(s["key"] for s in record["stages"] if s["stage"] == stage)


def test_require_fails_the_build_instead_of_shipping_fp32(tmp_path: Path) -> None:
    team_dir(tmp_path)
    code, stderr, _ = _run(tmp_path, "quantize.auto.require=true",
                           "quantize.auto.gates.min_sample_cosine=1.01",
                           "quantize.auto.candidates=[static_per_tensor]")
    assert code == 4, stderr
    assert "quantize.auto.require is set" in stderr
    assert "min_sample_cosine" in stderr


def test_unknown_candidate_fails_at_plan_time(tmp_path: Path) -> None:
    root = team_dir(tmp_path)
    write_recipe(root, "typo", "defaults: [team_linear, _self_]\nname: typo\n")
    result = run_cli("recipe=typo", "--config-dir", str(root), *AUTO,
                     "quantize.auto.candidates=[statik]",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", cwd=tmp_path)
    assert result.code == 2
    assert "quantize.auto.candidates: unknown candidate 'statik'" in result.stderr
    assert "Did you mean 'static'" in result.stderr or "static" in result.stderr
    assert "torch" not in result.imported


def test_a_candidate_that_fails_to_build_loses_and_the_run_goes_on(tmp_path: Path) -> None:
    team_dir(tmp_path)
    # 16-bit activations: static QDQ builds them (A16W8), dynamic quantization cannot
    code, stderr, record = _run(tmp_path, *ANY_SPEED, "quantize.activation_type=uint16",
                                "quantize.auto.candidates=[static,dynamic]")
    assert code == 0, stderr
    ran = statuses(record)
    assert ran["quantize.dynamic@cpu"] == "lost"
    assert ran["quantize@cpu"] == "ran"
    assert record["ok"] is True
    summary = _quantization(tmp_path)
    assert summary["quantization"]["chosen"] == "static"
    rows = {row["name"]: row for row in summary["candidates"]}
    assert rows["dynamic"]["qualifies"] is False
    assert "did not build" in rows["dynamic"]["failed"][0]
    assert "mode=dynamic quantizes to 8 bits only" in rows["dynamic"]["failed"][0]
