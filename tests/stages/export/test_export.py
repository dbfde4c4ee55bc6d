"""The export stage on real torch, Keras, SavedModel and ONNX models (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.errors import InputError, RecipeError, StageError
from stages.common.onnx_files import WEIGHTS_FILE, load_model, model_file
from stages.export.from_torch import load_checkpoint
from stages.export.stage import export
from tests.fixtures.export_models import save_onnx_affine, save_tf_module

ZOO = Path(__file__).resolve().parents[3] / "recipes" / "zoo"
EXPORT = {"opset": 18, "exporter": "dynamo", "parity_samples": 2, "parity_atol": 1e-4,
          "parity_rtol": 1e-3}
DIGITS_NCHW = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
AFFINE = [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]


def config(framework: str, inputs: list[dict[str, Any]], **model: Any) -> dict[str, Any]:
    """A resolved recipe with the keys export reads; enums as strings, as the executor passes."""
    defaults = {"name": "m", "factory": None, "factory_kwargs": {}, "checkpoint": None,
                "path": None, "outputs": [], "dynamic_size": 2}
    specs = [{"low": 0.0, "high": 1.0} | spec for spec in inputs]
    return {"model": defaults | model | {"framework": framework, "inputs": specs},
            "export": EXPORT}


def run_onnx(out: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_file(out)), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_torch_digits_with_checkpoint(context_factory: Any) -> None:
    ctx = context_factory(config("torch", DIGITS_NCHW, factory="recipes.zoo.digits:digits_cnn",
                                 checkpoint=str(ZOO / "digits_cnn.pt"), outputs=["logits"]))
    summary = export(ctx)
    assert summary["inputs"] == [{"name": "pixels", "dtype": "float32",
                                  "shape": ["batch", 1, 8, 8]}]
    assert summary["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert summary["opset"] == 18
    assert summary["parity"]["samples"] == 2
    assert 0 <= summary["parity"]["max_abs_diff"] <= 1e-4
    assert json.loads((ctx.out / "export.json").read_text()) == summary
    # batch 3 was never seen during export: the batch dimension is really dynamic
    (logits,) = run_onnx(ctx.out, {"pixels": np.zeros((3, 1, 8, 8), np.float32)})
    assert logits.shape == (3, 10)


def test_torch_two_inputs_with_int64(context_factory: Any) -> None:
    inputs = [{"name": "features", "dtype": "float32", "shape": ["batch", 4]},
              {"name": "tokens", "dtype": "int64", "shape": ["batch", 6], "low": 0, "high": 10}]
    ctx = context_factory(config("torch", inputs, factory="tests.fixtures.export_models:two_inputs",
                                 outputs=["score", "pooled"]))
    summary = export(ctx)
    assert [(i["name"], i["dtype"]) for i in summary["inputs"]] == [("features", "float32"),
                                                                     ("tokens", "int64")]
    assert [o["name"] for o in summary["outputs"]] == ["score", "pooled"]
    assert set(summary["parity"]["outputs"]) == {"score", "pooled"}
    feed = {"features": np.ones((5, 4), np.float32), "tokens": np.full((5, 6), 9, np.int64)}
    score, pooled = run_onnx(ctx.out, feed)
    assert score.shape == (5, 1)
    assert pooled.shape == (5, 4)


def test_large_torch_model_keeps_weights_beside_the_graph(context_factory: Any) -> None:
    inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", 768]}]
    ctx = context_factory(config("torch", inputs, factory="tests.fixtures.export_models:wide_mlp"))
    summary = export(ctx)
    assert (ctx.out / WEIGHTS_FILE).stat().st_size > 1 << 20
    assert len(load_model(model_file(ctx.out)).graph.initializer) == 4
    (y,) = run_onnx(ctx.out, {"x": np.ones((1, 768), np.float32)})
    assert y.shape == (1, 768)
    assert summary["parity"]["max_abs_diff"] <= 1e-4


def test_keras_file(context_factory: Any) -> None:
    inputs = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 8, 8, 1]}]
    ctx = context_factory(config("tensorflow", inputs, path=str(ZOO / "digits_cnn.keras"),
                                 outputs=["logits"]))
    summary = export(ctx)
    assert summary["inputs"][0]["shape"] == ["batch", 8, 8, 1]
    assert [o["name"] for o in summary["outputs"]] == ["logits"]
    assert summary["parity"]["max_abs_diff"] <= 1e-4
    (logits,) = run_onnx(ctx.out, {"pixels": np.zeros((3, 8, 8, 1), np.float32)})
    assert logits.shape == (3, 10)


def test_keras_factory_with_two_inputs(context_factory: Any) -> None:
    inputs = [{"name": "features", "dtype": "float32", "shape": ["batch", 3]},
              {"name": "tokens", "dtype": "int32", "shape": ["batch", 5], "low": 0, "high": 10}]
    factory = "tests.fixtures.export_models:keras_two_inputs"
    ctx = context_factory(config("tensorflow", inputs, factory=factory))
    summary = export(ctx)
    assert [i["dtype"] for i in summary["inputs"]] == ["float32", "int32"]
    assert [o["name"] for o in summary["outputs"]] == ["output_0"]
    assert summary["parity"]["max_abs_diff"] <= 1e-4


def test_keras_input_shapes_are_checked_against_the_declared_ones(context_factory: Any) -> None:
    inputs = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]  # NCHW
    ctx = context_factory(config("tensorflow", inputs, path=str(ZOO / "digits_cnn.keras")))
    with pytest.raises(RecipeError, match=r"model.inputs.0.shape: 'pixels' is declared "
                       r"\['batch', 1, 8, 8\], the Keras model expects \['\?', 8, 8, 1\]"):
        export(ctx)


def test_saved_model_keeps_signature_output_names(context_factory: Any, tmp_path: Path) -> None:
    save_tf_module(tmp_path / "saved")
    ctx = context_factory(config("tensorflow", AFFINE, path=str(tmp_path / "saved")))
    summary = export(ctx)
    (output,) = summary["outputs"]
    assert (output["name"], output["shape"][1]) == ("y", 2)  # named by the signature's dict key
    assert summary["parity"]["max_abs_diff"] <= 1e-4


def test_existing_onnx_is_copied_and_run(context_factory: Any, tmp_path: Path) -> None:
    save_onnx_affine(tmp_path / "src" / "affine.onnx")
    ctx = context_factory(config("onnx", AFFINE, path=str(tmp_path / "src" / "affine.onnx")))
    summary = export(ctx)
    assert summary["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["N", 2]}]
    assert summary["parity"]["max_abs_diff"] is None  # an ONNX source is its own reference
    (y,) = run_onnx(ctx.out, {"x": np.ones((4, 3), np.float32)})
    assert y.shape == (4, 2)


@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    pytest.param([{"name": "image", "dtype": "float32", "shape": ["batch", 3]}], [],
                 r"model.inputs.0.name: 'image' is not an input of the ONNX model; .*\['x'\]",
                 id="input-name"),
    pytest.param([{"name": "x", "dtype": "int64", "shape": ["batch", 3]}], [],
                 r"model.inputs.0.dtype: 'x' is int64 in the recipe, float32", id="input-dtype"),
    pytest.param([{"name": "x", "dtype": "float32", "shape": ["batch", 4]}], [],
                 r"model.inputs.0.shape: 'x' is declared \['batch', 4\], the ONNX model "
                 r"expects \['N', 3\]\.", id="input-shape"),
    pytest.param(AFFINE, ["z"], r"model.outputs are \['z'\].*\['y'\]", id="output-name"),
])
def test_onnx_signature_must_match_the_recipe(context_factory: Any, tmp_path: Path,
                                              inputs: list[dict[str, Any]], outputs: list[str],
                                              message: str) -> None:
    save_onnx_affine(tmp_path / "affine.onnx")
    ctx = context_factory(config("onnx", inputs, path=str(tmp_path / "affine.onnx"),
                                 outputs=outputs))
    with pytest.raises(RecipeError, match=message):
        export(ctx)


def test_onnx_external_data_outside_its_folder_is_refused(context_factory: Any,
                                                           tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(np.eye(3, 2, dtype=np.float32).tobytes())
    save_onnx_affine(tmp_path / "model" / "affine.onnx", location="../secret.bin")
    ctx = context_factory(config("onnx", AFFINE, path=str(tmp_path / "model" / "affine.onnx")))
    with pytest.raises(InputError, match=r"\.\./secret\.bin.*outside the model's folder"):
        export(ctx)


def test_pickled_checkpoint_is_refused(context_factory: Any, tmp_path: Path) -> None:
    import torch

    from recipes.zoo.digits import digits_cnn

    torch.save(digits_cnn(), tmp_path / "whole_module.pt")  # pickles the class: unsafe to load
    ctx = context_factory(config("torch", DIGITS_NCHW, factory="recipes.zoo.digits:digits_cnn",
                                 checkpoint=str(tmp_path / "whole_module.pt")))
    with pytest.raises(InputError, match=r"pickles the Python global 'torch\.nn\.modules\."
                       r"container\.Sequential', which torch\.load\(weights_only=True\)"):
        export(ctx)


def test_inputs_must_fit_forward(context_factory: Any) -> None:
    inputs = [*DIGITS_NCHW, {"name": "extra", "dtype": "float32", "shape": [1]}]
    ctx = context_factory(config("torch", inputs, factory="recipes.zoo.digits:digits_cnn"))
    with pytest.raises(RecipeError, match=r"model.inputs \['pixels', 'extra'\] do not fit"):
        export(ctx)


def test_a_wrong_declared_shape_is_named_before_torch_export_runs(context_factory: Any) -> None:
    inputs = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 10, 10]}]
    ctx = context_factory(config("torch", inputs, factory="recipes.zoo.digits:digits_cnn"))
    with pytest.raises(RecipeError, match=r"fails on inputs shaped as declared \(model.inputs.0 "
                       r"'pixels' \['batch', 1, 10, 10\] float32 \(sampled as \[2, 1, 10, 10\]\)"
                       r"\): RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        export(ctx)


def test_a_dynamic_dim_the_model_pins_is_named_with_the_exported_shape(
        context_factory: Any) -> None:
    inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}]
    ctx = context_factory(config("torch", inputs,
                                 factory="tests.fixtures.export_models:pinned_batch"))
    with pytest.raises(RecipeError, match=r"model.inputs.0.shape: 'x' is declared \['batch', "
                       r"16\], the ONNX model expects \[2, 16\]; the model fixes the dynamic "
                       r"dim\(s\) \['batch'\]"):
        export(ctx)


def test_safetensors_checkpoint_loads_strictly(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from recipes.zoo.digits import digits_cnn

    trained = digits_cnn()
    trained.load_state_dict(torch.load(ZOO / "digits_cnn.pt", weights_only=True))
    save_file(trained.state_dict(), tmp_path / "digits.safetensors")
    fresh = digits_cnn()
    load_checkpoint(fresh, tmp_path / "digits.safetensors")
    assert torch.equal(fresh[0].weight, trained[0].weight)
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match=r"(?s)does not fit the module.*Missing key"):
        load_checkpoint(digits_cnn(), tmp_path / "other.safetensors")


def test_unknown_factory_names_the_key(context_factory: Any) -> None:
    ctx = context_factory(config("torch", DIGITS_NCHW, factory="recipes.zoo.digits:no_such"))
    with pytest.raises(RecipeError, match=r"model.factory 'recipes.zoo.digits:no_such'"):
        export(ctx)


def test_parity_failure_says_by_how_much(context_factory: Any) -> None:
    inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
    ctx = context_factory(config("torch", inputs, factory="tests.fixtures.export_models:drifting"))
    with pytest.raises(StageError, match=r"output '.+' .* differs .* by up to [1-9]"):
        export(ctx)


@pytest.mark.parametrize(("shape", "calls", "runs"), [
    pytest.param(["batch", 3], [(2, 3), (6, 3)], 2, id="batched"),
    pytest.param([2, 3], [(2, 3)] * 4, 4, id="fixed-batch-one-a-sample"),
])
def test_parity_runs_the_traced_sample_then_the_rest_as_one_batch(
        context_factory: Any, shape: list[Any], calls: list[tuple[int, ...]], runs: int) -> None:
    from tests.fixtures import export_models

    inputs = [{"name": "x", "dtype": "float32", "shape": shape}]
    cfg = config("torch", inputs, factory="tests.fixtures.export_models:counting")
    cfg["export"] = EXPORT | {"parity_samples": 4}
    export_models.EAGER_CALLS.clear()
    summary = export(context_factory(cfg))
    # the probe's run on the traced sample is also its reference: 4 samples, no 5th run
    assert export_models.EAGER_CALLS == calls
    assert summary["parity"]["samples"] == 4
    assert summary["parity"]["runs"] == runs
    assert summary["parity"]["max_abs_diff"] <= 1e-4


def test_torchscript_traces_at_one_size_and_checks_parity_at_another(
        context_factory: Any) -> None:
    from tests.fixtures import export_models

    cfg = config("torch", [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
                 factory="tests.fixtures.export_models:counting", outputs=["y"])
    cfg["export"] = EXPORT | {"parity_samples": 4, "exporter": "torchscript"}
    export_models.EAGER_CALLS.clear()
    summary = export(context_factory(cfg))
    # the probe and TorchScript's own trace at batch 2, then one reference run at batch 6
    assert export_models.EAGER_CALLS[-1] == (6, 3)
    assert set(export_models.EAGER_CALLS[:-1]) == {(2, 3)}
    assert summary["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]
    assert summary["parity"]["runs"] == 2


@pytest.mark.parametrize(("inputs", "batched"), [
    pytest.param([["batch", 3], ["batch", 5, "sequence"]], True, id="one-leading-dim"),
    pytest.param([["batch", 3], [4, 5]], False, id="a-fixed-input"),
    pytest.param([["batch", 3], ["sequence", 3]], False, id="different-leading-dims"),
])
def test_export_feeds_batch_only_inputs_that_share_a_leading_dynamic_dim(
        inputs: list[list[Any]], batched: bool) -> None:
    from omegaconf import OmegaConf

    from stages.common.sample_inputs import make_samples
    from stages.export.checks import export_feeds

    specs = OmegaConf.create([{"name": f"i{n}", "dtype": "float32", "shape": shape,
                               "low": 0.0, "high": 1.0} for n, shape in enumerate(inputs)])
    samples = make_samples(specs, 2, 4)
    feeds = export_feeds(specs, samples, 4)
    assert feeds.trace is samples[0]
    assert feeds.parity[0] is samples[0]
    assert len(feeds.parity) == (2 if batched else 4)
    if batched:  # the same numbers, stacked: nothing drawn anew
        assert np.array_equal(feeds.parity[1]["i1"],
                              np.concatenate([s["i1"] for s in samples[1:]]))


def test_torchscript_is_refused_for_a_framework_it_does_not_convert() -> None:
    from stages.export.stage import check_exporter

    check_exporter("huggingface", {"exporter": "torchscript", "opset": 17})
    with pytest.raises(RecipeError, match=r"export.exporter=torchscript: .* "
                                          r"model.framework=tensorflow has its own converter"):
        check_exporter("tensorflow", {"exporter": "torchscript", "opset": 17})
