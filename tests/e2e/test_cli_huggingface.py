"""The CLI builds an FP32 bundle of the repo's tiny GPT-2 from its Hugging Face folder, with
its held-out text as the dataset: inputs derived from the folder, samples of their own lengths
through validate and the bundle's self-test."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.fixtures.cli import ROOT, run_cli, run_record, statuses
from tests.fixtures.recipes import write_recipe

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

RECIPE = """\
defaults:
  - /model: tiny_lm
  - /dataset: tiny_lm_text
  - /quantize: none
  - /target@targets.cpu: x86_cpu
  - override /pipeline: fp32
  - _self_
name: tiny_lm_fp32
dataset: {calibration_size: 8, evaluation_size: 12}
validate: {samples: 12, latency_runs: 5}
"""


def test_an_fp32_bundle_of_the_tiny_lm_from_its_folder_and_text(tmp_path: Path) -> None:
    recipes = write_recipe(tmp_path / "recipes", "tiny_lm_fp32", RECIPE)
    artifacts = tmp_path / "artifacts"
    # from the repository root: the group files name the model folder and text relative to it
    result = run_cli("recipe=tiny_lm_fp32", "--config-dir", str(recipes),
                     f"run.artifacts_dir={artifacts}", "run.progress=false", cwd=ROOT)
    assert result.code == 0, result.stderr[-3000:]
    assert set(statuses(run_record(artifacts, "tiny_lm_fp32")).values()) == {"ran"}
    bundle = artifacts / "tiny_lm_fp32" / "cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    inputs = manifest["signature"]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [
        ("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])]
    assert manifest["signature"]["outputs"][0]["shape"] == ["batch", "sequence", 2048]
    # the bundle's self-test samples are held-out passages of different lengths
    with np.load(bundle / "samples.npz") as samples:
        lengths = {samples[name].shape[-1] for name in samples.files if "input_ids" in name}
    assert len(lengths) > 1
