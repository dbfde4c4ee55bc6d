"""quantize.mode=int4 on a tiny GPT-2 made here (tests/fixtures/tiny_lm.py), scored by validate's
language-model metrics: next-token top-1 agreement and KL divergence against FP32, with the
max_kl_divergence gate; GPTQ with the calibration split; auto mode scoring its int4 candidate."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_context
from omegaconf import OmegaConf

from pipeline.errors import GateError
from pipeline.schema import DatasetConfig
from stages.common.onnx_files import model_file
from stages.quantize.params import QuantizeParams
from stages.quantize.stage import quantize
from stages.validate.params import ValidateParams
from stages.validate.stage import validate
from tests.fixtures.cli import run_cli
from tests.fixtures.recipes import write_recipe

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.tiny_lm import TinyLm

CPU_TARGET = {"description": "", "device": "x86", "precision": "int4", "quantize": {},
              "runtime": {"distribution": "onnxruntime", "version": ""},
              "execution_providers": [{"name": "CPUExecutionProvider", "options": {}}]}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLm:
    pytest.importorskip("transformers")
    from tests.fixtures.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def _config(lm: TinyLm, **settings: Any) -> dict[str, Any]:
    sections = lm.recipe_sections()
    section = OmegaConf.merge(OmegaConf.structured(QuantizeParams), {"mode": "int4"}, settings)
    data = OmegaConf.merge(OmegaConf.structured(DatasetConfig), sections["dataset"])
    return {"quantize": OmegaConf.to_container(section, enum_to_str=True),
            "dataset": OmegaConf.to_container(data, enum_to_str=True),
            "model": sections["model"]}


def _int4(lm: TinyLm, out: Path, **settings: Any) -> dict[str, Any]:
    return quantize(make_context(_config(lm, **settings), out, {"model": lm.model}, target="cpu"))


@pytest.fixture(scope="module")
def rtn(tiny_lm: TinyLm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm_rtn")
    _int4(tiny_lm, out)
    return out


def _validate(lm: TinyLm, candidate: Path, out: Path, **gates: float) -> dict[str, Any]:
    section = OmegaConf.merge(OmegaConf.structured(ValidateParams), {
        "samples": 32, "latency_runs": 5, "warmup_runs": 1, "bundle_samples": 2,
        "gates": {"min_speedup": 0.0} | gates})
    config = {"validate": OmegaConf.to_container(section),
              "dataset": _config(lm)["dataset"], "model": lm.recipe_sections()["model"],
              "target": CPU_TARGET}
    ctx = make_context(config, out, {"candidate": candidate, "reference": lm.model}, target="cpu")
    return validate(ctx)


def test_every_linear_layer_of_the_lm_becomes_matmul_nbits(tiny_lm: TinyLm, rtn: Path) -> None:
    # 2 layers x 4 linear layers (GPT-2's Conv1D, exported as Gemm) + the tied LM head
    summary = json.loads((rtn / "quantize.json").read_text())
    figures = summary["int4_figures"]
    assert figures["matmul_nbits_nodes"] == 9
    assert figures["float_weight_matmuls"] == 0
    ops = [n.op_type for n in onnx.load(model_file(rtn), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 9
    assert "Gemm" not in ops
    assert figures["weight_bytes"]["ratio"] < 0.45  # the embedding tables stay float


def test_validate_scores_next_tokens_by_top1_and_kl(tiny_lm: TinyLm, rtn: Path,
                                                    tmp_path: Path) -> None:
    same = _validate(tiny_lm, tiny_lm.model, tmp_path / "fp32")
    assert same["top1_agreement"] == 1.0
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    report = _validate(tiny_lm, rtn, tmp_path / "int4")
    # measured: top-1 0.972, KL 5.0e-4 (HQQ 0.967, 4.3e-4; GPTQ 0.969, 5.0e-4) on this model
    assert report["top1_agreement"] > 0.9
    assert 0 < report["kl_divergence"] < 0.01
    # by hand, from the same feeds: KL over the positions the attention mask keeps
    data = dict(np.load(tiny_lm.evaluation))
    fp32, int4 = (ort.InferenceSession(str(model_file(d)), providers=["CPUExecutionProvider"])
                  .run(None, data)[0].astype(np.float64) for d in (tiny_lm.model, rtn))
    log_p, log_q = (x - x.max(-1, keepdims=True) for x in (fp32, int4))
    log_p, log_q = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (log_p, log_q))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    kept = data["attention_mask"] == 1
    # the worker runs one sample at a time, so float rounding differs slightly from a batch
    assert report["kl_divergence"] == pytest.approx(kl[kept].mean(), rel=0.05)
    assert report["top1_agreement"] == pytest.approx(
        (fp32.argmax(-1) == int4.argmax(-1))[kept].mean(), abs=0.02)


def test_max_kl_divergence_gate_fails_when_impossible_and_passes_when_reasonable(
        tiny_lm: TinyLm, rtn: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError, match=r"validate\.gates\.max_kl_divergence: measured"):
        _validate(tiny_lm, rtn, tmp_path / "strict", max_kl_divergence=1e-9)
    report = _validate(tiny_lm, rtn, tmp_path / "fair", max_kl_divergence=0.05)
    (gate,) = [g for g in report["gates"] if g["gate"] == "max_kl_divergence"]
    assert gate["passed"] is True
    assert gate["measured"] == report["kl_divergence"]


def test_gptq_fits_the_weights_on_the_calibration_split(tiny_lm: TinyLm, rtn: Path,
                                                         tmp_path: Path) -> None:
    summary = _int4(tiny_lm, tmp_path / "gptq", int4={"algorithm": "gptq"},
                    calibration={"samples": 16})
    assert summary["int4"]["algorithm"] == "gptq"
    assert summary["int4"]["calibration_samples"] == 16
    assert summary["int4_figures"]["matmul_nbits_nodes"] == 9
    report = _validate(tiny_lm, tmp_path / "gptq", tmp_path / "gptq_validate")
    assert report["top1_agreement"] > 0.9
    assert 0 < report["kl_divergence"] < 0.01


def test_gptq_keeps_excluded_matmuls_float(tiny_lm: TinyLm, tmp_path: Path) -> None:
    # onnxruntime's own GPTQ path ignores nodes_to_exclude; the stage passes them itself
    summary = _int4(tiny_lm, tmp_path / "gptq", calibration={"samples": 4},
                    int4={"algorithm": "gptq", "nodes_to_exclude": ["node_Gemm_325"]})
    assert summary["int4_figures"]["matmul_nbits_nodes"] == 8
    assert summary["int4_figures"]["float_weight_matmuls"] == 1


AUTO_RECIPE = """\
defaults:
  - /quantize: int8
  - /target@targets.cpu: x86_cpu
  - _self_
name: tiny_lm_auto
validate:
  samples: 32
  gates: {{min_speedup: 0}}
quantize:
  auto:
    candidates: [dynamic, int4_rtn]
    gates: {{min_sample_cosine: 0.9, max_kl_divergence: {kl}}}
    rounds: 2
    latency_runs: 10
"""


@pytest.mark.slow
@pytest.mark.parametrize("kl", [0.05, 1e-9], ids=["fair", "impossible"])
def test_auto_scores_the_int4_candidate_on_a_token_model(tiny_lm: TinyLm, tmp_path: Path,
                                                         kl: float) -> None:
    sections = tiny_lm.recipe_sections()
    body = AUTO_RECIPE.format(kl=kl) + "".join(
        f"{key}: {json.dumps(value)}\n" for key, value in sections.items())
    write_recipe(tmp_path / "recipes", "tiny_lm_auto", body)
    result = run_cli("recipe=tiny_lm_auto", "--config-dir", str(tmp_path / "recipes"),
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", "run.progress=false",
                     timeout=900)
    assert result.code == 0, result.stderr[-3000:]
    bundle = tmp_path / "artifacts" / "tiny_lm_auto" / "cpu"
    stage = json.loads((bundle / "manifest.json").read_text())["stages"]["quantize@cpu"]
    rows = {row["name"]: row for row in stage["summary"]["candidates"]}
    int4 = rows["int4_rtn"]
    assert int4["settings"]["mode"] == "int4"
    assert 0 < int4["kl_divergence"] < 0.05
    auto = next(p for p in (tmp_path / "artifacts").rglob("auto.md"))
    line = next(row for row in auto.read_text().splitlines() if row.startswith("| int4_rtn "))
    chosen = stage["summary"]["quantization"]["chosen"]
    if kl < 1e-6:  # no candidate can keep it: both lose, saying why, and FP32 ships
        assert chosen == "fp32"
        assert "lost:" in line
        assert "quantize.auto.gates.max_kl_divergence 1e-09" in line
    else:  # it won on speed, or lost with the reason in the table
        assert ("**chosen**" in line) == (chosen == "int4_rtn")
        assert chosen == "int4_rtn" or "lost:" in line or "qualified" in line
