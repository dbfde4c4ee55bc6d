"""optimize.level=transformer through the CLI on the pretrained MiniLM, for three targets: the
x86 CPU bundle ships the fused graph, the NNAPI and CoreML bundles (whose EPs have no kernel for
com.microsoft Attention) ship the unfused one, and each manifest says why."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import onnx
import pytest

from tests.fixtures.cli import run_cli
from tests.fixtures.recipes import write_recipe

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.corpus import Corpus

pytestmark = pytest.mark.slow
RECIPE = """\
defaults:
  - /quantize: none
  - /target@targets.cpu: x86_cpu
  - /target@targets.android_nnapi: android_nnapi
  - /target@targets.ios_coreml: ios_coreml
  - _self_
name: fused_targets
optimize: {level: transformer}
validate: {samples: 8, gates: {min_cosine: 0.999}}
targets:
  android_nnapi: {requires: {fixed_dims: {sequence: 32}}}
  ios_coreml: {requires: {fixed_dims: {sequence: 32}}}
"""


def _contrib_ops(bundle: Path) -> set[str]:
    # model.onnx is in every bundle (mobile ones add the model.ort converted from it)
    model = onnx.load(bundle / "model.onnx", load_external_data=False)
    return {node.op_type for node in model.graph.node if node.domain == "com.microsoft"}


def test_fused_graph_for_the_cpu_unfused_for_nnapi_and_coreml(corpus: Corpus,
                                                              tmp_path: Path) -> None:
    write_recipe(tmp_path / "recipes", "fused_targets", RECIPE + corpus["minilm"].recipe_yaml())
    result = run_cli("recipe=fused_targets", "--config-dir", str(tmp_path / "recipes"),
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", "run.progress=false",
                     timeout=900)
    assert result.code == 0, result.stderr[-4000:]
    root = tmp_path / "artifacts" / "fused_targets"
    cpu = json.loads((root / "cpu" / "manifest.json").read_text())
    fusions = cpu["stages"]["optimize"]["summary"]["fusions"]
    assert fusions["applied"]["attention"] == 6
    assert _contrib_ops(root / "cpu") == {"Attention", "SkipLayerNormalization",
                                               "BiasGelu"}
    # the first per-target stage chooses (quantize, here mode none); validate's reference too
    assert cpu["stages"]["quantize@cpu"]["summary"]["graph"]["model"]["fused"] is True
    for target in ("android_nnapi", "ios_coreml"):
        manifest = json.loads((root / target / "manifest.json").read_text())
        assert _contrib_ops(root / target) == set()
        stages = manifest["stages"]
        for chosen in (stages[f"quantize@{target}"]["summary"]["graph"]["model"],
                       stages[f"validate@{target}"]["summary"]["graph"]["reference"]):
            assert chosen["fused"] is False
            assert "com.microsoft:Attention" in chosen["reason"]
