"""The cache key recipe is pinned: a change to what enters a key must be deliberate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import keys, plan
from pipeline.hashing import DigestState
from tests.fixtures.recipes import compose_recipe

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[2]
# sha256 of the optimize node's payload below. If this test fails, a key changed: every cache
# entry of that kind is rebuilt after the change. Bump the kind's version (or KEY_SCHEMA) on
# purpose and update the literal, or find what leaked into the key.
GOLDEN = "61c8adf0936156a50203db68844ba31c812226f9271a0b6df1409c33f1d2c551"


def test_the_key_of_a_fixed_node_is_pinned(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "tool_version", lambda dist: f"{dist}-pinned")
    node = plan.build(compose_recipe("digits_torch", "optimize.level=extended")).nodes["optimize"]
    payload = keys.key_payload(node, {"model": "0" * 64}, DigestState(tmp_path / "state.json"))
    assert payload == {
        "schema": keys.KEY_SCHEMA, "kind": "optimize", "version": 3,
        "config": {"optimize": {
            "level": "extended", "shape_inference": True, "portable": True,
            "fusions": {"attention": True, "skip_layer_norm": True, "gelu": True,
                        "rms_norm": True, "rotary_embedding": True}}},
        "inputs": {"model": "0" * 64}, "sources": {},
        # onnxscript and onnx-ir since optimize.level=transformer fuses with them
        "tools": {"onnx": "onnx-pinned", "onnx-ir": "onnx-ir-pinned",
                  "onnxruntime": "onnxruntime-pinned", "onnxscript": "onnxscript-pinned"},
    }
    assert keys.cache_key(payload) == GOLDEN


def test_the_stage_name_stays_out_of_the_key(tmp_path: Path) -> None:
    """Two stages of one kind with equal params and inputs share their output."""
    nodes = plan.build(compose_recipe("digits_torch")).nodes
    state = DigestState(tmp_path / "state.json")
    validate = nodes["validate@cpu"]
    renamed = type(validate)(**{**validate.__dict__, "name": "check@cpu", "stage": "check"})
    digests = {"candidate": "1" * 64, "reference": "2" * 64}
    assert (keys.cache_key(keys.key_payload(validate, digests, state))
            == keys.cache_key(keys.key_payload(renamed, digests, state)))


def test_a_hugging_face_folders_files_enter_the_export_key(tmp_path: Path) -> None:
    """A folder's every file (a weight or tokenizer file changed in place) changes export's
    key, and a package's folder is hashed where the package is installed."""
    import shutil

    folder = tmp_path / "lm"
    shutil.copytree(ROOT / "recipes" / "zoo" / "tiny_lm", folder)

    def export_payload(*overrides: str) -> dict[str, Any]:
        node = plan.build(compose_recipe("digits_torch", "model=tiny_lm", "dataset=tiny_lm_text",
                                         *overrides)).nodes["export"]
        return keys.key_payload(node, {}, DigestState(tmp_path / "state.json"))

    first = export_payload(f"model.path={folder}")
    assert "transformers" in first["tools"]
    assert export_payload(f"model.path={folder}")["sources"] == first["sources"]
    (folder / "tokenizer.json").write_text((folder / "tokenizer.json").read_text() + " ")
    assert export_payload(f"model.path={folder}")["sources"] != first["sources"]
    packaged = export_payload("model=minilm", "dataset=sentences")
    assert not packaged["sources"]["model.package"].startswith("unlocated")
