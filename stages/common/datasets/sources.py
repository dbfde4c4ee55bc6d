"""Where samples come from: one ``Pool`` per source, which shapes samples only when asked.

A pool knows how many samples it has, where each comes from (for error messages) and their
labels; ``take`` turns sample indices into feed dicts. Digits and image pools shape only the
samples a split asks for: 1797 digits at 224x224x3 would take 1 GB, and an image folder may be
far larger than the few hundred files calibration needs.
"""

from __future__ import annotations

import inspect
import logging
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.common.datasets import images as dataset_images
from stages.common.datasets.checks import Layout, dtype_name
from stages.common.factories import import_callable

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
ARRAY_SUFFIXES = (".npz", ".npy")


@dataclass(frozen=True)
class Pool:
    ids: list[str]  # where each sample comes from: "data/c.npz[3]", "val/cat/1.png", "factory[7]"
    labels: np.ndarray | None  # one class index per sample, when the source has labels
    take: Callable[[np.ndarray], list[Feed]]  # feeds for these sample indices, in their order
    # every sample has the same names, dtypes and shapes, so checking one checks them all
    uniform: bool = True


def digits_pool(cfg: Any, input_name: str) -> Pool:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 0..16 -> 0..1

    def take(indices: np.ndarray) -> list[Feed]:
        return _feeds({input_name: _shape_digits(images[indices], cfg)}, len(indices))

    return Pool([f"digits[{i}]" for i in range(len(images))],
                digits.target.astype(np.int64), take)


def _shape_digits(images: np.ndarray, cfg: Any) -> np.ndarray:
    from scipy.ndimage import zoom

    side = cfg.resize or cfg.image_size
    if side != images.shape[1]:
        factor = side / images.shape[1]
        images = zoom(images, (1, factor, factor), order=1).astype(np.float32)
    images = dataset_images.center_crop(images, cfg.image_size)
    batch = np.repeat(images[:, None], cfg.channels, axis=1)  # NCHW
    return dataset_images.normalize(batch, cfg)


def images_pool(folders: list[dataset_images.ImageFolder], classes: list[str], cfg: Any,
                input_name: str) -> Pool:
    """The files of ``folders`` joined; labels index ``classes`` (empty for flat folders)."""
    files = [f for folder in folders for f in folder.files]
    names = [c for folder in folders for c in folder.classes]
    labels = np.array([classes.index(n) for n in names], np.int64) if classes else None

    def take(indices: np.ndarray) -> list[Feed]:
        raw = dataset_images.load_images([files[i] for i in indices], cfg)
        return _feeds({input_name: dataset_images.normalize(raw, cfg)}, len(indices))

    return Pool([str(f) for f in files], labels, take)


def arrays_pool(path: Path, input_names: list[str]) -> Pool:
    """A .npz/.npy file, or a folder of them joined in sorted file-name order."""
    files = sorted(p for p in path.iterdir()
                   if p.suffix in ARRAY_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise InputError(f"dataset: folder '{path}' holds no .npz or .npy files.")
    parts = [_read_arrays(f, input_names) for f in files]
    first_file, (first, first_labels) = files[0], parts[0]
    ids = []
    for file, (arrays, labels) in zip(files, parts, strict=True):
        _same_layout(file, arrays, first_file, first)
        if (labels is None) != (first_labels is None):
            raise InputError(f"dataset: '{file}' and '{first_file}' disagree on having a "
                             "'labels' array; give labels in every file or in none.")
        count = _count(file, arrays)
        if labels is not None and len(labels) != count:
            raise InputError(f"dataset: '{file}' has {len(labels)} labels for {count} samples.")
        ids += [f"{file}[{i}]" for i in range(count)]
    arrays = {name: np.concatenate([a[name] for a, _ in parts]) for name in first}
    labels = None if first_labels is None else np.concatenate([lb for _, lb in parts])
    return Pool(ids, labels, lambda indices: _feeds({n: a[indices] for n, a in arrays.items()},
                                                    len(indices)))


def _read_arrays(file: Path, input_names: list[str]) -> tuple[dict[str, np.ndarray],
                                                              np.ndarray | None]:
    try:
        if file.suffix == ".npy":
            return {_npy_input(file, input_names): np.load(file, allow_pickle=False)}, None
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name != "labels"}
            labels = data["labels"].astype(np.int64) if "labels" in data.files else None
        if labels is not None and labels.ndim != 1:
            raise InputError(f"dataset: 'labels' in '{file}' has shape {list(labels.shape)}; "
                             "give one class index per sample (a 1-D array).")
    except (OSError, ValueError) as exc:  # not an array file, or one that needs pickle
        raise InputError(f"dataset: cannot read '{file}' as {file.suffix}: {exc}") from exc
    return arrays, labels


def _npy_input(file: Path, input_names: list[str]) -> str:
    if len(input_names) != 1:
        raise InputError(f"dataset: '{file}' is a .npy file, which holds one array, but the "
                         f"model has {len(input_names)} inputs {input_names}; use a .npz with "
                         "one array per input.")
    return input_names[0]


def peek_arrays(path: Path, input_names: list[str]) -> tuple[str, Layout]:
    """(sample id, layout of one sample) of the first array file of ``path``, from the .npy
    headers of its arrays: no array is read."""
    files = sorted(p for p in path.iterdir()
                   if p.suffix in ARRAY_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise InputError(f"dataset: folder '{path}' holds no .npz or .npy files.")
    file = files[0]
    try:
        if file.suffix == ".npy":
            with file.open("rb") as handle:
                return f"{file}[0]", {_npy_input(file, input_names): _header(handle)}
        with zipfile.ZipFile(file) as archive:
            members = [m for m in archive.namelist() if m.endswith(".npy")]
            headers = {}
            for member in members:
                with archive.open(member) as handle:
                    headers[member.removesuffix(".npy")] = _header(handle)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"dataset: cannot read '{file}' as {file.suffix}: {exc}") from exc
    return f"{file}[0]", {name: h for name, h in headers.items() if name != "labels"}


def _header(handle: Any) -> tuple[str, tuple[int, ...]]:
    """dtype and shape of one sample (a batch axis of 1, as ``_feeds`` slices rows)."""
    version = np.lib.format.read_magic(handle)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(handle)
    return dtype_name(dtype), (1, *shape[1:])


def _same_layout(file: Path, arrays: dict[str, np.ndarray], first_file: Path,
                 first: dict[str, np.ndarray]) -> None:
    # np.concatenate would silently upcast a float64 file among float32 ones
    for name in sorted(set(arrays) | set(first)):
        mine, theirs = arrays.get(name), first.get(name)
        if mine is None or theirs is None:
            raise InputError(f"dataset: '{file}' and '{first_file}' hold different arrays "
                             f"({sorted(arrays)} vs {sorted(first)}).")
        if mine.dtype != theirs.dtype or mine.shape[1:] != theirs.shape[1:]:
            raise InputError(
                f"dataset: array '{name}' is {mine.dtype} {list(mine.shape[1:])} per sample in "
                f"'{file}' but {theirs.dtype} {list(theirs.shape[1:])} in '{first_file}'.")


def _count(file: Path, arrays: dict[str, np.ndarray]) -> int:
    counts = {name: len(a) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"dataset: the arrays of '{file}' have different sample counts "
                         f"(first axis): {counts}.")
    return next(iter(counts.values()), 0)


def callable_pool(cfg: Any, inputs: Any, limit: int | None, split: str | None = None) -> Pool:
    """The feed dicts of ``dataset.factory``, read in full (or up to ``limit``); with ``split``
    the factory is asked for that split's samples (it takes a ``split`` parameter)."""
    ranks = {spec.name: len(spec.shape) for spec in inputs}
    tag = "factory" if split is None else f"factory({split})"
    feeds, labels = [], []
    for i, item in enumerate(islice(produce(cfg, split), limit)):
        feed, label = as_feed(cfg.factory, i, item, ranks)
        feeds.append(feed)
        labels.append(label)
    has = [label is not None for label in labels]
    if any(has) and not all(has):
        raise InputError(f"dataset.factory '{cfg.factory}': sample {has.index(not has[0])} "
                         f"{'lacks' if has[0] else 'has'} a 'labels' entry and sample 0 "
                         f"{'has' if has[0] else 'lacks'} one; label every sample or none.")
    label_array = np.array([int(np.asarray(x).reshape(-1)[0]) for x in labels], np.int64) \
        if labels and all(has) else None
    return Pool([f"{tag}[{i}]" for i in range(len(feeds))], label_array,
                lambda indices: [feeds[i] for i in indices], uniform=False)


def takes_split(cfg: Any) -> bool:
    """Whether ``dataset.factory`` has a parameter named ``split``: it then makes each split."""
    try:
        return "split" in inspect.signature(_import_factory(cfg)).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def produce(cfg: Any, split: str | None) -> Iterable[Any]:
    """What ``dataset.factory`` returns, called with ``factory_kwargs`` (and ``split``)."""
    kwargs = OmegaConf.to_container(cfg.factory_kwargs, resolve=True)
    if split is not None:
        if "split" in kwargs:
            raise RecipeError(f"dataset.factory_kwargs.split: '{cfg.factory}' takes the split, "
                              "and edgekiln passes it for each split itself; remove the key.")
        kwargs["split"] = split
    produced = _import_factory(cfg)(**kwargs)
    if not isinstance(produced, Iterable) or isinstance(produced, Mapping):
        raise InputError(f"dataset.factory '{cfg.factory}' returned a "
                         f"{type(produced).__name__}; it must return an iterable of feed dicts.")
    return produced


def as_feed(factory: str, index: int, item: Any,
            ranks: dict[str, int]) -> tuple[Feed, Any]:
    """(feed, its 'labels' entry or None) of one item a factory yielded."""
    if not isinstance(item, Mapping):
        raise InputError(f"dataset.factory '{factory}': sample {index} is a "
                         f"{type(item).__name__}, not a dict {{input name: array}}.")
    feed = {str(k): np.asarray(v) for k, v in item.items() if k != "labels"}
    # the batch axis is optional: add it where a sample lacks exactly that one axis
    feed = {k: v[None] if ranks.get(k) == v.ndim + 1 else v for k, v in feed.items()}
    return feed, item.get("labels")


def _import_factory(cfg: Any) -> Callable[..., Any]:
    return import_callable(cfg.factory, "dataset.factory", cfg.get("trusted_packages") or ())


def synthetic_pool(cfg: Any, inputs: Any, count: int) -> Pool:
    log.warning("dataset.kind=synthetic: random inputs are not representative of real data; "
                "calibration ranges and accuracy figures from them mean little")
    rng = np.random.default_rng(cfg.seed)
    arrays = {}
    for spec in inputs:
        shape = [count] + [d if isinstance(d, int) else 1 for d in list(spec.shape)[1:]]
        dtype = np.dtype(spec.dtype)
        low, high = spec.get("low", 0.0), spec.get("high", 1.0)
        if np.issubdtype(dtype, np.integer):
            values = rng.integers(int(low), int(high), size=shape, endpoint=True)
        else:
            values = rng.uniform(low, high, size=shape)
        arrays[spec.name] = values.astype(dtype)
    return Pool([f"synthetic[{i}]" for i in range(count)], None,
                lambda indices: _feeds({n: a[indices] for n, a in arrays.items()},
                                       len(indices)))


def _feeds(arrays: dict[str, np.ndarray], count: int) -> list[Feed]:
    """Split batches into one feed per sample, each keeping a batch axis of 1."""
    return [{name: a[i:i + 1] for name, a in arrays.items()} for i in range(count)]
