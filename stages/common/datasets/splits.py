"""Calibration, evaluation and training samples for a model, drawn from the recipe's dataset.

Samples are feed dicts (input name -> array with a batch axis of 1). The three splits are
disjoint: they are dealt from one seeded permutation of the source, or read from their own
files (``DatasetConfig`` in pipeline/schema.py has the rules). A split shapes its samples on
first use, so quantize pays only for the calibration samples it takes. Data that does not fit
the model's inputs fails here, before any quantization, with the input, expected vs actual and
the first bad sample (``checks.problem``; the plan already checked one sample per source).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import InputError, RecipeError
from pipeline.schema import DatasetConfig
from stages.common.datasets import images as dataset_images
from stages.common.datasets import sources as dataset_sources
from stages.common.datasets.checks import SPLITS, layout_of, one_image_input, problem
from stages.common.datasets.sources import Feed, Pool

FILE_KINDS = ("npz", "npy", "images", "text")

__all__ = ["SPLITS", "Dataset", "Feed", "Feeds", "Split", "load_dataset"]


class Feeds(Sequence[Feed]):
    """A split's feeds, shaped on first access (one batch per request) and then kept; each is
    checked for NaN and infinite values then, so no stage ever sees one."""

    def __init__(self, pool: Pool, indices: np.ndarray, name: str = "", where: str = "") -> None:
        self._pool, self._indices = pool, indices
        self._name, self._where = name, where  # the split's name and the dataset, for errors
        self._done: dict[int, Feed] = {}

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, item: int) -> Feed: ...
    @overload
    def __getitem__(self, item: slice) -> list[Feed]: ...

    def __getitem__(self, item: int | slice) -> Feed | list[Feed]:
        positions = range(len(self))[item]  # IndexError and negative indices as for a list
        if isinstance(positions, int):
            return self._load([positions])[0]
        return self._load(list(positions))

    def __iter__(self) -> Iterator[Feed]:  # Sequence's own would shape one sample at a time
        return iter(self._load(list(range(len(self)))))

    def _load(self, positions: list[int]) -> list[Feed]:
        todo = [p for p in positions if p not in self._done]
        if todo:
            feeds = self._pool.take(self._indices[todo])
            for position, feed in zip(todo, feeds, strict=True):
                self._check_finite(position, feed)
            self._done.update(zip(todo, feeds, strict=True))
        return [self._done[p] for p in positions]

    def _check_finite(self, position: int, feed: Feed) -> None:
        for input_name, array in feed.items():
            if not np.issubdtype(array.dtype, np.inexact) or np.isfinite(array).all():
                continue
            nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            sample = self._pool.ids[self._indices[position]]
            raise InputError(
                f"{self._where}: {self._name} sample {position} ({sample}): model input "
                f"'{input_name}' holds {nan} NaN and {inf} infinite value(s). Calibration "
                "ranges, accuracy and agreement computed from such a sample mean nothing; "
                "fix or remove it.")


@dataclass(frozen=True)
class Split:
    feeds: Sequence[Feed]
    labels: np.ndarray | None  # one class index per sample, when the dataset has labels
    ids: tuple[str, ...] = ()  # where each sample comes from ("data/x.npz[3]", "val/cat/1.png")


@dataclass(frozen=True)
class Dataset:
    """The disjoint splits; asking for an empty one is an error that says why it is empty."""

    splits: dict[str, Split]
    where: str
    why_empty: dict[str, str]

    @property
    def calibration(self) -> Split:
        return self.split("calibration")

    @property
    def evaluation(self) -> Split:
        return self.split("evaluation")

    @property
    def training(self) -> Split:
        return self.split("training")

    def split(self, name: str) -> Split:
        split = self.splits[name]
        if not split.feeds:
            raise InputError(f"{self.where}: the {name} split is empty: {self.why_empty[name]}.")
        return split


def load_dataset(dataset: Any, inputs: Any) -> Dataset:
    """Build the splits for ``dataset`` (recipe section) shaped for model ``inputs``.

    Raises:
        RecipeError: the section is inconsistent (a split path for a source without files).
        InputError: the data is missing, unreadable or does not fit ``inputs``.
    """
    cfg = _settings(dataset)
    specs = list(inputs)
    where = _where(cfg)
    splits, why_empty = {}, {}
    for name, (pool, indices, why) in _deal(cfg, specs).items():
        labels = None if pool.labels is None or not cfg.use_labels else pool.labels[indices]
        splits[name] = Split(Feeds(pool, indices, name, where), labels,
                             tuple(pool.ids[i] for i in indices))
        why_empty[name] = why
        _check_split(name, splits[name], pool.uniform, specs, where)
    return Dataset(splits, where, why_empty)


def _settings(dataset: Any) -> DictConfig:
    """The section checked against the schema, defaults filled in, enums as plain strings."""
    raw = OmegaConf.to_container(dataset, resolve=True) if OmegaConf.is_config(dataset) \
        else dict(dataset)
    for key in ("mean", "std"):
        if isinstance(raw.get(key), int | float):  # older recipes gave one number
            raw[key] = [raw[key]]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), raw)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"dataset.{exc.full_key}: {str(exc).splitlines()[0]}") from None
    return OmegaConf.create(OmegaConf.to_container(merged, enum_to_str=True))


def _where(cfg: DictConfig) -> str:
    detail = cfg.factory if cfg.kind == "callable" else cfg.path
    return f"dataset (kind={cfg.kind}{', ' + str(detail) if detail else ''})"


def _deal(cfg: DictConfig, specs: list[Any]) -> dict[str, tuple[Pool, np.ndarray, str]]:
    """Each split's pool and sample indices (and why it may be empty), disjoint by design."""
    own = {name: cfg[f"{name}_path"] for name in SPLITS if cfg[f"{name}_path"]}
    if own and cfg.kind not in FILE_KINDS:
        raise RecipeError(f"dataset.{next(iter(own))}_path: only file sources "
                          f"({', '.join(FILE_KINDS)}) take split paths, not kind={cfg.kind}.")
    if cfg.kind == "callable" and cfg.factory and dataset_sources.takes_split(cfg):
        return _deal_factory(cfg, specs)
    shared = [name for name in SPLITS if name not in own]
    pools = _open_pools(cfg, specs, own, shared)
    dealt = {}
    pool = pools.get("shared", Pool([], None, lambda _indices: []))
    order = np.random.default_rng(cfg.seed).permutation(len(pool.ids))
    start = 0
    for name in shared:
        room = len(pool.ids) - start
        halved = name == "calibration" and "evaluation" in shared
        if halved:  # a small source still leaves half of its samples for evaluation
            room = min(room, len(pool.ids) // 2)
        size = cfg[f"{name}_size"]
        taken = order[start:start + (room if size is None else min(size, room))]
        why = (f"the source holds {len(pool.ids)} samples, {start} of them in earlier splits, "
               f"{_size(cfg, name)}")
        if halved:
            why += ", and calibration takes at most half of a source it shares with evaluation"
            if cfg.kind == "callable":
                why += " (a factory with a 'split' parameter makes each split whole)"
        if "shared" not in pools:
            why = f"dataset.{name}_path is not set and neither is dataset.path"
        dealt[name] = (pool, taken, why)
        start += len(taken)
    for name, path in own.items():
        pool = pools[name]
        order = np.random.default_rng(cfg.seed).permutation(len(pool.ids))
        dealt[name] = (pool, order[:cfg[f"{name}_size"]], f"dataset.{name}_path '{path}' "
                       f"holds {len(pool.ids)} samples, {_size(cfg, name)}")
    return {name: dealt[name] for name in SPLITS}


def _deal_factory(cfg: DictConfig, specs: list[Any]) -> dict[str, tuple[Pool, np.ndarray, str]]:
    """Each split as a factory that takes the split gives it: its first ``<split>_size``
    samples, in the factory's order (it decides what goes where, so nothing is shuffled)."""
    dealt = {}
    for name in SPLITS:
        pool = dataset_sources.callable_pool(cfg, specs, cfg[f"{name}_size"], split=name)
        why = (f"dataset.factory '{cfg.factory}' yielded no samples for split='{name}' "
               f"({_size(cfg, name)})")
        dealt[name] = (pool, np.arange(len(pool.ids)), why)
    return dealt


def _size(cfg: DictConfig, name: str) -> str:
    size = cfg[f"{name}_size"]
    return f"{name}_size={'null' if size is None else size}"


def _open_pools(cfg: DictConfig, specs: list[Any], own: dict[str, str],
                shared: list[str]) -> dict[str, Pool]:
    """The pools in use: "shared" (when a split draws from it) and one per split path."""
    if cfg.kind in FILE_KINDS:
        paths = ({"shared": cfg.path} if shared and cfg.path else {}) | own
        if not paths:
            raise RecipeError(f"dataset.path: required when dataset.kind={cfg.kind} (or give "
                              "every split its own calibration_path/evaluation_path/"
                              "training_path).")
        _check_disjoint(paths)
        return _file_pools(cfg, specs, {k: Path(p) for k, p in paths.items()})
    if not shared:
        return {}
    names = [spec.name for spec in specs]
    if cfg.kind == "digits":
        return {"shared": dataset_sources.digits_pool(cfg, one_image_input("digits", names))}
    capped = cfg.training_size is not None
    total = cfg.calibration_size + cfg.evaluation_size + (cfg.training_size or 0)
    if cfg.kind == "callable":
        if not cfg.factory:
            raise RecipeError("dataset.factory: required when dataset.kind=callable "
                              "('package.module:callable' returning feed dicts).")
        return {"shared": dataset_sources.callable_pool(cfg, specs, total if capped else None)}
    return {"shared": dataset_sources.synthetic_pool(cfg, specs, total)}


def _check_disjoint(paths: dict[str, str]) -> None:
    resolved = {key: Path(path).resolve() for key, path in paths.items()}
    keys = list(resolved)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            a, b = resolved[first], resolved[second]
            if a == b or a in b.parents or b in a.parents:
                raise RecipeError(
                    f"{_key(first)} '{paths[first]}' and {_key(second)} '{paths[second]}' "
                    "overlap; splits must not share samples, so give them separate files or "
                    "folders.")


def _key(pool: str) -> str:
    return "dataset.path" if pool == "shared" else f"dataset.{pool}_path"


def _file_pools(cfg: DictConfig, specs: list[Any], paths: dict[str, Path]) -> dict[str, Pool]:
    for key, path in paths.items():
        if not path.exists():
            raise RecipeError(f"{_key(key)}: '{path}' does not exist (paths are relative to "
                              f"{Path.cwd()}).")
    names = [spec.name for spec in specs]
    if cfg.kind == "text":
        from stages.common.datasets.text import text_pool

        return {key: text_pool(path, cfg, names) for key, path in paths.items()}
    if cfg.kind != "images":
        return {key: dataset_sources.arrays_pool(path, names) for key, path in paths.items()}
    name = one_image_input("images", names)
    folders = {key: dataset_images.scan(path) for key, path in paths.items()}
    flat = {key for key, folder in folders.items() if None in folder.classes}
    if flat and len(flat) != len(folders):
        raise InputError(f"dataset: {_key(sorted(flat)[0])} is a flat folder (no labels) but "
                         f"{_key(sorted(set(folders) - flat)[0])} has class subfolders; use "
                         "one layout for every split.")
    classes = sorted({c for folder in folders.values() for c in folder.classes if c})
    return {key: dataset_sources.images_pool([folder], classes, cfg, name)
            for key, folder in folders.items()}


def _check_split(name: str, split: Split, uniform: bool, specs: list[Any], where: str) -> None:
    """Fail on the first sample that does not fit ``specs``; one sample stands for all when
    the pool is uniform (rows of the same arrays, or images shaped the same way)."""
    for index in range(min(len(split.feeds), 1) if uniform else len(split.feeds)):
        found = problem(layout_of(split.feeds[index]), specs)
        if found:
            raise InputError(f"{where}: {name} sample {index} ({split.ids[index]}): {found}. "
                             "Every sample must match model.inputs.")
