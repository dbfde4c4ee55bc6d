"""Accuracy-aware PTQ and the configuration search on the zoo digits CNN, with real ORT.

Percentile calibration at the 90th percentile clips every activation range hard: plain PTQ
then loses ~2% top-1 accuracy on the evaluation split (measured: 0.9844 -> 0.9648), well over
a 1% budget, while keeping the most sensitive Conv in float brings the drop to ~0.6%.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_context
from omegaconf import OmegaConf

from pipeline.errors import GateError, RecipeError
from stages.common.datasets.splits import load_dataset
from stages.common.onnx_files import model_file
from stages.quantize.stage import quantize
from tests.fixtures.digits_models import INPUT
from tests.fixtures.zoo_digits import stage_config, zoo_cnn

if TYPE_CHECKING:
    from pathlib import Path

CLIPPING = {"calibration": {"method": "percentile", "percentile": 90.0, "samples": 128}}
BUDGET = {"max_accuracy_drop": 0.01, "latency_runs": 10, "warmup_runs": 2}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return zoo_cnn(tmp_path_factory.getbasetemp())


def _quantize(source: Path, out: Path, dataset: dict | None = None, **settings: Any) -> dict:
    config = stage_config(dataset, **settings)
    return quantize(make_context(config, out, {"model": source}, target="cpu"))


def _accuracy(directory: Path) -> float:
    """Top-1 accuracy on the whole evaluation split, measured here, apart from the stage."""
    config = OmegaConf.create(stage_config())
    split = load_dataset(config.dataset, config.model.inputs).evaluation
    session = ort.InferenceSession(str(model_file(directory)), providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT: np.concatenate([f[INPUT] for f in split.feeds])})[0]
    return float(np.mean(logits.argmax(1) == split.labels))


def _float_weights(directory: Path) -> set[str]:
    graph = onnx.load(str(model_file(directory))).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in floats}


def test_tight_budget_keeps_the_most_sensitive_nodes_float(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "out", **CLIPPING, accuracy_budget=BUDGET)
    report = json.loads((tmp_path / "out" / "quantize_report.json").read_text())
    assert report["quantized"]["accuracy_drop"] > 0.01  # plain PTQ misses the budget
    assert report["shipped"]["accuracy_drop"] <= 0.01
    assert summary["float_nodes"] == report["shipped"]["float_nodes"]
    assert 0 < len(summary["float_nodes"]) <= 4
    assert report["ranking"][0]["nodes"][0] in summary["float_nodes"]
    # the shipped model, measured independently: within budget, those nodes really float
    fp32, shipped = _accuracy(cnn), _accuracy(tmp_path / "out")
    assert fp32 - shipped <= 0.01
    assert _float_weights(tmp_path / "out") == {n for n in summary["float_nodes"]
                                               if n.startswith(("node_conv", "node_linear"))}
    assert summary["size_after"] > summary["size_all_quantized"]  # float weights cost bytes
    assert set(summary["latency_ms"]) == {"fp32_p50", "quantized_p50", "shipped_p50",
                                          "float_nodes_cost"}
    written = json.loads((tmp_path / "out" / "quantize.json").read_text())
    assert "latency_ms" not in written
    assert written["float_nodes"] == summary["float_nodes"]


def test_a_per_sample_cosine_budget_repairs_the_worst_sample(cnn: Path, tmp_path: Path) -> None:
    # measured: clipped PTQ's worst evaluation sample has cosine 0.887 with FP32
    budget = {"min_sample_cosine": 0.95, "latency_runs": 5, "warmup_runs": 1}
    summary = _quantize(cnn, tmp_path / "out", **CLIPPING, accuracy_budget=budget)
    report = json.loads((tmp_path / "out" / "quantize_report.json").read_text())
    assert report["quantized"]["min_sample_cosine"] < 0.95
    assert report["shipped"]["min_sample_cosine"] >= 0.95
    assert 0 < len(summary["float_nodes"]) < len(report["ranking"][0]["nodes"]) + 8
    assert report["budget"] == "quantize.accuracy_budget.min_sample_cosine=0.95"


def test_the_accuracy_aware_path_is_deterministic(cnn: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        _quantize(cnn, tmp_path / name, **CLIPPING, accuracy_budget=BUDGET)
    for file in ("model.onnx", "quantize.json", "quantize_report.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_within_budget_ships_the_fully_quantized_model(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "out", accuracy_budget=BUDGET)
    report = json.loads((tmp_path / "out" / "quantize_report.json").read_text())
    assert summary["float_nodes"] == []
    assert "ranking" not in report
    assert report["shipped"] == report["quantized"]
    assert _float_weights(tmp_path / "out") == set()


@pytest.mark.parametrize(("settings", "message"), [
    ({**CLIPPING, "accuracy_budget": BUDGET | {"max_float_nodes": 0}},
     r"best model found kept no nodes in float with accuracy 0\.96.*max_float_nodes=0 stopped"),
    # distribution ranges lose ~11%; no 2 float nodes bring that to no loss at all
    ({"calibration": {"method": "distribution"},
      "accuracy_budget": BUDGET | {"max_accuracy_drop": 0.0, "max_float_nodes": 2}},
     r"drop 0\.1\d+\).*best model found kept \['node_conv2d_1', 'node_relu_1'\] in float"),
])
def test_impossible_budgets_fail_with_the_best_result(cnn: Path, tmp_path: Path,
                                                       settings: dict, message: str) -> None:
    with pytest.raises(GateError, match=message) as failure:
        _quantize(cnn, tmp_path / "out", **settings)
    assert failure.value.exit_code == 4
    assert not model_file(tmp_path / "out").exists()  # nothing over budget is left behind


def test_budget_values_out_of_range_are_recipe_errors(cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"max_accuracy_drop: expected a fraction in \[0, 1\]"):
        _quantize(cnn, tmp_path / "out", accuracy_budget={"max_accuracy_drop": -0.01})


def test_min_agreement_works_without_labels(cnn: Path, tmp_path: Path) -> None:
    unlabelled = {"use_labels": False}
    budget = {"min_agreement": 0.985, "latency_runs": 5}
    summary = _quantize(cnn, tmp_path / "out", unlabelled, **CLIPPING, accuracy_budget=budget)
    assert summary["scores"]["agreement"] >= 0.985
    assert summary["scores"]["accuracy_drop"] is None
    assert summary["float_nodes"]
    with pytest.raises(RecipeError, match="max_accuracy_drop needs labels"):
        _quantize(cnn, tmp_path / "drop", unlabelled, **CLIPPING, accuracy_budget=BUDGET)


def test_qoperator_is_ranked_through_its_qdq_twin(cnn: Path, tmp_path: Path) -> None:
    summary = _quantize(cnn, tmp_path / "out", format="qoperator", **CLIPPING,
                        accuracy_budget=BUDGET)
    assert summary["float_nodes"]
    ops = {n.op_type for n in onnx.load(str(model_file(tmp_path / "out"))).graph.node}
    assert "QLinearConv" in ops or "QGemm" in ops  # what is not float stays QOperator


def test_search_picks_the_fastest_candidate_within_budget(cnn: Path, tmp_path: Path) -> None:
    candidates = [{"calibration": {"method": "distribution"}}, {"per_channel": False},
                  {"format": "qoperator"}, {"activation_type": "uint16"}]
    summary = _quantize(cnn, tmp_path / "out", accuracy_budget=BUDGET,
                        search={"candidates": candidates})
    table = json.loads((tmp_path / "out" / "search.json").read_text())["candidates"]
    assert [r["name"] for r in table] == [
        "recipe", "calibration.method=distribution", "per_channel=false", "format=qoperator",
        "activation_type=uint16"]
    by_name = {r["name"]: r for r in table}
    assert by_name["calibration.method=distribution"]["within_budget"] is False  # drop ~11%
    within = [r for r in table if r["within_budget"]]
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1
    assert chosen[0] in within
    # the fastest, where latencies within 5% count as a tie won by the smaller model
    fastest = min(r["latency_p50_ms"] for r in within)
    assert chosen[0]["latency_p50_ms"] <= fastest * 1.05
    ties = [r for r in within if r["latency_p50_ms"] <= fastest * 1.05]
    assert chosen[0]["size_bytes"] == min(r["size_bytes"] for r in ties)
    assert summary["calibration_method"] == chosen[0]["settings"]["calibration_method"]
    png = (tmp_path / "out" / "search.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000
    markdown = (tmp_path / "out" / "search.md").read_text()
    assert markdown.count("\n| ") == len(table) + 2  # header, FP32 row, one per candidate


def test_search_candidates_are_checked_with_full_key_paths(cnn: Path, tmp_path: Path) -> None:
    search = {"candidates": [{"per_channel": False}, {"calibration": {"method": "entrop"}}]}
    with pytest.raises(RecipeError, match=r"quantize\.search\.candidates\.1\.calibration\.method"):
        _quantize(cnn, tmp_path / "out", accuracy_budget=BUDGET, search=search)
    with pytest.raises(RecipeError, match="candidates: a search picks the fastest"):
        _quantize(cnn, tmp_path / "nobudget", search={"candidates": [{"per_channel": False}]})


def test_search_repairs_the_closest_candidate_when_none_is_within(cnn: Path,
                                                                  tmp_path: Path) -> None:
    candidates = [{"calibration": {"method": "distribution"}}]
    summary = _quantize(cnn, tmp_path / "out", **CLIPPING, accuracy_budget=BUDGET,
                        search={"candidates": candidates})
    table = json.loads((tmp_path / "out" / "search.json").read_text())["candidates"]
    assert [r["within_budget"] for r in table] == [False, False, True]
    assert table[2]["chosen"]
    assert table[2]["name"] == f"recipe + {len(summary['float_nodes'])} float nodes"
    assert summary["calibration_method"] == "percentile"  # the closer of the two, repaired
    assert summary["scores"]["accuracy_drop"] <= 0.01


def test_quantize_presets_compose_and_recipes_override_a_targets_keys() -> None:
    from hydra import compose, initialize_config_dir

    from pipeline import plan
    from pipeline.cli import BUNDLED_RECIPES, register_primary_config

    register_primary_config()
    with initialize_config_dir(config_dir=str(BUNDLED_RECIPES), version_base="1.3"):
        cfg = compose(config_name="edgekiln", overrides=[
            "recipe=digits_torch", "quantize=int8_search",
            "+targets.cpu.quantize.calibration.method=entropy"])
    section = plan.build(cfg).nodes["quantize@cpu"].config["quantize"]
    assert section["accuracy_budget"]["max_accuracy_drop"] == 0.01
    assert {"format": "qoperator"} in section["search"]["candidates"]
    assert section["calibration"]["method"] == "entropy"  # the target's key, set by the recipe
