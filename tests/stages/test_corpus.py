"""The real-model corpus (tests/fixtures/corpus): each model is alive, exported faithfully, and
its data files fit edgekiln's npz dataset source and recipe schema.

Run with -s to see each model's figures: file size, the spread of its outputs across inputs
and FP32 onnxruntime latency (one thread, batch 1).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import pytest
from omegaconf import OmegaConf

from stages.common.datasets.splits import load_dataset
from stages.common.sample_inputs import make_samples
from tests.fixtures.corpus import MODELS
from tests.fixtures.corpus.save import spread
from tests.fixtures.recipes import compose_recipe, write_recipe

if TYPE_CHECKING:
    from tests.fixtures.corpus import Corpus, CorpusModel

pytestmark = pytest.mark.slow
IMAGE_MODELS = [name for name in MODELS if name != "minilm"]
HEADER = """\
defaults:
  - /quantize: int8_static
  - /target@targets.cpu: x86_cpu
  - _self_
name: corpus_{name}
"""


@pytest.fixture(autouse=True, scope="module")
def _build_all(corpus: Corpus) -> None:
    corpus.prefetch(*MODELS)  # two at a time, while the first tests wait for theirs


def _session(model: CorpusModel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model.onnx_path), options,
                                providers=["CPUExecutionProvider"])


def _p50_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    one = {name: array[:1] for name, array in feeds.items()}
    for _ in range(3):
        session.run(None, one)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        session.run(None, one)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


@pytest.mark.parametrize("name", MODELS)
def test_the_fp32_onnx_is_input_dependent_and_matches_its_framework(
        corpus: Corpus, name: str) -> None:
    model = corpus[name]
    session = _session(model)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        (spec.name, list(spec.shape)) for spec in model.inputs]
    outputs = session.run(list(model.outputs), model.feeds("evaluation"))[0]
    assert np.isfinite(outputs).all()
    figures = spread(outputs)
    # a net whose activations vanished gives outputs of ~1e-10 (facts["before"] has them)
    assert figures["across"] > 1e-3
    assert figures["across"] > 0.5 * figures["within"], figures
    reference = model.reference()[model.outputs[0]]
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(outputs[:model.reference_count], reference,
                               rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_pick_many_classes(corpus: Corpus, name: str) -> None:
    model = corpus[name]
    logits = _session(model).run(None, model.feeds("evaluation"))[0]
    assert len(logits) == 32
    assert spread(logits)["top1_classes"] >= 8  # an input-blind model picks one


def test_minilm_puts_each_sentence_nearest_its_paraphrase(corpus: Corpus) -> None:
    # evaluation sentences 2k and 2k+1 are paraphrases (tests/fixtures/corpus/sentences.py):
    # random or mangled weights would not find the pairs
    model = corpus["minilm"]
    embedding = _session(model).run(None, model.feeds("evaluation"))[0]
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -2.0)
    partner = np.arange(len(unit)) ^ 1
    assert (cosine.argmax(axis=1) == partner).mean() >= 0.9
    paired = cosine[np.arange(len(unit)), partner]
    cosine[np.arange(len(unit)), partner] = np.nan
    assert paired.mean() > np.nanmean(cosine[cosine > -2.0]) + 0.4


@pytest.mark.parametrize("name", MODELS)
def test_a_recipe_reads_the_corpus_model_and_its_data(
        corpus: Corpus, name: str, tmp_path) -> None:
    model = corpus[name]
    write_recipe(tmp_path, f"corpus_{name}", HEADER.format(name=name) + model.recipe_yaml())
    composed = compose_recipe(f"corpus_{name}", config_dir=tmp_path)
    recipe = OmegaConf.create(OmegaConf.to_container(composed, enum_to_str=True))
    assert (recipe.model.framework, recipe.model.path) == ("onnx", str(model.onnx_path))
    data = load_dataset(recipe.dataset, recipe.model.inputs)
    calibration = model.feeds("calibration")
    assert len(data.calibration.feeds) == len(next(iter(calibration.values())))
    first = data.evaluation.feeds[0]
    assert sorted(first) == sorted(spec.name for spec in model.inputs)
    assert all(array.shape[0] == 1 for array in first.values())
    # export's parity check runs the model on random samples drawn from the inputs' ranges
    (sample,) = make_samples(recipe.model.inputs, recipe.model.dynamic_size, 1)
    assert np.isfinite(_session(model).run(None, sample)[0]).all()


def test_each_model_runs_at_batch_one_and_reports_its_figures(corpus: Corpus) -> None:
    # last in the module, so no build competes with the latency runs for the two cores
    for name in MODELS:
        model = corpus[name]
        session = _session(model)
        feeds = model.feeds("evaluation")
        p50 = _p50_ms(session, feeds)
        figures = spread(session.run(None, feeds)[0])
        assert p50 > 0
        print(f"\n[corpus] {name}: {model.onnx_path.stat().st_size / 2**20:.1f} MiB, built in "
              f"{model.facts['build_seconds']} s; outputs' std across/within inputs "
              f"{figures['across']:.3g}/{figures['within']:.3g}, {figures['top1_classes']} "
              f"distinct argmax of {len(next(iter(feeds.values())))}; before BN "
              f"re-estimation {model.facts.get('before', '-')}; FP32 onnxruntime p50 "
              f"{p50:.2f} ms (1 thread, batch 1)")
