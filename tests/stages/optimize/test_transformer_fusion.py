"""optimize.level=transformer on a real pretrained encoder (all-MiniLM-L6-v2 from its wheel,
exported by torch's dynamo exporter): attention and layer-norm fusions, same outputs, the
switches, and the unfused twin that targets without the fused ops are built from."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import pytest
from conftest import make_context

from stages.common import fused_graphs
from stages.common.onnx_files import model_file
from stages.optimize.params import FusionSwitches
from stages.optimize.stage import optimize

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.corpus import Corpus

pytestmark = pytest.mark.slow
SWITCHES = {"attention": True, "skip_layer_norm": True, "gelu": True, "rms_norm": True,
            "rotary_embedding": True}


def _config(**switches: bool) -> dict:
    return {"optimize": {"level": "transformer", "shape_inference": True, "portable": True,
                         "fusions": SWITCHES | switches}}


@pytest.fixture(scope="module")
def fused(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fused") / "out"
    return out, optimize(make_context(_config(), out, {"model": corpus["minilm"].folder}))


def _outputs(directory: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model_file(directory)),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def test_transformer_level_fuses_attention_and_keeps_the_outputs(
        corpus: Corpus, fused: tuple[Path, dict]) -> None:
    minilm, (out, summary) = corpus["minilm"], fused
    applied = summary["fusions"]["applied"]
    assert summary["fusions"]["tool"].startswith("onnxscript ")
    # measured: 6 layers -> 6 Attention, 12 SkipLayerNormalization, 6 BiasGelu
    assert summary["ops_after"]["com.microsoft:Attention"] == 6 == applied["attention"]
    assert summary["ops_after"]["com.microsoft:SkipLayerNormalization"] == 12
    assert summary["nodes_after"] < summary["nodes_before"] / 2
    written = json.loads((out / "optimize.json").read_text())
    assert written["fusions"] == summary["fusions"]
    assert summary["fusions"]["fused_ops"] == ["Attention", "BiasGelu", "SkipLayerNormalization"]
    feeds = minilm.feeds("evaluation")
    reference = _outputs(minilm.folder, feeds)
    assert np.abs(_outputs(out, feeds) - reference).max() < 1e-4
    # the unfused twin: the same function with standard ONNX ops only
    portable = fused_graphs.portable_dir(out)
    assert summary["fusions"]["portable"]
    assert fused_graphs.fused_ops(portable) == []
    assert np.abs(_outputs(portable, feeds) - reference).max() < 1e-4


def test_every_switch_on_fuses_what_onnxscripts_optimize_for_ort_fuses(
        corpus: Corpus, fused: tuple[Path, dict]) -> None:
    """The spelled-out sequence must not drift from onnxscript's (e.g. after an upgrade)."""
    import onnx
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    # as the stage does: shape inference with data propagation, then the fusions
    source = onnx.load(str(model_file(corpus["minilm"].folder)))
    _, counts = optimize_for_ort(ir.from_proto(onnx.shape_inference.infer_shapes(
        source, data_prop=True)))
    assert fused[1]["fusions"]["applied"] == {k: v for k, v in sorted(counts.items()) if v}
    assert set(vars(FusionSwitches())) == set(SWITCHES)


def test_a_switched_off_family_stays_unfused(corpus: Corpus, tmp_path: Path) -> None:
    summary = optimize(make_context(_config(attention=False), tmp_path / "out",
                                    {"model": corpus["minilm"].folder}))
    assert "com.microsoft:Attention" not in summary["ops_after"]
    assert summary["ops_after"]["com.microsoft:SkipLayerNormalization"] == 12
    assert summary["fusions"]["switched_off"] == ["attention"]
    feeds = corpus["minilm"].feeds("evaluation")
    assert np.abs(_outputs(tmp_path / "out", feeds)
                  - _outputs(corpus["minilm"].folder, feeds)).max() < 1e-4


@pytest.mark.parametrize(("target", "fused_graph"), [
    ("x86_cpu", True), ("cuda", True), ("android_nnapi", False), ("ios_coreml", False),
    ("qualcomm_qnn", False), ("intel_cpu_openvino", False)])
def test_targets_without_the_fused_ops_read_the_unfused_graph(
        fused: tuple[Path, dict], target: str, fused_graph: bool) -> None:
    from omegaconf import OmegaConf

    from pipeline.cli import BUNDLED_RECIPES

    section = OmegaConf.load(BUNDLED_RECIPES / "target" / f"{target}.yaml")
    choice = fused_graphs.for_target(fused[0], section)
    assert choice.fused is fused_graph, choice.reason
    assert choice.model == (fused[0] if fused_graph else fused_graphs.portable_dir(fused[0]))
    if not fused_graph:
        assert "com.microsoft:Attention" in choice.reason
