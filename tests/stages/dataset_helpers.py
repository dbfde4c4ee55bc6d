"""Helpers for the dataset tests: loading a section, real files, and dataset factories.

The factories are what ``dataset.kind=callable`` recipes point at ("dataset_helpers:tokens"):
tokenized-text-like feed dicts.
"""

from __future__ import annotations

from itertools import count as endless
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from stages.support.datasets import SPLITS, Dataset, load_dataset

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

IMAGE = [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
TABLE = [{"name": "a", "dtype": "float32", "shape": ["batch", 3]},
         {"name": "b", "dtype": "int64", "shape": ["batch", 2]}]
TOKENS = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 6]},
          {"name": "attention_mask", "dtype": "int64", "shape": ["batch", 6]}]


def load(inputs: list[dict[str, Any]] = IMAGE, **dataset: Any) -> Dataset:
    return load_dataset(OmegaConf.create(dataset), OmegaConf.create(inputs))


def assert_disjoint(data: Dataset) -> None:
    ids = [data.splits[name].ids for name in SPLITS]
    for i, first in enumerate(ids):
        assert len(set(first)) == len(first), "a split repeats a sample"
        for second in ids[i + 1:]:
            assert not set(first) & set(second), "two splits share a sample"


def row(sample_id: str) -> int:
    return int(sample_id.rsplit("[", 1)[1].rstrip("]"))


def write_table(path: Path, count: int, start: int = 0, **extra: np.ndarray) -> None:
    numbers = np.arange(start, start + count)
    np.savez(path, a=np.repeat(numbers[:, None], 3, axis=1).astype(np.float32),
             b=np.stack([numbers, -numbers], axis=1).astype(np.int64),
             labels=numbers % 4, **extra)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path




def tokens(count: int, length: int = 6, vocabulary: int = 50) -> Iterator[dict[str, object]]:
    """``count`` token sequences without a batch axis; label = whether the first token is odd."""
    rng = np.random.default_rng(7)
    for _ in range(count):
        ids = rng.integers(1, vocabulary, size=length, dtype=np.int64)
        yield {"input_ids": ids, "attention_mask": np.ones(length, np.int64),
               "labels": int(ids[0] % 2)}


def endless_tokens(length: int = 6) -> Iterator[dict[str, object]]:
    """Never ends: only a recipe that caps training_size can read it."""
    for i in endless():
        yield {"input_ids": np.full((1, length), i, np.int64),
               "attention_mask": np.ones((1, length), np.int64)}


def one_bad(count: int, bad: int, length: int = 6) -> Iterator[dict[str, object]]:
    """Like ``tokens`` but sample ``bad`` is int32, as a careless tokenizer call gives."""
    for sample in tokens(count, length):
        if bad == 0:
            sample["input_ids"] = sample["input_ids"].astype(np.int32)
        bad -= 1
        yield sample


def unlabelled_after(count: int, first: int) -> Iterator[dict[str, object]]:
    """Labels stop after ``first`` samples."""
    for i, sample in enumerate(tokens(count)):
        if i >= first:
            del sample["labels"]
        yield sample


NOT_CALLABLE = [1, 2, 3]
