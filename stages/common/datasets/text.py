"""Text datasets: a .txt file (one example a line) or a .jsonl file, tokenized for the model.

Records are read without transformers (the plan reads every line, so a bad line fails before
any stage runs, as ``file:line``); tokenizing needs the tokenizer folder (``dataset.tokenizer``,
which the plan sets to the model's Hugging Face folder when the recipe names none) and happens
when a stage opens the pool. Feeds hold exactly the model's inputs, as int64 (1, tokens).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, RecipeError

if TYPE_CHECKING:
    from stages.common.datasets.checks import Layout
    from stages.common.datasets.sources import Pool

SUFFIXES = (".txt", ".jsonl")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# a folder of tokenizer files has one of these
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


@dataclass(frozen=True)
class Record:
    where: str  # "data/train.jsonl:12"
    text: str
    pair: str | None = None
    label: int | None = None


def read_records(path: Path, cfg: Any) -> list[Record]:
    """The examples of a .txt or .jsonl file; InputError naming ``file:line`` for a bad one."""
    if path.suffix not in SUFFIXES:
        raise InputError(f"dataset: '{path}' is not a .txt or .jsonl file (dataset.kind=text).")
    if path.suffix == ".txt" and (cfg.pair_field or cfg.label_field):
        key = "pair_field" if cfg.pair_field else "label_field"
        raise RecipeError(f"dataset.{key}: a .txt file holds one text a line; sentence pairs "
                          f"and labels need a .jsonl file ('{path}').")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"dataset: cannot read '{path}' as UTF-8 text: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        records.append(Record(where, line) if path.suffix == ".txt"
                       else _json_record(where, line, cfg))
    return records


def _json_record(where: str, line: str, cfg: Any) -> Record:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise InputError(f"dataset: {where}: not a JSON object: {exc}") from exc
    if not isinstance(item, dict):
        raise InputError(f"dataset: {where}: holds a {type(item).__name__}, not a JSON object.")
    fields = {"text_field": cfg.text_field, "pair_field": cfg.pair_field}
    values = {}
    for key, name in fields.items():
        if name is None:
            continue
        if not isinstance(item.get(name), str):
            found = "has no" if name not in item else f"has a {type(item[name]).__name__} as"
            raise InputError(f"dataset: {where} {found} field '{name}' (dataset.{key}); every "
                             f"line needs a string there (its keys: {sorted(item)}).")
        values[key] = item[name]
    label = item.get(cfg.label_field) if cfg.label_field else None
    if cfg.label_field and (not isinstance(label, int) or isinstance(label, bool)):
        raise InputError(f"dataset: {where}: field '{cfg.label_field}' (dataset.label_field) "
                         f"must be a class index (an integer), not {label!r}.")
    return Record(where, values["text_field"], values.get("pair_field"), label)


def tokenizer_folder(cfg: Any) -> Path:
    if not cfg.tokenizer:
        raise RecipeError("dataset.tokenizer: required for dataset.kind=text unless the model "
                          "is a Hugging Face folder (model.framework=huggingface), whose "
                          "tokenizer is the default.")
    folder = Path(cfg.tokenizer)
    if not folder.is_dir():
        raise RecipeError(f"dataset.tokenizer: '{folder}' is not a folder (paths are relative "
                          f"to {Path.cwd()}).")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"dataset.tokenizer: '{folder}' holds none of {list(TOKENIZER_FILES)}, "
                         "so it is not a tokenizer folder.")
    return folder


def check_names(names: list[str]) -> None:
    other = [name for name in names if name not in TOKEN_INPUTS]
    if other:
        raise RecipeError(f"dataset.kind=text gives token inputs {list(TOKEN_INPUTS)}; model "
                          f"inputs {other} are not among them.")


def peek_layout(cfg: Any, names: list[str]) -> Layout:
    """What every sample looks like to the plan: int64 (1, tokens) per input; max_length
    stands for the length that padding none/longest gives."""
    check_names(names)
    tokenizer_folder(cfg)
    return {name: ("int64", (1, cfg.max_length)) for name in names}


def text_pool(path: Path, cfg: Any, names: list[str]) -> Pool:
    """The records of ``path`` tokenized with ``dataset.tokenizer`` for inputs ``names``."""
    import numpy as np

    from stages.common.datasets.sources import Pool

    check_names(names)
    records = read_records(path, cfg)
    encoded = _encode(records, cfg, names) if records else {name: [] for name in names}
    feeds = [{name: np.asarray([encoded[name][i]], dtype=np.int64) for name in names}
             for i in range(len(records))]
    labels = [record.label for record in records]
    label_array = np.asarray(labels, np.int64) if records and cfg.label_field else None
    return Pool([record.where for record in records], label_array,
                lambda indices: [feeds[i] for i in indices], uniform=cfg.padding != "none")


def _encode(records: list[Record], cfg: Any, names: list[str]) -> dict[str, list[Any]]:
    tokenizer = load_tokenizer(tokenizer_folder(cfg))
    pairs = [record.pair for record in records] if cfg.pair_field else None
    padding = {"max_length": "max_length", "longest": "longest", "none": False}[cfg.padding]
    try:
        encoded = tokenizer([record.text for record in records], pairs, truncation=True,
                            max_length=cfg.max_length, padding=padding,
                            return_attention_mask="attention_mask" in names,
                            return_token_type_ids="token_type_ids" in names)
    except ValueError as exc:  # padding without a pad token, a pair the tokenizer cannot cut
        raise InputError(f"dataset.tokenizer '{cfg.tokenizer}': cannot tokenize with "
                         f"padding={cfg.padding}, max_length={cfg.max_length}: "
                         f"{str(exc).splitlines()[0]}") from exc
    missing = [name for name in names if name not in encoded]
    if missing:
        raise InputError(f"dataset.tokenizer '{cfg.tokenizer}' gives {sorted(encoded)}, not the "
                         f"model inputs {missing}.")
    return {name: encoded[name] for name in names}


def load_tokenizer(folder: Path) -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it; nothing is fetched
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        from pipeline.errors import EnvironmentProblem

        raise EnvironmentProblem("dataset.kind=text needs transformers: pip install -e "
                                 "'.[huggingface]'") from exc
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"dataset.tokenizer: transformers' AutoTokenizer cannot load "
                         f"'{folder}': {cause}") from exc
