"""The dataset checked against ``model.inputs`` when the plan is built, before any stage runs.

Kinds that read the dataset name ``check_dataset`` as their plan-time check
(``StageSpec.check``), so a wrong input name or dtype fails in well under a second instead of
after export and quantize. It looks at one sample of each source in use, found without shaping
the data: digits and images are shaped by the dataset section alone, array files tell their
dtype and shape in their .npy headers, text files are read line by line (every line, without
tokenizing: a sample is int64 tokens of the model's inputs), and a factory is asked for its
first sample (of each split, when it takes the split). The comparison is the one a stage makes
when it loads a split (``checks.problem``), which then checks again: every sample of a factory,
one of the others.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import InputError
from stages.common.datasets.checks import SPLITS, Layout, layout_of, one_image_input, problem
from stages.common.trust import check_factory


@dataclass(frozen=True)
class Peek:
    source: str  # the recipe key of the source and its value: "dataset.path 'data/x.npz'"
    sample: str  # which sample the layout is of
    layout: Layout


def check_dataset(config: dict[str, Any]) -> None:
    """One sample of each source of ``config["dataset"]`` fits ``config["model"]["inputs"]``.

    Raises:
        InputError: a sample does not fit; the message names the dataset key, the sample and
            ``model.inputs.<i>``.
        RecipeError: the section cannot feed the model (an image source for two inputs).
    """
    dataset = OmegaConf.create(config["dataset"])
    specs = list(OmegaConf.create(config["model"]["inputs"]))
    if dataset.kind == "callable" and dataset.factory:
        check_factory(dataset.factory, "dataset.factory", dataset.get("trusted_packages") or ())
    for peek in _peeks(dataset, specs):
        found = problem(peek.layout, specs)
        if found:
            raise InputError(f"{peek.source}: {peek.sample}: {found}. Every sample must match "
                             "model.inputs (checked before any stage ran).")


def _peeks(cfg: DictConfig, specs: list[Any]) -> list[Peek]:
    names = [spec.name for spec in specs]
    if cfg.kind in ("digits", "images"):
        return [_image_peek(cfg, one_image_input(cfg.kind, names))]
    if cfg.kind in ("npz", "npy"):
        return [_array_peek(key, path, names) for key, path in _array_paths(cfg).items()]
    if cfg.kind == "text":
        return [_text_peek(cfg, key, path, names) for key, path in _array_paths(cfg).items()]
    if cfg.kind == "callable" and cfg.factory:
        return _factory_peeks(cfg, specs)
    return []  # synthetic samples are drawn from model.inputs themselves


def _image_peek(cfg: DictConfig, name: str) -> Peek:
    # what images.normalize makes of any digit or image: NCHW or NHWC, in dataset.dtype
    side, channels = cfg.image_size, cfg.channels
    shape = (1, channels, side, side) if cfg.layout == "nchw" else (1, side, side, channels)
    return Peek(f"dataset (kind={cfg.kind})", "every sample, as dataset.image_size/channels/"
                "layout/dtype shape it", {name: (cfg.dtype, shape)})


def _array_paths(cfg: DictConfig) -> dict[str, str]:
    """Recipe key -> path of each array source in use (dataset.path when a split reads it)."""
    own = {f"dataset.{name}_path": cfg[f"{name}_path"] for name in SPLITS
           if cfg[f"{name}_path"]}
    return ({"dataset.path": cfg.path} if cfg.path and len(own) < len(SPLITS) else {}) | own


def _array_peek(key: str, path: str, names: list[str]) -> Peek:
    from stages.common.datasets import sources  # numpy: only array and factory sources pay

    sample, layout = sources.peek_arrays(Path(path), names)
    return Peek(f"{key} '{path}'", f"sample {sample}", layout)


def _text_peek(cfg: DictConfig, key: str, path: str, names: list[str]) -> Peek:
    from stages.common.datasets import text  # reads the lines; tokenizing waits for a stage

    text.read_records(Path(path), cfg)
    return Peek(f"{key} '{path}'", "every sample, as dataset.max_length cuts it",
                text.peek_layout(cfg, names))


def _factory_peeks(cfg: DictConfig, specs: list[Any]) -> list[Peek]:
    from stages.common.datasets import sources

    kwargs = json.dumps(OmegaConf.to_container(cfg.factory_kwargs, resolve=True),
                        sort_keys=True)
    ranks = json.dumps({spec.name: len(spec.shape) for spec in specs}, sort_keys=True)
    peeks = []
    trusted = tuple(cfg.get("trusted_packages") or ())
    for split in SPLITS if sources.takes_split(cfg) else (None,):
        layout = _first_layout(cfg.factory, kwargs, split, ranks, trusted)
        if layout is not None:  # an empty split is the loader's to explain, if one needs it
            tag = "factory" if split is None else f"factory({split})"
            peeks.append(Peek(f"dataset.factory '{cfg.factory}'", f"sample {tag}[0]", layout))
    return peeks


@functools.cache  # the plan checks each target's node: one factory call per split will do
def _first_layout(factory: str, kwargs: str, split: str | None, ranks: str,
                  trusted: tuple[str, ...]) -> Layout | None:
    from stages.common.datasets import sources

    cfg = OmegaConf.create({"factory": factory, "factory_kwargs": json.loads(kwargs),
                            "trusted_packages": list(trusted)})
    item = next(iter(sources.produce(cfg, split)), None)
    if item is None:
        return None
    return layout_of(sources.as_feed(factory, 0, item, json.loads(ranks))[0])
