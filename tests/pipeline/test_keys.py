"""The cache key recipe is pinned: a change to what enters a key must be deliberate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline import keys, plan
from pipeline.hashing import DigestState
from tests.fixtures.recipes import compose_recipe

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

# sha256 of the optimize node's payload below. If this test fails, a key changed: every cache
# entry of that kind is rebuilt after the change. Bump the kind's version (or KEY_SCHEMA) on
# purpose and update the literal, or find what leaked into the key.
GOLDEN = "afaae4fc24361bac393a2b137003f762c95fbf1e83e059ca5d62932e2576c1e4"


def test_the_key_of_a_fixed_node_is_pinned(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "tool_version", lambda dist: f"{dist}-pinned")
    node = plan.build(compose_recipe("digits_torch", "optimize.level=extended")).nodes["optimize"]
    payload = keys.key_payload(node, {"model": "0" * 64}, DigestState(tmp_path / "state.json"))
    assert payload == {
        "schema": keys.KEY_SCHEMA, "kind": "optimize", "version": 2,
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
