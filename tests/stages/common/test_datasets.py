"""Datasets from every source kind, on real files: splits, disjointness and shaping."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InputError, RecipeError
from stages.common.datasets.splits import SPLITS
from tests.fixtures.dataset_helpers import (
    SPLIT_CODES,
    TABLE,
    TOKENS,
    assert_disjoint,
    load,
    row,
    write_png,
    write_table,
)

# --- digits -----------------------------------------------------------------------------------

def test_digits_splits_are_disjoint_and_match_the_training_script() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = load(kind="digits")
    assert {n: len(s.feeds) for n, s in data.splits.items()} == {
        "calibration": 256, "evaluation": 512, "training": 1029}
    assert_disjoint(data)
    # the zoo models trained on exactly the samples the training split holds
    order = np.random.default_rng(0).permutation(1797)
    assert [row(i) for i in data.training.ids] == list(order[768:])
    for split in (data.calibration, data.evaluation):
        rows = [row(i) for i in split.ids]
        np.testing.assert_array_equal(split.labels, digits.target[rows])
        np.testing.assert_array_equal(split.feeds[5]["image"][0, 0],
                                      digits.images[rows[5]].astype(np.float32) / 16.0)


def test_digits_resize_crop_per_channel_stats_and_layout() -> None:
    from scipy.ndimage import zoom

    common = {"kind": "digits", "resize": 16, "image_size": 12, "channels": 3,
              "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 1.0], "calibration_size": 4,
              "evaluation_size": 4, "training_size": 0}
    nchw = load([{"name": "image", "dtype": "float32", "shape": ["batch", 3, 12, 12]}],
                **common).calibration
    nhwc = load([{"name": "image", "dtype": "float32", "shape": ["batch", 12, 12, 3]}],
                layout="nhwc", **common).calibration
    from sklearn.datasets import load_digits

    gray = load_digits().images[row(nchw.ids[0])].astype(np.float32) / 16.0
    expected = zoom(gray[None], (1, 2, 2), order=1)[0, 2:14, 2:14]
    for channel, (mean, std) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 1.0)]):
        np.testing.assert_allclose(nchw.feeds[0]["image"][0, channel], (expected - mean) / std,
                                   rtol=1e-6)
    np.testing.assert_array_equal(nhwc.feeds[0]["image"], nchw.feeds[0]["image"]
                                  .transpose(0, 2, 3, 1))


def test_split_shapes_only_the_samples_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.common.datasets import sources as dataset_sources

    shaped = []
    original = dataset_sources._shape_digits
    monkeypatch.setattr(dataset_sources, "_shape_digits",
                        lambda images, cfg: shaped.append(len(images)) or original(images, cfg))
    data = load([{"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224]}],
                kind="digits", image_size=224, channels=3)
    assert shaped == [1, 1, 1]  # the first sample of each split, to check it fits the model
    assert len(data.calibration.feeds[:64]) == 64
    assert shaped == [1, 1, 1, 63]


# --- npz / npy --------------------------------------------------------------------------------

def test_npz_with_two_inputs_and_labels(tmp_path: Path) -> None:
    write_table(tmp_path / "table.npz", 40)
    data = load(TABLE, kind="npz", path=str(tmp_path / "table.npz"), calibration_size=10,
                evaluation_size=12, training_size=5)
    assert [len(data.splits[n].feeds) for n in SPLITS] == [10, 12, 5]
    assert_disjoint(data)
    for name in SPLITS:
        split = data.splits[name]
        for feed, sample_id, label in zip(split.feeds, split.ids, split.labels, strict=True):
            number = row(sample_id)
            np.testing.assert_array_equal(feed["a"], [[number] * 3])
            np.testing.assert_array_equal(feed["b"], [[number, -number]])
            assert feed["b"].dtype == np.int64
            assert label == number % 4


def test_folder_of_npy_and_npz_joins_in_sorted_order(tmp_path: Path) -> None:
    single = [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}]
    np.save(tmp_path / "b.npy", np.full((3, 2), 2.0, np.float32))
    np.savez(tmp_path / "a.npz", x=np.full((2, 2), 1.0, np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load(single, kind="npy", path=str(tmp_path), calibration_size=2, evaluation_size=3)
    everything = {i: f["x"][0, 0] for n in SPLITS for i, f in
                  zip(data.splits[n].ids, data.splits[n].feeds, strict=True)}
    assert {Path(i).name: value for i, value in everything.items()} == {
        "a.npz[0]": 1.0, "a.npz[1]": 1.0, "b.npy[0]": 2.0, "b.npy[1]": 2.0, "b.npy[2]": 2.0}
    assert data.calibration.labels is None


def test_split_paths_read_their_own_files(tmp_path: Path) -> None:
    for name, start in (("train", 0), ("calib", 1000), ("val", 2000)):
        write_table(tmp_path / f"{name}.npz", 30, start)
    data = load(TABLE, kind="npz", path=str(tmp_path / "train.npz"),
                calibration_path=str(tmp_path / "calib.npz"),
                evaluation_path=str(tmp_path / "val.npz"),
                calibration_size=8, evaluation_size=100, training_size=None)
    assert [len(data.splits[n].feeds) for n in SPLITS] == [8, 30, 30]
    for name, file in (("calibration", "calib"), ("evaluation", "val"), ("training", "train")):
        assert {i.split("[")[0] for i in data.splits[name].ids} == {str(tmp_path / file)
                                                                     + ".npz"}
    assert all(1000 <= f["a"][0, 0] < 1030 for f in data.calibration.feeds)


def test_overlapping_split_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "calib").mkdir()
    write_table(tmp_path / "calib" / "part.npz", 10)
    write_table(tmp_path / "rest.npz", 10)
    with pytest.raises(RecipeError, match=r"dataset.path '.*' and dataset.calibration_path "
                                          r"'.*calib' overlap"):
        load(TABLE, kind="npz", path=str(tmp_path), calibration_path=str(tmp_path / "calib"))


# --- images -----------------------------------------------------------------------------------

def ramp(height: int, width: int) -> np.ndarray:
    """RGB pixels whose values say where they are: R = row, G = column, B = 7."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1)


def test_image_classes_crop_scale_and_stats(tmp_path: Path) -> None:
    for name in ("cat", "ant"):
        for i in range(3):
            write_png(tmp_path / name / f"{i}.png", ramp(10, 14) + (100 if name == "cat" else 0))
    inputs = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, 6, 6]}]
    data = load(inputs, kind="images", path=str(tmp_path), resize=10, image_size=6, channels=3,
                scale=0.5, mean=[1.0, 2.0, 3.0], std=[2.0, 4.0, 1.0], calibration_size=2,
                evaluation_size=2)
    assert_disjoint(data)
    split = data.calibration
    for feed, sample_id, label in zip(split.feeds, split.ids, split.labels, strict=True):
        assert label == (Path(sample_id).parent.name == "cat")  # ant = 0, cat = 1 (sorted)
        # 10x14 is already 10 on its short side: crop rows 2..8, columns 4..10, no resampling
        raw = ramp(10, 14)[2:8, 4:10].transpose(2, 0, 1) + (100 if label else 0)
        expected = (raw * 0.5 - np.array([1.0, 2.0, 3.0])[:, None, None]) \
            / np.array([2.0, 4.0, 1.0])[:, None, None]
        np.testing.assert_allclose(feed["pixels"][0], expected, rtol=1e-6)


def test_images_match_torchvision_imagenet_preprocessing(tmp_path: Path) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(3)
    files = [write_png(tmp_path / f"{i}.png", rng.integers(0, 256, (40 + 9 * i, 31, 3)))
             for i in range(3)]
    inputs = [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 24, 24]}]
    stats = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    data = load(inputs, kind="images", path=str(tmp_path), resize=28, image_size=24,
                channels=3, scale=1 / 255, calibration_size=1, evaluation_size=2, **stats)
    assert data.calibration.labels is None  # a flat folder has no classes
    reference = transforms.Compose([transforms.Resize(28), transforms.CenterCrop(24),
                                     transforms.ToTensor(), transforms.Normalize(**stats)])
    for name in ("calibration", "evaluation"):
        split = data.splits[name]
        for feed, sample_id in zip(split.feeds, split.ids, strict=True):
            with Image.open(sample_id) as image:
                expected = reference(image.convert("RGB")).numpy()
            np.testing.assert_allclose(feed["image"][0], expected, atol=1e-5)
    assert sorted(data.calibration.ids + data.evaluation.ids) == [str(f) for f in files]


def test_grayscale_uint8_nhwc_keeps_pixel_values(tmp_path: Path) -> None:
    pixels = np.arange(64).reshape(8, 8) * 3
    for i in range(4):
        write_png(tmp_path / "digits" / f"{i}.png", pixels + i)
    inputs = [{"name": "image", "dtype": "uint8", "shape": ["batch", 8, 8, 1]}]
    data = load(inputs, kind="images", path=str(tmp_path / "digits"), image_size=8,
                channels=1, layout="nhwc", dtype="uint8", calibration_size=2, evaluation_size=2)
    for feed, sample_id in zip(data.evaluation.feeds, data.evaluation.ids, strict=True):
        assert feed["image"].dtype == np.uint8
        np.testing.assert_array_equal(feed["image"][0, :, :, 0],
                                      pixels + int(Path(sample_id).stem))


def test_image_split_folders_decode_only_the_files_used(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for split, count in (("train", 20), ("val", 6)):
        for name in ("a", "b"):
            for i in range(count // 2):
                write_png(tmp_path / split / name / f"{i}.png", np.full((8, 8), i * 10))
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a: opened.append(path) or original(path, *a))
    data = load(kind="images", path=str(tmp_path / "train"),
                evaluation_path=str(tmp_path / "val"), calibration_size=4, evaluation_size=6)
    assert len(opened) == 3  # one sample per split, checked against the model input
    assert len(data.calibration.feeds[:4]) == 4
    assert len(opened) == 6
    assert {str(Path(i).parent.relative_to(tmp_path)) for i in data.evaluation.ids} == {
        "val/a", "val/b"}
    assert_disjoint(data)
    assert len(data.training.feeds) == 16


# --- callable and synthetic -------------------------------------------------------------------

def test_callable_feeds_get_a_batch_axis_and_labels() -> None:
    from tests.fixtures.dataset_helpers import tokens

    data = load(TOKENS, kind="callable", factory="tests.fixtures.dataset_helpers:tokens",
                factory_kwargs={"count": 30}, calibration_size=5, evaluation_size=10)
    assert [len(data.splits[n].feeds) for n in SPLITS] == [5, 10, 15]
    assert_disjoint(data)
    produced = list(tokens(30))
    for feed, sample_id, label in zip(data.evaluation.feeds, data.evaluation.ids,
                                      data.evaluation.labels, strict=True):
        source = produced[row(sample_id)]
        np.testing.assert_array_equal(feed["input_ids"], source["input_ids"][None])
        assert feed["attention_mask"].shape == (1, 6)
        assert label == source["labels"]


def test_an_endless_callable_is_read_up_to_the_sizes() -> None:
    data = load(TOKENS, kind="callable", factory="tests.fixtures.dataset_helpers:endless_tokens",
                calibration_size=3, evaluation_size=4, training_size=5)
    assert [len(data.splits[n].feeds) for n in SPLITS] == [3, 4, 5]
    values = sorted(int(f["input_ids"][0, 0]) for n in SPLITS for f in data.splits[n].feeds)
    assert values == list(range(12))


def test_a_factory_that_takes_the_split_makes_each_split_whole() -> None:
    common = {"kind": "callable", "factory_kwargs": {"count": 40}, "calibration_size": 32,
              "evaluation_size": 16}
    per_split = load(TOKENS, factory="tests.fixtures.dataset_helpers:split_tokens", **common)
    assert [len(per_split.splits[n].feeds) for n in SPLITS] == [32, 16, 40]
    for name in SPLITS:
        split = per_split.splits[name]
        assert {int(f["input_ids"].max()) for f in split.feeds} == {SPLIT_CODES[name]}
        assert split.ids[:2] == (f"factory({name})[0]", f"factory({name})[1]")
        assert split.feeds[0]["input_ids"].shape == (1, 6)  # the batch axis added, as before
        assert list(split.labels[:3]) == [0, 1, 0]
    # the no-argument form is called once and dealt: calibration gets at most half of it
    shared = load(TOKENS, factory="tests.fixtures.dataset_helpers:tokens", **common)
    assert [len(shared.splits[n].feeds) for n in SPLITS] == [20, 16, 4]


def test_a_split_in_factory_kwargs_is_refused_when_the_factory_takes_it() -> None:
    with pytest.raises(RecipeError, match=r"dataset.factory_kwargs.split: .*passes it for "
                                          r"each split itself"):
        load(TOKENS, kind="callable", factory="tests.fixtures.dataset_helpers:split_tokens",
             factory_kwargs={"split": "evaluation"})


def test_synthetic_warns_and_fits_the_inputs(caplog: pytest.LogCaptureFixture) -> None:
    inputs = [*TOKENS[:1], {"name": "x", "dtype": "float32", "shape": ["batch", 4],
                            "low": -2.0, "high": 2.0}]
    inputs[0] = {**inputs[0], "low": 3, "high": 9}
    with caplog.at_level(logging.WARNING):
        data = load(inputs, kind="synthetic", calibration_size=8, evaluation_size=8)
    assert any(r.levelno == logging.WARNING and "not representative" in r.getMessage()
               for r in caplog.records)
    ids = np.concatenate([f["input_ids"] for f in data.calibration.feeds])
    assert ids.dtype == np.int64
    assert ids.min() >= 3
    assert ids.max() <= 9
    assert len(set(ids.flat)) > 3
    x = np.concatenate([f["x"] for f in data.evaluation.feeds])
    assert x.dtype == np.float32
    assert x.min() >= -2
    assert x.max() <= 2
    with pytest.raises(InputError, match="the training split is empty"):
        _ = data.training


