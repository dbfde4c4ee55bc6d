"""Model files that would run code on the build host are refused before loading, with exit 3,
naming the file and what was refused; ordinary files of each kind still export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pipeline.errors import InputError
from stages.export.savedmodel_scan import check_saved_model
from stages.export.stage import export
from tests.fixtures.cli import run_cli
from tests.fixtures.hostile_models import (
    save_lambda_keras,
    save_py_function_saved_model,
    save_reducing_checkpoint,
    save_writing_saved_model,
)
from tests.stages.export.test_export import AFFINE, DIGITS_NCHW, config

if TYPE_CHECKING:
    from pathlib import Path

DIGITS_NHWC = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 8, 8, 1]}]


def test_a_saved_model_that_writes_a_file_is_refused_before_loading(
        context_factory: Any, tmp_path: Path) -> None:
    victim = tmp_path / "written.txt"
    save_writing_saved_model(tmp_path / "saved", victim)
    assert not victim.exists()
    ctx = context_factory(config("tensorflow", DIGITS_NHWC, path=str(tmp_path / "saved")))
    with pytest.raises(InputError, match=rf"model\.path: SavedModel {tmp_path}/saved/saved_model"
                       r"\.pb was refused before loading: .*WriteFile \(in __inference_serve_"):
        export(ctx)
    assert not victim.exists()


def test_python_callbacks_in_a_saved_model_are_refused(tmp_path: Path) -> None:
    save_py_function_saved_model(tmp_path / "saved")
    with pytest.raises(InputError, match=r"PyFunc(Stateless)? \(in __inference_serve_"):
        check_saved_model(tmp_path / "saved")


def test_saved_models_of_tf_module_and_keras_export_pass_the_scan(tmp_path: Path) -> None:
    import keras

    from tests.fixtures.export_models import save_tf_module

    save_tf_module(tmp_path / "module")
    check_saved_model(tmp_path / "module")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).export(str(tmp_path / "keras"))
    check_saved_model(tmp_path / "keras")


def test_the_saver_ops_are_allowed_only_in_the_saver(tmp_path: Path) -> None:
    import tensorflow as tf

    class Saver(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable([1.0, 2.0])

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="prefix")])
        def serve(self, prefix: tf.Tensor) -> dict[str, tf.Tensor]:
            tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["w"], shape_and_slices=[""],
                              tensors=[self.weight.read_value()])
            return {"y": self.weight * 1.0}

    module = Saver()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default":
                                                                      module.serve})
    with pytest.raises(InputError, match=r"SaveV2 \(in __inference_serve_"):
        check_saved_model(tmp_path / "saved")


def test_a_lambda_layer_keras_file_is_refused_naming_the_file(context_factory: Any,
                                                               tmp_path: Path) -> None:
    save_lambda_keras(tmp_path / "lambda.keras")
    ctx = context_factory(config("tensorflow", DIGITS_NHWC, path=str(tmp_path / "lambda.keras")))
    with pytest.raises(InputError, match=rf"model\.path: {tmp_path}/lambda\.keras was refused "
                       r"by Keras safe mode: Requested the deserialization of a `Lambda` layer"):
        export(ctx)


def test_a_checkpoint_pickling_os_system_is_refused_naming_the_global(
        context_factory: Any, tmp_path: Path) -> None:
    victim = tmp_path / "pwned"
    save_reducing_checkpoint(tmp_path / "evil.pt", victim)
    ctx = context_factory(config("torch", DIGITS_NCHW, factory="recipes.zoo.digits:digits_cnn",
                                 checkpoint=str(tmp_path / "evil.pt")))
    with pytest.raises(InputError, match=rf"model\.checkpoint: {tmp_path}/evil\.pt cannot be "
                       r"loaded: it pickles the Python global 'posix\.system', which "
                       r"torch\.load\(weights_only=True\) refuses"):
        export(ctx)
    assert not victim.exists()


def test_an_unreadable_keras_file_is_bad_input(context_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "junk.keras").write_bytes(b"not a zip file")
    ctx = context_factory(config("tensorflow", AFFINE, path=str(tmp_path / "junk.keras")))
    with pytest.raises(InputError, match=rf"{tmp_path}/junk\.keras cannot be loaded as a "
                       r"\.keras file"):
        export(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["saved_model", "keras"])
def test_the_cli_refuses_unsafe_tensorflow_files_with_exit_3(tmp_path: Path,
                                                             source: str) -> None:
    victim = tmp_path / "written.txt"
    if source == "saved_model":
        path = tmp_path / "saved"
        save_writing_saved_model(path, victim)
    else:
        path = tmp_path / "lambda.keras"
        save_lambda_keras(path)
    result = run_cli("recipe=digits_keras", f"model.path={path}", "run.progress=false",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", cwd=tmp_path)
    assert result.code == 3, result.stderr[-3000:]
    kind = "SavedModel " if source == "saved_model" else ""
    assert f"bad input: stage 'export': model.path: {kind}{path}" in result.stderr
    assert "WriteFile" in result.stderr if source == "saved_model" else "Lambda" in result.stderr
    assert "Traceback" not in result.stderr
    assert not victim.exists()
