"""The torch half of ``quantize.mode=qat``: torchao's PT2E quantization-aware training.

The recipe's module is captured with ``torch.export``, annotated by torchao's
``X86InductorQuantizer`` with the recipe's quantize settings, fine-tuned with fake quantization,
converted (weights folded to int8) and exported by the dynamo ONNX exporter, which writes each
quantize/dequantize pair as ONNX QuantizeLinear/DequantizeLinear. docs/qat.md says why torchao.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from stages.common.sample_inputs import make_samples
from stages.common.torch_models import dynamic_shapes, flatten, load_checkpoint, model_factory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np
    import onnx

# smallest activation scale, as torchao's x86 defaults: keeps an all-zero tensor quantizable
EPS = 2**-12


@dataclass(frozen=True)
class Trained:
    model: onnx.ModelProto
    final_loss: float  # mean training loss over the last epoch
    seconds: float  # training only, without capture and export


def fine_tune(config: Any, arrays: dict[str, np.ndarray], labels: np.ndarray | None,
              report: Callable[[str], None], opset: int) -> Trained:
    """Fine-tune the recipe's module with fake quantization on ``arrays`` and export it.

    ``arrays`` holds the training split, one array per model input (axis 0 = sample).
    """
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    qat = config.quantize.qat
    inputs = [torch.from_numpy(arrays[spec.name]) for spec in config.model.inputs]
    with _deterministic(qat.seed):
        student = _prepared(config.model, config.quantize, inputs)
        targets = _targets(config.model, inputs, labels, qat.loss)
        started = time.perf_counter()
        loss = _train(student, inputs, targets, qat, report)
        seconds = time.perf_counter() - started
        report("QAT: exporting the QDQ model")
        converted = convert_pt2e(student)
        move_exported_model_to_eval(converted)  # rewrites dropout/batch norm in the graph
        converted.training = False  # and tells the exporter, which reads only this flag
        proto = _export(converted, config.model, opset)
    return Trained(proto, loss, seconds)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels, one thread; the caller's settings and RNG come back after.

    One thread keeps the float sums in one order whatever the machine's core count, so the
    same recipe trains to the same bytes on a CI runner and a laptop with the same CPU family.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def build_module(model: Any) -> Any:
    """The recipe's nn.Module from ``model.factory`` with ``model.checkpoint``, in eval mode."""
    import torch

    if not model.factory:
        raise RecipeError("quantize.mode=qat needs model.factory ('package.module:callable' "
                          "returning the nn.Module) to rebuild the torch model it fine-tunes.")
    module = model_factory(model)()
    if not isinstance(module, torch.nn.Module):
        raise RecipeError(f"model.factory '{model.factory}' returned {type(module).__name__}, "
                          "not a torch.nn.Module.")
    if model.checkpoint:
        load_checkpoint(module, Path(model.checkpoint))
    return module.eval()


def _prepared(model: Any, quant: Any, inputs: list[Any]) -> Any:
    """The module captured with a dynamic batch axis and fake quantizers inserted."""
    import torch
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    # two samples: torch.export treats a batch of one as a constant size
    example = tuple(tensor[:2] for tensor in inputs)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        graph = torch.export.export(build_module(model), example,
                                    dynamic_shapes=tuple({0: batch} for _ in inputs)).module()
    quantizer = X86InductorQuantizer().set_global(quantization_config(quant))
    prepared = prepare_qat_pt2e(graph, quantizer)
    # lets train()/eval() switch dropout and batch norm of the captured graph
    allow_exported_model_train_eval(prepared)
    return prepared


def quantization_config(quant: Any) -> Any:
    """torchao's QuantizationConfig for the recipe's quantize section (checked by the caller)."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig

    low, high = _range(quant.activation_type, quant.reduce_range, narrow=False)
    activation = QuantizationSpec(
        dtype=getattr(torch, quant.activation_type), quant_min=low, quant_max=high,
        qscheme=torch.per_tensor_symmetric if quant.activation_symmetric
        else torch.per_tensor_affine, is_dynamic=False,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=EPS))
    # symmetric int8 weights use [-127, 127], as onnxruntime's PTQ and TensorRT do
    low, high = _range("int8", quant.reduce_range, narrow=quant.weight_symmetric)
    per_channel, symmetric = bool(quant.per_channel), bool(quant.weight_symmetric)
    qscheme = {(True, True): torch.per_channel_symmetric, (True, False): torch.per_channel_affine,
               (False, True): torch.per_tensor_symmetric,
               (False, False): torch.per_tensor_affine}[per_channel, symmetric]
    observer = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=low, quant_max=high, qscheme=qscheme,
        ch_axis=0 if per_channel else None, is_dynamic=False,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(observer=observer))
    return QuantizationConfig(activation, activation, weight, None, is_qat=True)


def _range(kind: str, reduce_range: bool, narrow: bool) -> tuple[int, int]:
    """Integer range of ``kind``; reduce_range drops one bit (for CPUs without VNNI)."""
    bits = 7 if reduce_range else 8
    if kind == "uint8":
        return 0, 2**bits - 1
    high = 2 ** (bits - 1) - 1
    return (-high if narrow else -high - 1), high


def _targets(model: Any, inputs: list[Any], labels: np.ndarray | None, loss: str) -> Any:
    """Class indices for cross_entropy, or the FP32 module's outputs to distil from."""
    import torch

    if loss == "cross_entropy":
        return torch.from_numpy(labels)
    teacher = build_module(model)
    with torch.no_grad():
        outputs = teacher(*inputs)
    return flatten(outputs)[0].detach()


def _criterion(loss: str, targets: Any) -> Callable[[Any, Any], Any]:
    """cross_entropy, or the squared error relative to the FP32 outputs' variance.

    Relative, so a learning rate means the same for both losses: raw logits' squared errors
    run to tens, and SGD at a cross-entropy learning rate diverged on them (10% accuracy).
    """
    import torch

    if loss == "cross_entropy":
        return torch.nn.functional.cross_entropy
    spread = targets.var().clamp_min(1e-12)

    def relative_mse(outputs: Any, reference: Any) -> Any:
        return torch.nn.functional.mse_loss(outputs, reference) / spread

    return relative_mse


def _train(student: Any, inputs: list[Any], targets: Any, qat: Any,
           report: Callable[[str], None]) -> float:
    """Mini-batch fine-tuning; returns the mean loss of the last epoch."""
    import torch

    criterion = _criterion(qat.loss, targets)
    optimizer = (torch.optim.Adam(student.parameters(), lr=qat.learning_rate)
                 if qat.optimizer == "adam" else
                 torch.optim.SGD(student.parameters(), lr=qat.learning_rate, momentum=0.9))
    order = torch.Generator().manual_seed(qat.seed)
    student.train()
    mean = float("nan")
    for epoch in range(qat.epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(len(targets), generator=order).split(qat.batch_size):
            optimizer.zero_grad()
            outputs = flatten(student(*(tensor[batch] for tensor in inputs)))[0]
            loss = criterion(outputs, targets[batch])
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        mean = total / count
        report(f"QAT epoch {epoch + 1}/{qat.epochs}: loss {mean:.4f}")
    student.eval()
    return mean


def _export(converted: Any, model: Any, opset: int) -> onnx.ModelProto:
    """The converted module as ONNX, with the recipe's input names, outputs, opset and axes."""
    import torch

    names = [spec.name for spec in model.inputs]
    sample = make_samples(model.inputs, model.dynamic_size, 1)[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            converted, tuple(torch.from_numpy(sample[name]) for name in names), dynamo=True,
            verbose=False, input_names=names, output_names=list(model.outputs) or None,
            opset_version=opset, dynamic_shapes=dynamic_shapes(model.inputs))
    proto = program.model_proto
    for node in proto.graph.node:
        # the exporter's per-node notes hold stack traces with this machine's file paths: a
        # third of a small model's bytes, and different bytes on every machine
        del node.metadata_props[:]
    return proto
