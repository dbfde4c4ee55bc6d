"""Images as model inputs: folders of image files, and the declared shaping of any image batch.

Resizing and cropping follow torchvision's ``Resize(int)`` and ``CenterCrop`` arithmetic, so a
model trained with those transforms sees the same pixels here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import InputError, RecipeError

if TYPE_CHECKING:
    from pathlib import Path

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                      ".ppm", ".pgm"})


@dataclass(frozen=True)
class ImageFolder:
    files: list[Path]
    classes: list[str | None]  # per file: its class subfolder, None in a flat folder


def scan(folder: Path) -> ImageFolder:
    """The images of ``folder``: directly in it (flat) or one level down (class per subfolder)."""
    if not folder.is_dir():
        raise InputError(f"dataset: '{folder}' is not a folder of images (dataset.kind=images "
                         "reads a folder: one subfolder per class, or the images directly).")
    flat = _images(folder)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and _images(p))
    if flat and subfolders:
        raise InputError(f"dataset: '{folder}' holds images both directly ({flat[0].name}) and "
                         f"in subfolders ({subfolders[0].name}/); use one layout: a subfolder "
                         "per class, or a flat folder without labels.")
    if flat:
        return ImageFolder(flat, [None] * len(flat))
    files = [(sub.name, image) for sub in subfolders for image in _images(sub)]
    return ImageFolder([f for _, f in files], [name for name, _ in files])


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def load_images(files: list[Path], cfg: Any) -> np.ndarray:
    """Decode, resize and crop ``files`` into one float32 NCHW batch of raw 0..255 pixels."""
    from PIL import Image, UnidentifiedImageError

    if cfg.channels not in (1, 3):
        raise RecipeError(f"dataset.channels: images are read as grayscale (1) or RGB (3), "
                          f"not {cfg.channels}.")
    mode = "L" if cfg.channels == 1 else "RGB"
    batch = np.empty((len(files), cfg.channels, cfg.image_size, cfg.image_size), np.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = _resize_crop(image.convert(mode), cfg)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"dataset: cannot decode image '{path}': {exc}") from exc
        batch[i] = pixels.reshape(cfg.image_size, cfg.image_size, -1).transpose(2, 0, 1)
    return batch


def _resize_crop(image: Any, cfg: Any) -> np.ndarray:
    from PIL import Image

    short = cfg.resize or cfg.image_size
    width, height = image.size
    if min(width, height) != short:
        # torchvision's Resize(int): the shorter side becomes `short`, the longer one truncates
        if width <= height:
            size = (short, int(short * height / width))
        else:
            size = (int(short * width / height), short)
        image = image.resize(size, Image.Resampling.BILINEAR)
    width, height = image.size
    crop = cfg.image_size
    if crop > min(width, height):
        raise RecipeError(f"dataset.image_size: a {crop}x{crop} center crop does not fit images "
                          f"resized to {width}x{height} (dataset.resize={cfg.resize}).")
    left, top = round((width - crop) / 2.0), round((height - crop) / 2.0)
    return np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32)


def center_crop(batch: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of an N..HW batch."""
    height, width = batch.shape[-2:]
    if size > min(height, width):
        raise RecipeError(f"dataset.image_size: a {size}x{size} center crop does not fit images "
                          f"of {height}x{width} (raise dataset.resize).")
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return batch[..., top:top + size, left:left + size]


def normalize(batch: np.ndarray, cfg: Any) -> np.ndarray:
    """Scale, per-channel mean/std, layout and dtype of a float32 NCHW batch, as declared."""
    channels = batch.shape[1]
    if cfg.scale != 1.0:
        batch = batch * np.float32(cfg.scale)
    stats = {}
    for key in ("mean", "std"):
        values = np.asarray(cfg[key], dtype=np.float32)
        if values.size not in (1, channels):
            raise RecipeError(f"dataset.{key}: give one value or one per channel ({channels}), "
                              f"not {values.size} ({list(cfg[key])}).")
        stats[key] = values.reshape(1, -1, 1, 1)
    batch = (batch - stats["mean"]) / stats["std"]
    if cfg.layout == "nhwc":
        batch = batch.transpose(0, 2, 3, 1)
    dtype = np.dtype(cfg.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        batch = np.clip(np.rint(batch), info.min, info.max)
    return np.ascontiguousarray(batch, dtype=dtype)
