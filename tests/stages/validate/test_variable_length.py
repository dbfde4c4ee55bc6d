"""Samples of different lengths along a dynamic dim (an embedding bag's item lists) are run,
scored and kept for the self-test one by one, on a real ONNX model and real onnxruntime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import pytest
from omegaconf import OmegaConf

from pipeline.bundle import device_loader
from stages.common import metrics
from stages.common.datasets.splits import load_dataset
from stages.validate.stage import validate
from tests.fixtures.sequence_models import BAG_INPUTS, embedding_bag

if TYPE_CHECKING:
    from pathlib import Path

CPU_TARGET = {"description": "", "device": "x86", "precision": "fp32", "quantize": {},
              "runtime": {"distribution": "onnxruntime", "version": ""},
              "execution_providers": [{"name": "CPUExecutionProvider", "options": {}}]}
BAGS = {"kind": "callable", "factory": "tests.fixtures.sequence_models:bags",
        "factory_kwargs": {"count": 24}, "use_labels": False}


def _config() -> dict[str, Any]:
    return {"validate": {"samples": 24, "latency_runs": 3, "warmup_runs": 1,
                         "forbid_cpu_fallback": False, "isolated_runtime": True,
                         "bundle_samples": 4,
                         "gates": {"max_accuracy_drop": None, "min_sample_cosine": 0.5}},
            "dataset": BAGS, "model": {"inputs": BAG_INPUTS}, "target": CPU_TARGET}


def _scores(candidate: Path, reference: Path, feeds: list[Any]) -> tuple[list[float], float]:
    """Each sample's cosine of the first outputs, and top-1 agreement over every row of them,
    computed here from scratch."""
    runs = [ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
            for d in (candidate, reference)]
    cosines, same, rows = [], 0, 0
    for feed in feeds:
        c, r = (s.run(None, feed)[0].astype(np.float64) for s in runs)
        cosines.append(float(c.ravel() @ r.ravel() / (np.linalg.norm(c) * np.linalg.norm(r))))
        same += int(np.sum(c.argmax(-1) == r.argmax(-1)))
        rows += c[..., 0].size
    return cosines, same / rows


def test_samples_of_different_lengths_are_scored_one_by_one(context_factory: Any,
                                                            tmp_path: Path) -> None:
    reference = embedding_bag(tmp_path / "fp32", embeddings_first=True)
    candidate = embedding_bag(tmp_path / "noisy", embeddings_first=True, noise=0.3)
    ctx = context_factory(_config(), inputs={"candidate": candidate, "reference": reference},
                          target="cpu")
    summary = validate(ctx)
    feeds = list(load_dataset(OmegaConf.create(BAGS), OmegaConf.create(BAG_INPUTS))
                 .evaluation.feeds)
    assert len({feed["items"].shape for feed in feeds[:4]}) > 1  # they really differ
    cosines, top1 = _scores(candidate, reference, feeds)
    assert summary["evaluation_samples"] == 24
    assert summary["min_sample_cosine"] == pytest.approx(min(cosines), rel=1e-9)
    assert summary["mean_cosine"] == pytest.approx(np.mean(cosines), rel=1e-9)
    assert summary["top1_agreement"] == pytest.approx(top1, rel=1e-9)
    assert min(cosines) < 0.99  # the noise is visible, so the numbers above mean something
    entry = summary["samples"]
    assert entry["inputs"] == {"items": [f"input:items|{i}" for i in range(4)]}
    assert entry["outputs"]["scores"] == "output:scores"  # equal shapes still stack
    with np.load(ctx.out / "samples.npz") as stored:
        for i in range(4):
            np.testing.assert_array_equal(stored[f"input:items|{i}"], feeds[i]["items"])
            assert stored[f"output:embeddings|{i}"].shape == (*feeds[i]["items"].shape, 80)
        assert stored["output:scores"].shape == (4, 1, 10)
    # the bundle's loader runs them one by one too, within validation's tolerances
    session = ort.InferenceSession(str(candidate / "model.onnx"))
    checked = device_loader.CheckedSession(session, {"inputs": BAG_INPUTS})
    manifest = {"samples": {**entry, "file": "samples.npz"}}
    assert device_loader.self_test(checked, ctx.out, manifest).endswith(": PASS")


def test_outputs_that_stack_score_as_they_did() -> None:
    rng = np.random.default_rng(0)
    candidate, reference = rng.normal(size=(2, 6, 1, 3, 5))
    stacked = metrics.agreement(candidate, reference)
    one_by_one = metrics.agreement(list(candidate), list(reference))
    assert one_by_one == pytest.approx(stacked, rel=1e-12)
