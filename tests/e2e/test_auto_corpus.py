"""quantize.mode=auto on every corpus model (real models nobody here tuned), through the CLI.

Each build must ship either a quantized model that keeps its fidelity gate and beats FP32 on
this machine's CPU EP (validate's default min_speedup gate checks it again, independently), or
the FP32 model with the reason; never a slower or broken INT8. The sentence encoder must reach
a per-sample cosine of 0.99 with FP32 at INT8 (the issue's bar for embeddings); whether that
INT8 is also faster depends on the CPU. Measured: MiniLM -> dynamic_matmul (min cosine 0.9908,
3.1 vs 5.2 ms on an Intel CPU with AMX; 1.14x on an AMD EPYC; 0.69x on one CI machine, which
shipped FP32 for speed); mobilenet_v3_small -> FP32 (its INT8 candidates ran 3x slower, min
cosine 0.83).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import onnx
import pytest

from tests.fixtures.auto_choice import lost_on_speed_alone
from tests.fixtures.cli import run_cli
from tests.fixtures.corpus import MODELS
from tests.fixtures.recipes import write_recipe

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.corpus import Corpus

pytestmark = pytest.mark.slow
HEADER = """\
defaults:
  - /quantize: int8
  - /target@targets.cpu: x86_cpu
  - _self_
name: auto_{name}
validate:
  samples: 32
"""
# the encoder's bar; the image models keep the preset's 0.98
GATES = {"minilm": "quantize.auto.gates.min_sample_cosine=0.99"}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "ConvInteger"}


@pytest.fixture(autouse=True, scope="module")
def _build_all(corpus: Corpus) -> None:
    corpus.prefetch(*MODELS)


def _build(corpus: Corpus, name: str, tmp_path: Path) -> dict[str, Any]:
    model = corpus[name]
    write_recipe(tmp_path / "recipes", f"auto_{name}", HEADER.format(name=name)
                 + model.recipe_yaml())
    result = run_cli(f"recipe=auto_{name}", "--config-dir", str(tmp_path / "recipes"),
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", "run.progress=false",
                     *([GATES[name]] if name in GATES else []), timeout=900)
    assert result.code == 0, result.stderr[-4000:]
    bundle = tmp_path / "artifacts" / f"auto_{name}" / "cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    ops = {node.op_type for node in onnx.load(bundle / "model.onnx",
                                              load_external_data=False).graph.node}
    return {"manifest": manifest, "ops": ops, "stderr": result.stderr}


@pytest.mark.parametrize("name", MODELS)
def test_auto_ships_a_faster_faithful_int8_or_fp32_with_the_reason(
        corpus: Corpus, name: str, tmp_path: Path) -> None:
    built = _build(corpus, name, tmp_path)
    stages = built["manifest"]["stages"]
    choice = stages["quantize@cpu"]["summary"]["quantization"]
    validation = stages["validate@cpu"]["summary"]
    rows = {row["name"]: row for row in stages["quantize@cpu"]["summary"]["candidates"]}
    print(f"\n{name}: chose {choice['chosen']}; " + "; ".join(
        f"{n} {r['min_sample_cosine']:.4f} {r['speedup']:.2f}x" for n, r in rows.items()))
    if choice["chosen"] == "fp32":
        assert choice["fallback_reason"], "FP32 shipped without saying why"
        assert not built["ops"] & QUANTIZED_OPS
        assert all(not row["qualifies"] for row in rows.values())
        assert "published as FP32" in built["stderr"]
    else:
        assert choice["fallback_reason"] is None
        assert built["ops"] & QUANTIZED_OPS
        assert rows[choice["chosen"]]["qualifies"]
        # validate measured the shipped model on its own: faithful and faster than FP32
        assert validation["speedup"] >= 1.0
        assert validation["min_sample_cosine"] >= 0.98
        assert validation["gates"][-1]["gate"] == "min_speedup"  # the default gate ran
    if name == "minilm":
        _minilm_keeps_the_embedding_bar(choice, validation, rows)


def _minilm_keeps_the_embedding_bar(choice: dict[str, Any], validation: dict[str, Any],
                                    rows: dict[str, dict[str, Any]]) -> None:
    # Fidelity is the CPU-independent half of the bar: dynamic_matmul keeps a per-sentence cosine
    # of 0.99 wherever it runs. Whether INT8 also beats FP32 is the CPU's answer: CI once timed
    # every INT8 candidate at 0.69x FP32, and then FP32 ships with speed as the only reason.
    assert rows["dynamic_matmul"]["min_sample_cosine"] >= 0.99
    if choice["chosen"] == "fp32":
        assert lost_on_speed_alone(rows["dynamic_matmul"])
    else:
        assert validation["min_sample_cosine"] >= 0.99
