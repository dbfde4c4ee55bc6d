"""The validate stage on a real digits CNN and its static INT8 version, with real onnxruntime."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest
from digits_models import DIGITS, INPUTS, DigitsModels, digits_models

from pipeline.errors import GateError, RecipeError
from stages.validate import validate

if TYPE_CHECKING:
    from pathlib import Path

CPU_TARGET = {"description": "", "device": "x86", "precision": "int8", "quantize": {},
              "execution_providers": [{"name": "CPUExecutionProvider", "options": {}}]}
TRT_TARGET = CPU_TARGET | {"device": "jetson", "execution_providers": [
    {"name": "TensorrtExecutionProvider", "options": {"trt_fp16_enable": True}},
    {"name": "CPUExecutionProvider", "options": {}}]}
NO_GATES = {"max_accuracy_drop": None, "min_top1_agreement": None, "min_cosine": None,
            "max_abs_diff": None}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return digits_models(tmp_path_factory.getbasetemp())


def config(target: dict[str, Any] = CPU_TARGET, dataset: dict[str, Any] = DIGITS,
           **gates: float) -> dict[str, Any]:
    return {
        "validate": {"samples": 128, "latency_runs": 10, "warmup_runs": 2,
                     "gates": NO_GATES | gates},
        "dataset": dataset,
        "model": {"inputs": INPUTS},
        "target": target,
    }


def run(context_factory: Any, cfg: dict[str, Any], candidate: Path,
        reference: Path) -> dict[str, Any]:
    ctx = context_factory(cfg, inputs={"model": candidate, "reference": reference}, target="t")
    return validate(ctx)


def test_identical_models_agree_fully(context_factory: Any, models: DigitsModels) -> None:
    summary = run(context_factory, config(), models.fp32, models.fp32)
    assert summary["top1_agreement"] == 1.0
    assert summary["max_abs_diff"] == 0.0
    assert summary["mean_cosine"] == pytest.approx(1.0)
    assert summary["accuracy_drop"] == 0.0
    assert summary["accuracy_fp32"] > 0.9  # trained, so accuracy means something
    assert summary["samples"] == 128
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is True
    assert summary["unavailable"] == []
    assert summary["size_bytes"]["candidate"] == summary["size_bytes"]["reference"] > 0
    latency = summary["latency_ms"]
    for side in ("candidate", "reference"):
        assert 0 < latency[side]["p50"] <= latency[side]["p90"] < 1000
    assert math.isfinite(latency["speedup"])
    assert summary["gates"] == []


def test_int8_report_is_plausible_and_written(context_factory: Any,
                                              models: DigitsModels) -> None:
    cfg = config(max_accuracy_drop=0.05, min_top1_agreement=0.9, min_cosine=0.98)
    ctx = context_factory(cfg, inputs={"model": models.int8, "reference": models.fp32},
                          target="cpu")
    summary = validate(ctx)
    assert json.loads((ctx.out / "report.json").read_text()) == summary
    assert summary["target"] == "cpu"
    assert 0.9 <= summary["top1_agreement"] <= 1.0
    assert summary["max_abs_diff"] > 0  # INT8 really differs from FP32
    assert summary["accuracy_drop"] == pytest.approx(
        summary["accuracy_fp32"] - summary["accuracy_candidate"])
    assert summary["size_bytes"]["candidate"] < summary["size_bytes"]["reference"]
    assert [g["gate"] for g in summary["gates"]] == [
        "max_accuracy_drop", "min_top1_agreement", "min_cosine"]
    assert all(g["passed"] for g in summary["gates"])
    assert {"gate", "threshold", "measured", "passed"} <= set(summary["gates"][0])


def test_missing_target_ep_falls_back_to_cpu_and_says_so(context_factory: Any,
                                                         models: DigitsModels) -> None:
    summary = run(context_factory, config(target=TRT_TARGET), models.int8, models.fp32)
    assert summary["requested_providers"] == ["TensorrtExecutionProvider",
                                              "CPUExecutionProvider"]
    assert summary["unavailable"] == ["TensorrtExecutionProvider"]
    assert "TensorrtExecutionProvider" not in summary["available_providers"]
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is False


def test_target_ep_that_is_present_counts_as_validated(context_factory: Any,
                                                       models: DigitsModels) -> None:
    # the Azure EP is the one non-CPU provider this onnxruntime build has; it takes no
    # standard ops, so the nodes run on CPU while the session still registers it first
    azure = CPU_TARGET | {"execution_providers": [{"name": "AzureExecutionProvider",
                                                   "options": {}}]}
    summary = run(context_factory, config(target=azure), models.fp32, models.fp32)
    assert summary["ran_on"] == ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is True
    assert summary["reference_outputs_on"] == "CPUExecutionProvider"
    assert summary["top1_agreement"] == 1.0


def test_failed_gates_name_gate_value_and_threshold(context_factory: Any,
                                                    models: DigitsModels) -> None:
    cfg = config(min_top1_agreement=0.5, max_abs_diff=1e-9, min_cosine=1.5)
    with pytest.raises(GateError, match=r"target 't' failed 2 quality gate") as caught:
        run(context_factory, cfg, models.int8, models.fp32)
    message = str(caught.value)
    assert "validate.gates.max_abs_diff: measured" in message
    assert "threshold 1e-09" in message
    assert "validate.gates.min_cosine: measured 0.9" in message
    assert "threshold 1.5" in message
    assert "min_top1_agreement" not in message  # it passed


def test_accuracy_gate_without_labels_is_a_recipe_error(context_factory: Any,
                                                        models: DigitsModels) -> None:
    synthetic = DIGITS | {"kind": "synthetic"}
    inputs = [spec | {"low": 0.0, "high": 1.0} for spec in INPUTS]
    cfg = config(dataset=synthetic, max_accuracy_drop=0.01)
    cfg["model"]["inputs"] = inputs
    with pytest.raises(RecipeError, match=r"validate\.gates\.max_accuracy_drop needs labels"):
        run(context_factory, cfg, models.int8, models.fp32)


def test_label_less_dataset_reports_no_accuracy(context_factory: Any,
                                                models: DigitsModels) -> None:
    cfg = config(dataset=DIGITS | {"kind": "synthetic", "evaluation_size": 16}, min_cosine=0.9)
    cfg["model"]["inputs"] = [spec | {"low": 0.0, "high": 1.0} for spec in INPUTS]
    summary = run(context_factory, cfg, models.int8, models.fp32)
    assert summary["accuracy_fp32"] is None
    assert summary["accuracy_drop"] is None
    assert summary["samples"] == 16
    assert summary["gates"][0]["passed"] is True
