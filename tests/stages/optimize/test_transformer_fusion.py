"""optimize.level=transformer on a real pretrained encoder (all-MiniLM-L6-v2 from its wheel,
exported by torch's dynamo exporter): attention and layer-norm fusions, same outputs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import pytest
from conftest import make_context

from stages.common.onnx_files import model_file
from stages.optimize.stage import optimize

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.corpus import Corpus

pytestmark = pytest.mark.slow


def _outputs(directory: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model_file(directory)),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def test_transformer_level_fuses_attention_and_keeps_the_outputs(corpus: Corpus,
                                                                 tmp_path: Path) -> None:
    minilm = corpus["minilm"]
    config = {"optimize": {"level": "transformer", "shape_inference": True}}
    summary = optimize(make_context(config, tmp_path / "out", {"model": minilm.folder}))
    applied = summary["fusions"]["applied"]
    assert summary["fusions"]["tool"].startswith("onnxscript ")
    # measured: 6 layers -> 6 Attention, 12 SkipLayerNormalization, 6 BiasGelu
    assert summary["ops_after"]["com.microsoft:Attention"] == 6 == applied["attention"]
    assert summary["ops_after"]["com.microsoft:SkipLayerNormalization"] == 12
    assert summary["nodes_after"] < summary["nodes_before"] / 2
    written = json.loads((tmp_path / "out" / "optimize.json").read_text())
    assert written["fusions"] == summary["fusions"]
    feeds = minilm.feeds("evaluation")
    fused, unfused = _outputs(tmp_path / "out", feeds), _outputs(minilm.folder, feeds)
    assert np.abs(fused - unfused).max() < 1e-4
