"""The validate stage on a real digits CNN and its static INT8 version, with real onnxruntime.

The OpenVINO tests run the OpenVINO EP for real, in the machine's isolated environment for
onnxruntime-openvino (``$EDGEKILN_ENV_DIR``, default ``~/.cache/edgekiln/envs``): the first run
on a machine builds it (about 20 s), later runs reuse it, as the pipeline does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import GateError, RecipeError
from stages.common import runtime_env
from stages.common.onnx_files import model_file, save_model
from stages.validate.stage import validate
from tests.fixtures.digits_models import DIGITS, INPUT, INPUTS, DigitsModels, digits_models

OV = "OpenVINOExecutionProvider"
CPU_EP = {"name": "CPUExecutionProvider", "options": {}}
CPU_TARGET = {"description": "", "device": "x86", "precision": "int8", "quantize": {},
              "runtime": {"distribution": "onnxruntime", "version": ""},
              "execution_providers": [CPU_EP]}
TRT_TARGET = CPU_TARGET | {"device": "jetson", "execution_providers": [
    {"name": "TensorrtExecutionProvider", "options": {"trt_fp16_enable": True}}, CPU_EP],
    "runtime": {"distribution": "onnxruntime-gpu", "version": ">=1.20"}}
# as recipes/target/intel_cpu_openvino.yaml: a relative cache_dir, ORT's own graph fusions off
OV_TARGET = CPU_TARGET | {"device": "intel-cpu", "execution_providers": [
    {"name": OV, "options": {"device_type": "CPU", "precision": "FP32", "num_streams": 1,
                             "cache_dir": "./ov_cache"}}, CPU_EP],
    "runtime": {"distribution": "onnxruntime-openvino", "version": ">=1.20"},
    "session": {"graph_optimization_level": "disable_all", "intra_op_num_threads": None,
                "config": {}}}
NO_GATES = {"max_accuracy_drop": None, "min_top1_agreement": None, "min_cosine": None,
            "max_abs_diff": None, "max_cpu_fallback_nodes": None}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return digits_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def openvino_envs() -> Path:
    """The env root, holding a real onnxruntime-openvino environment (built when missing)."""
    root = runtime_env.env_root()
    env = runtime_env.ensure_env([f"onnxruntime-openvino{OV_TARGET['runtime']['version']}",
                                  "numpy"], imports=("numpy", "onnxruntime"), root=root)
    assert env.path.parent == root
    assert env.packages["onnxruntime-openvino"]
    return root


@pytest.fixture
def with_openvino(openvino_envs: Path, monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path) -> Path:
    monkeypatch.setenv("EDGEKILN_ENV_DIR", str(openvino_envs))
    monkeypatch.chdir(tmp_path)  # to see that no ./ov_cache appears where the pipeline runs
    return openvino_envs


@pytest.fixture(scope="session")
def hardmax_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flatten -> MatMul -> Relu -> Hardmax: OpenVINO's EP takes all but the Hardmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    nodes = [helper.make_node("Flatten", [INPUT], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"], name="matmul"),
             helper.make_node("Relu", ["logits"], ["positive"], name="relu"),
             helper.make_node("Hardmax", ["positive"], ["scores"], name="pick", axis=-1)]
    graph = helper.make_graph(
        nodes, "hardmax", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                         ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    directory = tmp_path_factory.mktemp("hardmax")
    save_model(model, directory)
    return directory


def config(target: dict[str, Any] = CPU_TARGET, dataset: dict[str, Any] = DIGITS,
           **gates: float) -> dict[str, Any]:
    return {
        "validate": {"samples": 128, "latency_runs": 10, "warmup_runs": 2,
                     "forbid_cpu_fallback": False, "isolated_runtime": True,
                     "bundle_samples": 4, "gates": NO_GATES | gates},
        "dataset": dataset,
        "model": {"inputs": INPUTS},
        "target": target,
    }


def run(context_factory: Any, cfg: dict[str, Any], candidate: Path,
        reference: Path) -> dict[str, Any]:
    ctx = context_factory(cfg, inputs={"candidate": candidate, "reference": reference}, target="t")
    return validate(ctx)


def test_identical_models_agree_fully(context_factory: Any, models: DigitsModels) -> None:
    summary = run(context_factory, config(), models.fp32, models.fp32)
    assert summary["top1_agreement"] == 1.0
    assert summary["max_abs_diff"] == 0.0
    assert summary["mean_cosine"] == pytest.approx(1.0)
    assert summary["accuracy_drop"] == 0.0
    assert summary["accuracy_fp32"] > 0.9  # trained, so accuracy means something
    assert summary["evaluation_samples"] == 128
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is True
    assert summary["not_validated_reason"] is None
    assert summary["unavailable"] == []
    assert summary["runtime"]["isolated"] is False
    assert summary["runtime"]["pinned"] == "onnxruntime==" + runtime_env.host_runtime()[1]
    assert summary["size_bytes"]["candidate"] == summary["size_bytes"]["reference"] > 0
    latency = summary["latency_ms"]
    for side in ("candidate", "reference"):
        assert 0 < latency[side]["p50"] <= latency[side]["p90"] < 1000
    assert math.isfinite(latency["speedup"])
    assert summary["gates"] == []


def test_int8_report_is_plausible_and_written(context_factory: Any,
                                              models: DigitsModels) -> None:
    # min_speedup 0: this tiny CNN's INT8 runs slower than FP32 (measured 0.5x), which the
    # default gate would refuse
    cfg = config(max_accuracy_drop=0.05, min_top1_agreement=0.9, min_cosine=0.98,
                 min_speedup=0.0, max_cpu_fallback_nodes=0)
    ctx = context_factory(cfg, inputs={"candidate": models.int8, "reference": models.fp32},
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
        "max_accuracy_drop", "min_top1_agreement", "min_cosine", "min_speedup",
        "max_cpu_fallback_nodes"]
    assert all(g["passed"] for g in summary["gates"])
    assert {"gate", "threshold", "measured", "passed"} <= set(summary["gates"][0])
    # every node of the QDQ graph is placed, all on the CPU EP, none counted as fallback
    placement = summary["placement"]
    assert placement["method"] == "graph_assignment"
    assert placement["per_ep"] == {"CPUExecutionProvider": placement["total"]}
    assert placement["total"] > 10
    assert placement["cpu_fallback"] == []
    assert summary["cpu_fallback_nodes"] == 0


def test_samples_hold_inputs_and_the_candidates_outputs(context_factory: Any,
                                                        models: DigitsModels) -> None:
    import onnxruntime as ort

    ctx = context_factory(config(min_speedup=0.0),
                          inputs={"candidate": models.int8, "reference": models.fp32})
    samples = validate(ctx)["samples"]
    assert samples["count"] == 4
    assert samples["inputs"] == {INPUT: f"input:{INPUT}"}
    assert samples["outputs"] == {"logits": "output:logits"}
    assert samples["atol"] > 0
    assert samples["rtol"] > 0
    stored = np.load(ctx.out / samples["file"])
    assert sorted(stored.files) == [f"input:{INPUT}", "output:logits"]
    inputs, expected = stored[f"input:{INPUT}"], stored["output:logits"]
    assert inputs.shape == (4, 1, 1, 8, 8)
    assert expected.shape == (4, 1, 10)
    session = ort.InferenceSession(str(model_file(models.int8)),
                                   providers=["CPUExecutionProvider"])
    for image, logits in zip(inputs, expected, strict=True):
        np.testing.assert_allclose(session.run(None, {INPUT: image})[0], logits,
                                   atol=samples["atol"], rtol=samples["rtol"])
    assert len({row.argmax() for row in expected[:, 0]}) > 1  # real, different digits


def test_trt_target_is_reported_not_validated_without_installing(
        context_factory: Any, models: DigitsModels, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKILN_ENV_DIR", str(tmp_path / "envs"))
    summary = run(context_factory, config(target=TRT_TARGET, max_cpu_fallback_nodes=0),
                  models.int8, models.fp32)
    assert summary["requested_providers"] == ["TensorrtExecutionProvider",
                                              "CPUExecutionProvider"]
    assert summary["unavailable"] == ["TensorrtExecutionProvider"]
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is False
    assert summary["not_validated_reason"].startswith(
        "TensorrtExecutionProvider not available: needs an NVIDIA GPU")
    assert summary["static_checks"] == ["cpu_agreement", "cpu_accuracy"]
    assert summary["runtime"]["isolated"] is False
    assert "onnxruntime-gpu>=1.20 was not installed" in summary["runtime"]["fallback_reason"]
    # the fallback gate cannot be measured where TensorRT does not run: skipped, not passed
    assert summary["gates"] == [{"gate": "max_cpu_fallback_nodes", "threshold": 0,
                                 "measured": None, "passed": None,
                                 "skipped": summary["not_validated_reason"]}]
    assert summary["placement"]["cpu_fallback"] is None
    # the device's EP was not observed, so the self-test tolerance covers the INT8 gap too
    assert "gap to FP32" in summary["samples"]["tolerance_basis"]
    assert not (tmp_path / "envs").exists()


def test_registered_ep_that_takes_no_nodes_is_not_validated(context_factory: Any,
                                                            models: DigitsModels) -> None:
    # the Azure EP is the one non-CPU provider this onnxruntime build has; it takes no
    # standard ops, so the session registers it while every node runs on CPU
    azure = CPU_TARGET | {"execution_providers": [{"name": "AzureExecutionProvider",
                                                   "options": {}}]}
    summary = run(context_factory, config(target=azure), models.fp32, models.fp32)
    assert summary["ran_on"] == ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is False
    assert "AzureExecutionProvider was registered but took none" in \
        summary["not_validated_reason"]
    assert summary["reference_outputs_on"].startswith("CPUExecutionProvider")
    assert summary["top1_agreement"] == 1.0


def test_failed_gates_name_gate_value_and_threshold(context_factory: Any,
                                                    models: DigitsModels) -> None:
    cfg = config(min_top1_agreement=0.5, max_abs_diff=1e-9, min_cosine=1.5, min_speedup=0.0)
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
    cfg = config(dataset=DIGITS | {"kind": "synthetic", "evaluation_size": 16}, min_cosine=0.9,
                 min_speedup=0.0)
    cfg["model"]["inputs"] = [spec | {"low": 0.0, "high": 1.0} for spec in INPUTS]
    summary = run(context_factory, cfg, models.int8, models.fp32)
    assert summary["accuracy_fp32"] is None
    assert summary["accuracy_drop"] is None
    assert summary["evaluation_samples"] == 16
    assert summary["gates"][0]["passed"] is True


@pytest.mark.slow
def test_openvino_ep_really_runs_the_int8_model(context_factory: Any, models: DigitsModels,
                                                with_openvino: Path) -> None:
    cfg = config(target=OV_TARGET, max_accuracy_drop=0.02, min_top1_agreement=0.95,
                 max_cpu_fallback_nodes=0)
    cfg["validate"]["forbid_cpu_fallback"] = True
    summary = run(context_factory, cfg, models.int8, models.fp32)
    runtime = summary["runtime"]
    assert runtime["isolated"] is True
    assert runtime["pinned"].startswith("onnxruntime-openvino==")
    assert runtime["env"].startswith(str(with_openvino))
    assert runtime["env_created"] is False  # the fixture built it; validation reuses it
    assert summary["seconds"]["env_setup"] == 0.0
    assert not (Path.cwd() / "ov_cache").exists()  # the relative cache_dir went to a temp dir
    assert summary["ran_on"][0] == OV
    assert summary["validated_on_target_ep"] is True
    assert summary["cpu_fallback_disabled"] is True  # and onnxruntime accepted the session
    placement = summary["placement"]
    assert placement["per_ep"] == {OV: placement["total"]}
    assert placement["cpu_fallback"] == []
    assert summary["top1_agreement"] >= 0.95
    assert summary["accuracy_candidate"] > 0.9
    assert 0 < summary["latency_ms"]["candidate"]["p50"] < 1000
    assert summary["latency_ms"]["on"] == OV
    assert summary["samples"]["outputs_from"].startswith(OV)
    # outputs on OpenVINO vs onnxruntime's CPU EP on the same samples set the tolerance
    spread = summary["samples"]["observed_ep_vs_cpu_max_abs_diff"]
    assert summary["samples"]["atol"] >= 2 * spread


@pytest.mark.slow
def test_openvino_cpu_fallback_is_reported_and_gated(context_factory: Any, hardmax_model: Path,
                                                     with_openvino: Path) -> None:
    summary = run(context_factory, config(target=OV_TARGET), hardmax_model, hardmax_model)
    assert summary["validated_on_target_ep"] is True
    assert summary["placement"]["per_ep"] == {OV: 3, "CPUExecutionProvider": 1}
    assert summary["placement"]["cpu_fallback"] == [{"name": "pick", "op_type": "Hardmax"}]
    assert summary["cpu_fallback_nodes"] == 1
    assert summary["warnings"] == [
        f"1 of 4 nodes fell back from {OV} to CPUExecutionProvider: pick (Hardmax)"]
    with pytest.raises(GateError, match=r"max_cpu_fallback_nodes: measured 1 > threshold 0 "
                                        rf"\(nodes {OV} left to CPUExecutionProvider: "
                                        r"pick \(Hardmax\)\)"):
        run(context_factory, config(target=OV_TARGET, max_cpu_fallback_nodes=0),
            hardmax_model, hardmax_model)


@pytest.mark.slow
def test_forbidden_cpu_fallback_refuses_the_session(context_factory: Any, hardmax_model: Path,
                                                    with_openvino: Path) -> None:
    cfg = config(target=OV_TARGET)
    cfg["validate"]["forbid_cpu_fallback"] = True
    with pytest.raises(GateError, match=rf"target 't': CPU fallback is forbidden .* but {OV} "
                                        r"cannot take 1 of the model's 4 nodes: pick "
                                        r"\(Hardmax\)\. onnxruntime refused the session"):
        run(context_factory, cfg, hardmax_model, hardmax_model)


def test_uninstallable_runtime_falls_back_to_the_host(context_factory: Any,
                                                      models: DigitsModels, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKILN_ENV_DIR", str(tmp_path / "envs"))
    impossible = OV_TARGET | {"runtime": {"distribution": "onnxruntime-openvino",
                                          "version": "==0.0.1"}}
    summary = run(context_factory, config(target=impossible), models.int8, models.fp32)
    assert summary["runtime"]["isolated"] is False
    assert "onnxruntime-openvino==0.0.1 could not be installed" in \
        summary["runtime"]["fallback_reason"]
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is False
    assert summary["not_validated_reason"].startswith(f"{OV} not available: ")
    assert summary["top1_agreement"] > 0.9  # the CPU checks still ran
    assert [p.name for p in (tmp_path / "envs").iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_ep_dropped_by_onnxruntime_is_caught(context_factory: Any, models: DigitsModels,
                                             with_openvino: Path) -> None:
    # onnxruntime drops an EP it cannot create and silently runs every node on CPU
    gpu = OV_TARGET | {"execution_providers": [{"name": OV, "options": {"device_type": "GPU"}},
                                               CPU_EP]}
    summary = run(context_factory, config(target=gpu), models.int8, models.fp32)
    assert summary["available_providers"][0] == OV
    assert summary["ran_on"] == ["CPUExecutionProvider"]
    assert summary["validated_on_target_ep"] is False
    assert summary["not_validated_reason"].startswith(
        f"{OV} not available: onnxruntime-openvino==")
    assert "did not register it" in summary["not_validated_reason"]
    assert "Device GPU is not available" in summary["not_validated_reason"]


def test_per_sample_cosine_and_speedup_are_reported_and_gated(context_factory: Any,
                                                              models: DigitsModels) -> None:
    summary = run(context_factory, config(min_speedup=0.0), models.int8, models.fp32)
    assert 0 < summary["min_sample_cosine"] <= summary["mean_cosine"] < 1.0
    assert summary["speedup"] == summary["latency_ms"]["speedup"] > 0
    # a threshold between the worst sample and the mean: only the per-sample gate sees it
    between = (summary["min_sample_cosine"] + summary["mean_cosine"]) / 2
    cfg = config(min_cosine=summary["min_sample_cosine"], min_sample_cosine=between,
                 min_speedup=1000.0)
    with pytest.raises(GateError, match=r"failed 2 quality gate") as caught:
        run(context_factory, cfg, models.int8, models.fp32)
    assert "validate.gates.min_sample_cosine: measured" in str(caught.value)
    assert "validate.gates.min_speedup: measured" in str(caught.value)
    assert "validate.gates.min_cosine" not in str(caught.value)


def test_a_quantized_model_slower_than_fp32_on_a_cpu_target_fails_by_default(
        context_factory: Any, models: DigitsModels) -> None:
    # the digits CNN's INT8 runs at about half FP32's speed on the CPU EP (measured 0.48-0.62x)
    with pytest.raises(GateError, match=r"failed 1 quality gate") as caught:
        run(context_factory, config(), models.int8, models.fp32)
    assert "validate.gates.min_speedup: measured 0." in str(caught.value)
    assert "the default for a quantized model on a CPU target" in str(caught.value)
    # FP32 against itself is no quantized model: no default gate
    assert run(context_factory, config(), models.fp32, models.fp32)["gates"] == []
