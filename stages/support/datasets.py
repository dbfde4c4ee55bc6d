"""Calibration and evaluation samples for a model, drawn from the recipe's dataset.

Samples are feed dicts (input name -> array with a batch dimension of 1). The calibration and
evaluation splits are disjoint, drawn by a seeded permutation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Split:
    feeds: list[Feed]
    labels: np.ndarray | None  # one class index per sample, when the dataset has labels


@dataclass(frozen=True)
class Dataset:
    calibration: Split
    evaluation: Split


def load_dataset(dataset: Any, inputs: Any) -> Dataset:
    """Build the splits for ``dataset`` (recipe section) shaped for model ``inputs``."""
    if dataset.kind == "digits":
        images, labels = _digits()
        parts = _split_indices(len(images), dataset)
        used = np.concatenate(parts)
        # shape only the samples the splits use: 1797 images at 224x224x3 would be 1 GB
        arrays = {inputs[0].name: _shape_images(images[used], dataset)}
        labels = labels[used]
        parts = (np.arange(len(parts[0])), np.arange(len(parts[0]), len(used)))
    else:
        if dataset.kind == "npz":
            arrays, labels = _npz(Path(dataset.path))
        else:
            log.warning("dataset.kind=synthetic: random inputs are not representative of real "
                        "data; calibration and accuracy figures mean little")
            arrays, labels = _synthetic(dataset, inputs), None
        parts = _split_indices(len(next(iter(arrays.values()))), dataset)
    _check_arrays(arrays, inputs, dataset)
    return _take(arrays, labels if dataset.get("use_labels", True) else None, parts)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)  # 0..16


def _shape_images(images: np.ndarray, dataset: Any) -> np.ndarray:
    from scipy.ndimage import zoom

    if dataset.image_size != images.shape[1]:
        factor = dataset.image_size / images.shape[1]
        images = zoom(images, (1, factor, factor), order=1).astype(np.float32)
    images = (images - dataset.mean) / dataset.std
    images = np.repeat(images[:, None], dataset.channels, axis=1)  # NCHW
    if dataset.layout == "nhwc":
        images = images.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images, dtype=np.float32)


def _npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "labels"}
        labels = data["labels"].astype(np.int64) if "labels" in data.files else None
    return arrays, labels


def _synthetic(dataset: Any, inputs: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(dataset.seed)
    count = dataset.calibration_size + dataset.evaluation_size
    arrays = {}
    for spec in inputs:
        shape = [count] + [d if isinstance(d, int) else 1 for d in list(spec.shape)[1:]]
        values = rng.uniform(spec.low, spec.high, size=shape)
        arrays[spec.name] = values.astype(np.dtype(spec.dtype))
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], inputs: Any, dataset: Any) -> None:
    where = f"dataset ({dataset.kind}{', ' + dataset.path if dataset.path else ''})"
    for spec in inputs:
        if spec.name not in arrays:
            raise InputError(f"{where} has no data for model input '{spec.name}'; "
                             f"it has {sorted(arrays)}.")
        array = arrays[spec.name]
        if len(array) == 0:
            raise InputError(f"{where} is empty for model input '{spec.name}'.")
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(f"{where}: model input '{spec.name}' expects {spec.dtype}, "
                             f"the data is {array.dtype}.")
        expected = list(spec.shape)[1:]
        actual = list(array.shape[1:])
        fixed = [(e, a) for e, a in zip(expected, actual, strict=False) if isinstance(e, int)]
        if len(expected) != len(actual) or any(e != a for e, a in fixed):
            raise InputError(f"{where}: model input '{spec.name}' expects samples of shape "
                             f"{expected}, sample 0 has shape {actual}.")


def _split_indices(count: int, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, evaluation) sample indices from a seeded permutation."""
    order = np.random.default_rng(dataset.seed).permutation(count)
    n_cal = min(dataset.calibration_size, count // 2)
    return order[:n_cal], order[n_cal:n_cal + dataset.evaluation_size]


def _take(arrays: dict[str, np.ndarray], labels: np.ndarray | None,
          parts: tuple[np.ndarray, np.ndarray]) -> Dataset:
    def split(indices: np.ndarray) -> Split:
        feeds = [{name: a[i:i + 1] for name, a in arrays.items()} for i in indices]
        return Split(feeds, None if labels is None else labels[indices])

    return Dataset(calibration=split(parts[0]), evaluation=split(parts[1]))
