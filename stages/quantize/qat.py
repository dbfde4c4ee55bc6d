"""Quantization-aware training, ``quantize.mode=qat``, for torch models.

The recipe's module (``model.factory`` + ``model.checkpoint``) is fine-tuned with fake
quantization on the dataset's training split (the samples outside the calibration and
evaluation splits), with the recipe's quantize settings (per-channel, activation type,
symmetry, reduce_range), and exported as a QDQ ONNX model. The result is scored in onnxruntime
on the evaluation split next to the optimized FP32 model. Every setting is checked before
torch is imported, so a recipe mistake fails in well under a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem, RecipeError
from stages.common import onnx_files

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import numpy as np

    from stages.common.datasets.splits import Feed, Split

LIBRARY = "torchao"
ACTIVATION_TYPES = ("uint8", "int8")
LOSSES = ("cross_entropy", "mse_to_fp32")
OPTIMIZERS = ("adam", "sgd")


def quantize_aware(config: Any, model_dir: Path, out: Path,
                   report: Callable[[str], None]) -> dict[str, Any]:
    """Fine-tune the recipe's torch model with fake quantization; write the QDQ model to ``out``.

    Args:
        config: the quantize stage's read-only slice: ``quantize`` (with ``quantize.qat``),
            ``dataset``, ``model`` (the whole section) and ``export``.
        model_dir: the optimized FP32 model, the reference the QAT model is scored against.
        out: directory that receives ``model.onnx`` (onnx_files layout).
        report: live status line.

    Returns:
        The settings, library and version, epochs, training samples, last epoch's mean loss,
        training seconds, accuracy and top-1 agreement of the QAT model (onnxruntime, evaluation
        split) next to the FP32 accuracy, quantization op counts and sizes.
    """
    settings = check(config)
    from stages.common.datasets.splits import load_dataset

    data = load_dataset(config.dataset, config.model.inputs)
    training = data.training
    _check_training(training, config.quantize.qat)
    names = [spec.name for spec in config.model.inputs]
    arrays = _stack(training.feeds, names)
    report(f"QAT: fine-tuning on {len(training.feeds)} samples for "
           f"{config.quantize.qat.epochs} epochs ({LIBRARY})")
    from stages.quantize import qat_torch

    # the opset of the model it replaces, which export chose
    opset = onnx_files.default_opset(model_dir)
    trained = qat_torch.fine_tune(config, arrays, training.labels, report, opset)
    onnx_files.save_model(trained.model, out)
    report("QAT: scoring the QDQ model in onnxruntime")
    scores = _scores(model_dir, out, data.evaluation)
    return {"mode": "qat", **settings,
            "library": f"{LIBRARY} {importlib.metadata.version(LIBRARY)}",
            "train_samples": len(training.feeds),
            "final_train_loss": round(trained.final_loss, 6),
            "train_seconds": round(trained.seconds, 3),
            **scores, **_sizes(model_dir, out)}


def check(config: Any) -> dict[str, Any]:
    """The settings QAT honours, or a RecipeError naming the key that cannot be met."""
    framework = config.model.framework
    if framework != "torch":
        raise RecipeError(
            f"quantize.mode=qat fine-tunes a torch model, but model.framework is {framework}. "
            "Use quantize.mode=static (post-training quantization) for this model, or build "
            "the recipe from the torch model (model.framework=torch with model.factory).")
    quant, qat = config.quantize, config.quantize.qat
    if quant.format != "qdq":
        raise RecipeError(f"quantize.format={quant.format}: quantize.mode=qat exports QDQ "
                          "(onnxruntime fuses QDQ pairs into its integer kernels itself); "
                          "set quantize.format=qdq.")
    if quant.activation_type not in ACTIVATION_TYPES or quant.weight_type != "int8":
        raise RecipeError(
            f"quantize.activation_type={quant.activation_type}, weight_type="
            f"{quant.weight_type}: quantize.mode=qat trains {' or '.join(ACTIVATION_TYPES)} "
            "activations with int8 weights.")
    if qat.loss not in LOSSES or qat.optimizer not in OPTIMIZERS:
        raise RecipeError(f"quantize.qat.loss={qat.loss}, optimizer={qat.optimizer}: expected "
                          f"loss in {LOSSES} and optimizer in {OPTIMIZERS}.")
    for key in ("epochs", "batch_size", "learning_rate"):
        if not qat[key] > 0:
            raise RecipeError(f"quantize.qat.{key} must be above 0, not {qat[key]}.")
    if importlib.util.find_spec(LIBRARY) is None or importlib.util.find_spec("torch") is None:
        raise EnvironmentProblem(f"quantize.mode=qat needs torch and {LIBRARY}: "
                                 "pip install '.[torch]'")
    return {"format": "qdq", "activation_type": quant.activation_type, "weight_type": "int8",
            "per_channel": bool(quant.per_channel), "reduce_range": bool(quant.reduce_range),
            "activation_symmetric": bool(quant.activation_symmetric),
            "weight_symmetric": bool(quant.weight_symmetric),
            "qat": {"epochs": qat.epochs, "learning_rate": qat.learning_rate,
                    "batch_size": qat.batch_size, "loss": qat.loss,
                    "optimizer": qat.optimizer, "seed": qat.seed}}


def _check_training(training: Split, qat: Any) -> None:
    if len(training.feeds) < 2:
        raise RecipeError(
            f"quantize.mode=qat: the dataset's training split holds {len(training.feeds)} "
            "sample(s), at least 2 are needed; lower dataset.calibration_size/evaluation_size "
            "or give dataset.training_path.")
    if qat.loss == "cross_entropy" and training.labels is None:
        raise RecipeError(
            "quantize.qat.loss=cross_entropy needs class labels, and the dataset has none (or "
            "dataset.use_labels is false); use quantize.qat.loss=mse_to_fp32, which distils "
            "from the FP32 model's outputs.")


def _stack(feeds: Sequence[Feed], names: list[str]) -> dict[str, np.ndarray]:
    """One array per model input with every sample along axis 0."""
    import numpy as np

    samples = list(feeds)
    return {name: np.ascontiguousarray(np.concatenate([feed[name] for feed in samples]))
            for name in names}


def _scores(fp32: Path, qat: Path, evaluation: Split) -> dict[str, Any]:
    """Accuracy (with labels) and top-1 agreement of both models on the evaluation split."""
    from stages.common import metrics

    reference, candidate = _outputs(fp32, evaluation.feeds), _outputs(qat, evaluation.feeds)
    scores = metrics.accuracy(candidate, reference, evaluation.labels)
    return {"evaluation_samples": len(evaluation.feeds),
            "accuracy": scores["accuracy_candidate"], "accuracy_fp32": scores["accuracy_fp32"],
            "top1_agreement": metrics.agreement(candidate, reference)["top1_agreement"]}


def _outputs(directory: Path, feeds: Sequence[Feed]) -> np.ndarray:
    """The first output for every feed, one run per sample (the model may have fixed axes)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_files.model_file(directory)),
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, dict(feed))[0] for feed in feeds])


def _sizes(fp32: Path, qat: Path) -> dict[str, Any]:
    from stages.common.onnx_files import model_stats

    before, after = model_stats(fp32), model_stats(qat)
    ops = {name: count for op, count in after["ops"].items()
           if (name := op.rsplit(":", 1)[-1]) in ("QuantizeLinear", "DequantizeLinear")}
    return {"quant_ops": ops, "size_before": before["size"], "size_after": after["size"],
            "size_ratio": round(after["size"] / before["size"], 4)}
