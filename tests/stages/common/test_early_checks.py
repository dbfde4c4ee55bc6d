"""Data that does not fit model.inputs fails when the plan is built, before any stage runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline import plan
from pipeline.errors import InputError
from pipeline.schema import DatasetConfig
from stages.common.datasets import early
from stages.common.datasets.checks import SPLITS, layout_of
from tests.fixtures import dataset_helpers
from tests.fixtures.cli import run_cli
from tests.fixtures.dataset_helpers import IMAGE, TABLE, TOKENS, load, write_png, write_table
from tests.fixtures.recipes import compose_recipe

if TYPE_CHECKING:
    from pathlib import Path

HELPERS = "tests.fixtures.dataset_helpers"
SEQUENCES = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
             {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]


def _resolved(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset section as a plan node holds it: checked, defaults in, enums as strings."""
    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), dataset)
    return OmegaConf.to_container(merged, enum_to_str=True)


def _sources(tmp_path: Path) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    write_table(tmp_path / "t.npz", 30)
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "x.npy", np.zeros((12, 2), np.float16))
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", np.full((10, 12, 3), 40 * i))
    rgb = [{"name": "image", "dtype": "uint8", "shape": ["batch", 6, 6, 3]}]
    return [
        (IMAGE, {"kind": "digits"}),
        (rgb, {"kind": "digits", "image_size": 6, "channels": 3, "layout": "nhwc",
               "dtype": "uint8"}),
        (rgb, {"kind": "images", "path": str(tmp_path / "img"), "image_size": 6,
               "channels": 3, "layout": "nhwc", "dtype": "uint8"}),
        (TABLE, {"kind": "npz", "path": str(tmp_path / "t.npz"), "calibration_size": 4}),
        ([{"name": "x", "dtype": "float16", "shape": ["batch", 2]}],
         {"kind": "npy", "path": str(tmp_path / "arrays"), "calibration_size": 3}),
        (TOKENS, {"kind": "callable", "factory": f"{HELPERS}:tokens",
                  "factory_kwargs": {"count": 12}}),
        (TOKENS, {"kind": "callable", "factory": f"{HELPERS}:split_tokens"}),
    ]


def test_the_plan_sees_each_source_as_loading_shapes_it(tmp_path: Path) -> None:
    for inputs, dataset in _sources(tmp_path):
        peeked = early._peeks(OmegaConf.create(_resolved(dataset)), list(OmegaConf.create(inputs)))
        data = load(inputs, **dataset)
        loaded = {json.dumps(layout_of(data.splits[name].feeds[0])) for name in SPLITS
                  if data.splits[name].feeds}
        assert {json.dumps(p.layout) for p in peeked} == loaded, dataset


def test_a_wrong_input_name_fails_the_plan(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", pixels=np.zeros((40, 1, 8, 8), np.float32))
    cfg = compose_recipe("digits_torch", "dataset.kind=npz", f"dataset.path={tmp_path / 'd.npz'}")
    plan.build(cfg)  # the stage kinds imported once, as the CLI does before building
    cfg = compose_recipe("digits_torch", "dataset.kind=npz", f"dataset.path={tmp_path / 'd.npz'}",
                         "model.inputs.0.name=pixels_")
    # how fast: benchmarks/bench_plan_checks.py (a timed assert here failed on loaded machines)
    with pytest.raises(InputError, match=r"dataset.path '.*d.npz': sample .*d.npz\[0\]: model "
                       r"input 'pixels_' \(model.inputs.0\) has no data \(the sample has "
                       r"\[.pixels.\]\)\. Every sample must match model.inputs \(checked before"):
        plan.build(cfg)


def test_the_cli_stops_before_export_on_a_dtype_the_data_does_not_have(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_torch", "model.inputs.0.dtype=float16",
                     f"run.artifacts_dir={tmp_path}")
    assert result.code == 3, result.stderr
    assert ("dataset (kind=digits): every sample, as dataset.image_size/channels/layout/dtype "
            "shape it: model input 'pixels' expects float16 (model.inputs.0.dtype), the sample "
            "is float32") in result.stderr
    assert result.imported == []  # torch never loaded: nothing was exported
    assert not (tmp_path / ".cache" / "objects").exists()


def test_a_factory_is_asked_for_one_sample_of_each_split() -> None:
    dataset_helpers.PULLED.clear()
    config = {"dataset": _resolved({"kind": "callable", "factory": f"{HELPERS}:counted",
                                    "factory_kwargs": {"length": 7}}),
              "model": {"inputs": [{**spec, "shape": ["batch", 7]} for spec in TOKENS]}}
    early.check_dataset(config)
    early.check_dataset(config)  # a second target's node
    assert dataset_helpers.PULLED == dict.fromkeys(SPLITS, 1)


@pytest.mark.parametrize(("odd", "when", "message"), [
    pytest.param(0, "plan", r"dataset.factory '.*:ragged': sample factory\[0\]: ", id="plan"),
    pytest.param(5, "load", r"dataset \(kind=callable, .*:ragged\): \w+ sample \d+ "
                 r"\(factory\[5\]\): ", id="load"),
])
def test_inputs_sharing_a_dynamic_dim_must_agree_on_its_size(odd: int, when: str,
                                                             message: str) -> None:
    dataset = {"kind": "callable", "factory": f"{HELPERS}:ragged",
               "factory_kwargs": {"count": 20, "odd": odd}}
    config = {"dataset": _resolved(dataset), "model": {"inputs": SEQUENCES}}
    size = 3 + odd % 7
    message += (rf"dynamic dim 'seq' is {size} in model input 'input_ids' \(model.inputs.0\) but "
                rf"{size + 1} in 'attention_mask' \(model.inputs.1\) of the same sample")
    with pytest.raises(InputError, match=message):
        early.check_dataset(config) if when == "plan" else load(SEQUENCES, **dataset)
    if when == "load":
        early.check_dataset(config)  # sample 0 is fine: only loading reads every sample
