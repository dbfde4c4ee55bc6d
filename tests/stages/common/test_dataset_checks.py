"""Data that does not fit the model fails early and clearly; data content enters cache keys."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import InputError, RecipeError
from pipeline.schema import DATASET_SOURCES
from tests.fixtures.dataset_helpers import TABLE, TOKENS, load, write_png, write_table

ROOT = Path(__file__).resolve().parents[3]


# --- bad data ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("arrays", "message"), [
    pytest.param({"a": np.zeros((9, 3), np.float64), "b": np.zeros((9, 2), np.int64)},
                 r"calibration sample 0 \(.*t.npz\[\d\]\): model input 'a' expects float32 "
                 r"\(model.inputs.0.dtype\), the sample is float64", id="dtype"),
    pytest.param({"a": np.zeros((9, 4), np.float32), "b": np.zeros((9, 2), np.int64)},
                 r"model input 'a' expects samples of shape \['batch', 3\] \(model.inputs.0.shape, "
                 r"batch axis included\), the sample has \[1, 4\]", id="shape"),
    pytest.param({"a": np.zeros((9, 3), np.float32)},
                 r"model input 'b' \(model.inputs.1\) has no data \(the sample has "
                 r"\['a'\]\)", id="missing"),
    pytest.param({"a": np.zeros((9, 3), np.float32), "b": np.zeros((9, 2), np.int64),
                  "c": np.zeros((9, 1))}, r"data \['c'\] matches no model input \(the model's "
                 r"inputs are \['a', 'b'\]\)", id="extra"),
])
def test_data_that_does_not_fit_the_model(tmp_path: Path, arrays: dict[str, np.ndarray],
                                          message: str) -> None:
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load(TABLE, kind="npz", path=str(tmp_path / "t.npz"), calibration_size=3)


def test_the_first_bad_sample_of_a_callable_is_named() -> None:
    with pytest.raises(InputError, match=r"sample \d+ \(factory\[13\]\): model input "
                                         r"'input_ids' expects int64 \(model.inputs.0.dtype\), "
                                         r"the sample is int32"):
        load(TOKENS, kind="callable", factory="tests.fixtures.dataset_helpers:one_bad",
             factory_kwargs={"count": 20, "bad": 13}, calibration_size=5, evaluation_size=5)


@pytest.mark.parametrize(("dataset", "error", "message"), [
    pytest.param({"factory": "tests.fixtures.dataset_helpers:unlabelled_after",
                  "factory_kwargs": {"count": 10, "first": 4}}, InputError,
                 "sample 4 lacks a 'labels' entry and sample 0 has one", id="some-labels"),
    pytest.param({"factory": "tests.fixtures.dataset_helpers:NOT_CALLABLE"}, RecipeError,
                 "is a list, not a callable", id="not-callable"),
    pytest.param({"factory": "tests.fixtures.dataset_helpers:nope"}, RecipeError,
                 "cannot be imported", id="missing-callable"),
    pytest.param({"factory": "dataset_helpers"}, RecipeError,
                 "must look like 'package.module:callable'", id="no-colon"),
])
def test_bad_factories(dataset: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load(TOKENS, kind="callable", **dataset)


@pytest.mark.parametrize(("dataset", "message"), [
    pytest.param({"kind": "digits", "calibration_path": "x.npz"}, r"dataset.calibration_path: "
                 r"only file sources \(npz, npy, images, text\) take split paths", id="split-path"),
    pytest.param({"kind": "images"}, "dataset.path: required when dataset.kind=images",
                 id="no-path"),
    pytest.param({"kind": "npz", "path": "nope.npz"}, "dataset.path: 'nope.npz' does not exist",
                 id="missing-file"),
    pytest.param({"kind": "callable"}, "dataset.factory: required", id="no-factory"),
    pytest.param({"kind": "digits", "mean": [0.1, 0.2]}, r"dataset.mean: give one value or "
                 r"one per channel \(1\), not 2", id="stats-per-channel"),
    pytest.param({"kind": "digits", "resize": "big"}, "dataset.resize", id="wrong-type"),
])
def test_inconsistent_sections_are_recipe_errors(dataset: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load(**dataset)


def test_an_empty_split_says_why(tmp_path: Path) -> None:
    write_table(tmp_path / "one.npz", 1)
    data = load(TABLE, kind="npz", path=str(tmp_path / "one.npz"))
    assert len(data.evaluation.feeds) == 1
    with pytest.raises(InputError, match=r"dataset \(kind=npz, .*one.npz\): the calibration "
                       r"split is empty: the source holds 1 samples, 0 of them in earlier "
                       r"splits, calibration_size=256, and calibration takes at most half"):
        _ = data.calibration
    only_calibration = load(TABLE, kind="npz", calibration_path=str(tmp_path / "one.npz"))
    assert len(only_calibration.calibration.feeds) == 1
    with pytest.raises(InputError, match=r"the evaluation split is empty: dataset\.evaluation_"
                                         r"path is not set and neither is dataset\.path"):
        _ = only_calibration.evaluation


@pytest.mark.parametrize(("setup", "error", "message"), [
    pytest.param(lambda d: write_png(d / "x.png", np.zeros((4, 4))) and
                 write_png(d / "k" / "y.png", np.zeros((4, 4))), InputError,
                 "holds images both directly", id="mixed-layout"),
    pytest.param(lambda d: (d / "z.png").write_text("not an image"), InputError,
                 "cannot decode image", id="corrupt"),
    pytest.param(lambda d: write_png(d / "s.png", np.zeros((4, 4))), RecipeError,
                 "a 8x8 center crop does not fit images resized to 4x4", id="crop-too-big"),
])
def test_bad_image_folders(tmp_path: Path, setup: Any, error: type[Exception],
                           message: str) -> None:
    setup(tmp_path)
    with pytest.raises(error, match=message):
        load(kind="images", path=str(tmp_path), resize=4)


# --- cache keys -------------------------------------------------------------------------------

def test_every_stage_reading_the_dataset_digests_its_content() -> None:
    from pipeline.registry import load_kinds

    # every installed kind, whichever tests imported which stage modules before this one
    readers = [spec for spec in load_kinds().values() if "dataset" in spec.reads]
    assert {spec.kind for spec in readers} >= {"quantize", "validate"}
    for spec in readers:
        assert set(DATASET_SOURCES) <= set(spec.sources), spec.kind


def _keys(*overrides: str, state_dir: Path) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    from pipeline import plan
    from pipeline.cli import BUNDLED_RECIPES, register_primary_config
    from pipeline.hashing import DigestState
    from pipeline.keys import cache_key, key_payload

    register_primary_config()
    with initialize_config_dir(config_dir=str(BUNDLED_RECIPES), version_base="1.3"):
        cfg = compose(config_name="edgekiln", overrides=["recipe=digits_torch", *overrides])
    nodes = plan.build(cfg).nodes
    state = DigestState(state_dir / "state.json")
    return {name: cache_key(key_payload(nodes[name], {"candidate": "m", "reference": "r"}, state))
            for name in ("quantize@cpu", "validate@cpu", "package@cpu")}


def _pixels(path: Path, value: float) -> None:
    """20 samples digits_torch takes ('pixels', float32 N x 1 x 8 x 8), all of ``value``."""
    np.savez(path, pixels=np.full((20, 1, 8, 8), value, np.float32))


def test_cache_keys_follow_the_data_content(tmp_path: Path) -> None:
    _pixels(tmp_path / "t.npz", 0.0)
    (tmp_path / "calib").mkdir()
    _pixels(tmp_path / "calib" / "0.npz", 0.0)
    args = ("dataset.kind=npz", f"dataset.path={tmp_path / 't.npz'}",
            f"dataset.calibration_path={tmp_path / 'calib'}")
    before = _keys(*args, state_dir=tmp_path)
    assert _keys(*args, state_dir=tmp_path) == before
    _pixels(tmp_path / "t.npz", 1.0)  # same name, same size, other numbers
    changed = _keys(*args, state_dir=tmp_path)
    assert changed["quantize@cpu"] != before["quantize@cpu"]
    assert changed["validate@cpu"] != before["validate@cpu"]
    assert changed["package@cpu"] == before["package@cpu"]  # it never reads the dataset
    _pixels(tmp_path / "calib" / "0.npz", 1.0)  # a file inside a split's folder
    assert _keys(*args, state_dir=tmp_path)["quantize@cpu"] != changed["quantize@cpu"]
    with pytest.raises(RecipeError, match=r"dataset.evaluation_path: '.*nope' does not exist"):
        _keys(*args, f"dataset.evaluation_path={tmp_path / 'nope'}", state_dir=tmp_path)


def test_digits_key_covers_sklearns_data_file_without_importing_sklearn(tmp_path: Path) -> None:
    spec = PathFinder.find_spec("sklearn")
    data_file = Path(spec.submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
    code = ("import sys; from pathlib import Path; from pipeline.hashing import DigestState; "
            "from pipeline.keys import source_digest; "
            f"print(source_digest('dataset.kind', 'digits', DigestState(Path({str(tmp_path)!r}) "
            "/ 's.json')), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [hashlib.sha256(data_file.read_bytes()).hexdigest(), "False"]


# --- end to end -------------------------------------------------------------------------------

def _would(dry_run_output: str, stage: str) -> str:
    row = next(line for line in dry_run_output.splitlines() if f" {stage} " in line)
    return "use cache" if "use cache" in row else "run"


@pytest.mark.slow
def test_cli_builds_from_npz_and_rebuilds_when_its_content_changes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    from tests.fixtures.cli import run_cli

    digits = load_digits()
    images = (digits.images[:, None] / 16.0).astype(np.float32)
    np.savez(tmp_path / "d.npz", pixels=images[:300], labels=digits.target[:300])
    args = ("recipe=digits_torch", "dataset.kind=npz", f"dataset.path={tmp_path / 'd.npz'}",
            f"run.artifacts_dir={tmp_path / 'a'}", "run.progress=false")
    built = run_cli(*args)
    assert built.code == 0, built.stderr
    report = json.loads(next((tmp_path / "a").glob("*/cpu/manifest.json")).read_text())
    assert "accuracy_drop" in json.dumps(report)  # the npz labels reached validation
    np.savez(tmp_path / "d.npz", pixels=images[300:600], labels=digits.target[300:600])
    dry = run_cli(*args, "run.dry_run=true")
    assert dry.code == 0, dry.stderr
    assert [_would(dry.stderr, s) for s in ("export", "optimize", "quantize", "validate")] == [
        "use cache", "use cache", "run", "run"]
    # only validate reads the data when quantize.mode=none: the warning must reach the console
    synthetic = run_cli(*args[:1], *args[3:], "dataset.kind=synthetic", "quantize.mode=none",
                        "validate.gates.max_accuracy_drop=null",
                        "validate.gates.min_top1_agreement=null")
    assert synthetic.code == 0, synthetic.stderr
    assert "random inputs are not representative" in synthetic.stdout + synthetic.stderr
