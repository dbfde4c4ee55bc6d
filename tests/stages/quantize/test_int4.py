"""quantize.mode=int4 on the corpus' pretrained MiniLM (all-MiniLM-L6-v2, dynamo export): RTN and
HQQ MatMulNBits, block size, exclusions and INT8 after INT4, scored per sentence against FP32.

pre_process is off here: it costs ~15 s per build on this model and INT4 needs no shapes.
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

from pipeline.errors import RecipeError
from pipeline.schema import DatasetConfig
from stages.common.onnx_files import model_file
from stages.quantize.params import QuantizeParams
from stages.quantize.stage import quantize

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.corpus import Corpus, CorpusModel

pytestmark = pytest.mark.slow
# MiniLM's six layers: Q, K, V, attention output, two feed-forward weights each
WEIGHT_MATMULS = 36


class Built:
    """INT4 builds of MiniLM, each made once per module, by settings."""

    def __init__(self, model: CorpusModel, root: Path) -> None:
        self.model, self.root, self._made = model, root, {}

    def __call__(self, **int4: Any) -> tuple[Path, dict[str, Any]]:
        label = json.dumps(int4, sort_keys=True)
        if label not in self._made:
            out = self.root / f"int4-{len(self._made)}"
            summary = quantize(make_context(_config(self.model, int4=int4), out,
                                            {"model": self.model.folder}, target="cpu"))
            self._made[label] = (out, summary)
        return self._made[label]


def _config(model: CorpusModel, **settings: Any) -> dict[str, Any]:
    section = OmegaConf.merge(OmegaConf.structured(QuantizeParams),
                              {"mode": "int4", "pre_process": False}, settings)
    data = OmegaConf.merge(OmegaConf.structured(DatasetConfig), model.dataset_section())
    return {"quantize": OmegaConf.to_container(section, enum_to_str=True),
            "dataset": OmegaConf.to_container(data, enum_to_str=True),
            "model": model.model_section()}


@pytest.fixture(scope="module")
def built(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(corpus["minilm"], tmp_path_factory.mktemp("minilm_int4"))


def _embeddings(directory: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model_file(directory)), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].astype(np.float64)


def _min_cosine(built: Built, directory: Path) -> float:
    feeds = built.model.feeds("evaluation")
    a, b = _embeddings(directory, feeds), _embeddings(built.model.folder, feeds)
    assert np.isfinite(a).all()
    return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def _ops(directory: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(model_file(directory), load_external_data=False).graph.node)


# measured worst sentence (32 evaluation sentences): RTN 0.966, HQQ 0.972
@pytest.mark.parametrize(("algorithm", "bound"), [("rtn", 0.94), ("hqq", 0.95)])
def test_int4_quantizes_every_weight_matmul_and_stays_close(built: Built, algorithm: str,
                                                           bound: float) -> None:
    out, summary = built(algorithm=algorithm)
    nodes = _ops(out)
    assert sum(n.op_type == "MatMulNBits" for n in nodes) == WEIGHT_MATMULS
    figures = summary["int4_figures"]
    assert figures["matmul_nbits_nodes"] == WEIGHT_MATMULS
    assert figures["float_weight_matmuls"] == 0
    # the 45 MiB word-embedding table stays float: 90.3 -> 54.6 MB (RTN), 55.8 MB (HQQ)
    assert figures["weight_bytes"]["before"] > 9e7
    assert figures["weight_bytes"]["ratio"] < 0.65
    assert summary["size_ratio"] < 0.65
    assert summary["int4"]["algorithm"] == algorithm
    assert summary["int4"]["block_size"] == 32
    assert _min_cosine(built, out) > bound
    assert json.loads((out / "quantize.json").read_text())["int4_figures"] == figures


def test_block_size_sets_the_nodes_block_size(built: Built) -> None:
    sizes = {}
    for block in (16, 128):
        out, summary = built(block_size=block)
        (size,) = {onnx.helper.get_attribute_value(a) for n in _ops(out)
                   if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
        sizes[block] = (size, summary["int4_figures"]["weight_bytes"]["after"])
    assert sizes[16][0] == 16
    assert sizes[128][0] == 128
    assert sizes[16][1] > sizes[128][1]  # eight times the scales and zero points


def _weight_matmuls(model: CorpusModel) -> list[str]:
    graph = onnx.load(str(model.onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def test_excluded_matmuls_stay_float_or_go_int8_with_then_int8(built: Built) -> None:
    names = _weight_matmuls(built.model)[:2]
    kept, summary = built(nodes_to_exclude=names)
    assert summary["int4_figures"]["matmul_nbits_nodes"] == WEIGHT_MATMULS - 2
    assert summary["int4"]["nodes_to_exclude"] == names
    assert sorted(n.name for n in _ops(kept) if n.op_type == "MatMul" and n.name in names) == \
        sorted(names)
    chained, summary = built(nodes_to_exclude=names, then_int8="dynamic")
    nodes = _ops(chained)
    assert summary["int4_figures"]["float_weight_matmuls"] == 0
    assert sum(n.op_type == "MatMulNBits" for n in nodes) == WEIGHT_MATMULS - 2
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2
    # the embedding tables went INT8 too: 0.21x the FP32 weight bytes (measured)
    assert summary["int4_figures"]["weight_bytes"]["ratio"] < 0.3
    assert _min_cosine(built, chained) > 0.9


@pytest.mark.parametrize(("int4", "message"), [
    ({"block_size": 24}, r"quantize\.int4\.block_size: expected a power of two"),
    ({"algorithm": "hqq", "symmetric": True}, r"quantize\.int4\.symmetric: algorithm hqq"),
    ({"accuracy_level": 7}, r"quantize\.int4\.accuracy_level: expected 0-4"),
    ({"nodes_to_exclude": ["no_such_node"]}, r"quantize\.int4\.nodes_to_exclude: 'no_such_node'"),
])
def test_settings_onnxruntime_cannot_build_are_recipe_errors(built: Built, tmp_path: Path,
                                                            int4: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        quantize(make_context(_config(built.model, int4=int4), tmp_path / "out",
                              {"model": built.model.folder}, target="cpu"))
