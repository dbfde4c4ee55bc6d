"""The bundled transformer recipes through the CLI: minilm_cpu (pretrained MiniLM, fused, auto
INT8) and tiny_lm_int4 (the tiny GPT-2 of recipes/zoo/tiny_lm, fused, INT4 weight-only).

The GPT-2 also covers the fused graph's check: onnxscript 0.7.2's attention fusion leaves a Gemm
fed a rank-3 tensor there, which onnxruntime refuses to load; optimize must notice, switch that
family off, and ship the fusions that still compute the model."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import onnx
import pytest

from tests.fixtures.auto_choice import lost_on_speed_alone
from tests.fixtures.cli import run_cli

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def _build(recipe: str, tmp_path: Path) -> dict[str, Any]:
    result = run_cli(f"recipe={recipe}", f"run.artifacts_dir={tmp_path}", "run.progress=false",
                     timeout=900)
    assert result.code == 0, result.stderr[-4000:]
    return json.loads((tmp_path / recipe / "cpu" / "manifest.json").read_text())


def _ops(bundle: Path) -> set[str]:
    return {n.op_type for n in onnx.load(bundle / "model.onnx", load_external_data=False)
            .graph.node}


def test_minilm_cpu_ships_a_fused_encoder_as_int8_wherever_int8_is_faster(tmp_path: Path) -> None:
    stages = _build("minilm_cpu", tmp_path)["stages"]
    assert stages["optimize"]["summary"]["fusions"]["applied"]["attention"] == 6
    quantize = stages["quantize@cpu"]["summary"]
    rows = {row["name"]: row for row in quantize["candidates"]}
    assert max(rows[name]["min_sample_cosine"] for name in ("dynamic", "dynamic_matmul")) >= 0.99
    ops = _ops(tmp_path / "minilm_cpu" / "cpu")
    assert "Attention" in ops
    if quantize["quantization"]["chosen"] == "fp32":
        # only a CPU on which INT8 loses to the fused FP32 graph may ship FP32 (see
        # tests/e2e/test_auto_corpus.py); the faithful candidates then lost on speed alone
        assert all(lost_on_speed_alone(rows[name]) for name in ("dynamic", "dynamic_matmul")
                   if rows[name]["min_sample_cosine"] >= 0.99)
        assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "QAttention"}
        return
    validation = stages["validate@cpu"]["summary"]
    assert validation["min_sample_cosine"] >= 0.99
    assert validation["speedup"] > 1.0  # against the fused FP32 graph, on this CPU
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QAttention"}


def test_tiny_lm_int4_ships_matmulnbits_within_its_next_token_gates(tmp_path: Path) -> None:
    stages = _build("tiny_lm_int4", tmp_path)["stages"]
    fusions = stages["optimize"]["summary"]["fusions"]
    for rejected in fusions["rejected"]:  # a fusion that broke the model was not shipped
        assert rejected["reason"]
    assert fusions["applied"], "no fusion family survived the check"
    figures = stages["quantize@cpu"]["summary"]["int4_figures"]
    assert figures["matmul_nbits_nodes"] >= 12  # 3 layers x 4 linear layers
    assert figures["weight_bytes"]["ratio"] < 0.5
    validation = stages["validate@cpu"]["summary"]
    assert validation["top1_agreement"] >= 0.9
    assert validation["kl_divergence"] <= 0.01
    assert "MatMulNBits" in _ops(tmp_path / "tiny_lm_int4" / "cpu")
