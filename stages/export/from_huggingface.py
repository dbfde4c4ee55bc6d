"""Hugging Face model folders -> ONNX: transformers' Auto classes, then torch's exporter
(dynamo, or TorchScript with ``export.exporter=torchscript``).

``model.task`` picks the Auto class; the exported module returns one tensor: the pooled
sentence embedding (feature_extraction), the class logits (sequence_classification) or the
next-token logits of every position without a KV cache (causal_lm). Every token input gets
the dims batch and sequence. transformers and torch are imported inside the functions; the
hub is switched off (HF_HUB_OFFLINE) before they are.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.errors import InputError, RecipeError
from stages.common.hf_folders import TOKEN_INPUTS, derived_inputs, model_folder
from stages.common.torch_models import dynamic_shapes
from stages.export.from_torch import probe, reference, torchscript

if TYPE_CHECKING:
    from pathlib import Path

    import onnx
    from omegaconf import DictConfig

    from stages.common.datasets.splits import Feed
    from stages.export.from_torch import Reference

AUTO_CLASSES = {"feature_extraction": "AutoModel",
                "sequence_classification": "AutoModelForSequenceClassification",
                "causal_lm": "AutoModelForCausalLM"}


def output_name(task: str, pooling: str) -> str:
    """The ONNX output's name when ``model.outputs`` does not give one."""
    if task == "feature_extraction":
        return "last_hidden_state" if pooling == "none" else "sentence_embedding"
    return "logits"


def output_axes(model: Any) -> dict[int, str]:
    """The dynamic dims of the task's one output, named as the dynamo exporter names them;
    TorchScript, told nothing, leaves a dim it cannot follow through a reshape unnamed."""
    per_token = model.task == "causal_lm" or (model.task == "feature_extraction"
                                              and model.pooling == "none")
    return {0: "batch", 1: "sequence"} if per_token else {0: "batch"}


def derive_keys(cfg: DictConfig) -> dict[str, Any]:
    """At plan time, for a Hugging Face folder: ``model.inputs`` when the recipe leaves them
    out, and ``dataset.tokenizer`` (the folder) for a text dataset that names none."""
    framework = OmegaConf.select(cfg, "model.framework", throw_on_missing=False)
    if getattr(framework, "value", framework) != "huggingface":
        return {}
    model = cfg.model
    folder = model_folder({key: model.get(key) for key in ("path", "package",
                                                            "package_folder")})
    derived: dict[str, Any] = {}
    if OmegaConf.is_missing(model, "inputs"):
        derived["model.inputs"] = derived_inputs(folder)
    kind = OmegaConf.select(cfg, "dataset.kind", throw_on_missing=False)
    if getattr(kind, "value", kind) == "text" and not OmegaConf.select(cfg, "dataset.tokenizer"):
        derived["dataset.tokenizer"] = str(folder)
    return derived


def check_huggingface(model: dict[str, Any]) -> None:
    """Plan-time: the folder exists with a config.json and the task is one edgekiln exports."""
    model_folder(model)
    if not model.get("task"):
        raise RecipeError(f"model.task: required when model.framework=huggingface: one of "
                          f"{', '.join(AUTO_CLASSES)}.")
    if model.get("package") and model.get("path"):
        raise RecipeError("model.path and model.package both name a folder; give one.")


def export_huggingface(model: Any, export: Any,
                       sample: Feed) -> tuple[onnx.ModelProto, Reference]:
    """Load the folder for ``model.task``, export it; return (ONNX model, eager reference)."""
    import torch

    names = [spec.name for spec in model.inputs]
    module = task_module(model_folder(model), model.task, model.pooling, names)
    inputs = {name: torch.from_numpy(sample[name]) for name in names}
    probed = probe(lambda: module(**inputs), "Hugging Face model", model.inputs, sample,
                   "Check model.inputs (or leave them out to derive them from the folder).")
    outputs = list(model.outputs) or [output_name(model.task, model.pooling)]
    if export.exporter == "torchscript":  # a trailing dict of args passes them by name
        proto = torchscript(module, (inputs,), model, export,
                            dict.fromkeys(outputs, output_axes(model)))
    else:
        proto = _dynamo(module, inputs, model, export, outputs)
    return proto, reference(module, names, by_name=True, seen=(sample, probed))


def _dynamo(module: Any, inputs: dict[str, Any], model: Any, export: Any,
            outputs: list[str]) -> onnx.ModelProto:
    import torch

    names = list(inputs)
    shapes = dynamic_shapes(model.inputs) or (None,) * len(names)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(
            module, (), kwargs=inputs, dynamo=True, verbose=False, input_names=names,
            output_names=outputs, opset_version=export.opset,
            dynamic_shapes=dict(zip(names, shapes, strict=True)))
    return program.model_proto


def load_auto(folder: Path, task: str) -> Any:
    """The folder's model through the task's Auto class, offline, in eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it; nothing is fetched
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    try:
        return auto.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"model: transformers' {AUTO_CLASSES[task]} cannot load '{folder}' "
                         f"for model.task={task}: {cause}") from exc


def task_module(folder: Path, task: str, pooling: str, names: list[str]) -> Any:
    """The ``nn.Module`` that export traces: the Auto model called by keyword with the token
    inputs, its output reduced to the task's one tensor."""
    import torch

    loaded = load_auto(folder, task)
    accepted = inspect.signature(loaded.forward).parameters
    refused = [name for name in names if name not in accepted or name not in TOKEN_INPUTS]
    if refused:
        raise RecipeError(
            f"model.inputs: {refused} are not token inputs that {type(loaded).__name__}."
            f"forward takes (it takes {[n for n in TOKEN_INPUTS if n in accepted]}); "
            f"declare model.inputs without them. Derived from '{folder}' they would be "
            f"{[spec['name'] for spec in derived_inputs(folder)]}.")
    extra = {"use_cache": False} if "use_cache" in accepted else {}

    class Task(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = loaded

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            given = {"input_ids": input_ids, "attention_mask": attention_mask,
                     "token_type_ids": token_type_ids}
            out = self.model(**{k: v for k, v in given.items() if v is not None}, **extra)
            if task != "feature_extraction":
                return out.logits
            return pool(out.last_hidden_state, attention_mask, pooling)

    return Task().eval()


def pool(states: Any, attention_mask: Any, pooling: str) -> Any:
    """Token states (batch, sequence, hidden) pooled as sentence-transformers pools them."""
    if pooling == "none":
        return states
    if pooling == "cls":
        return states[:, 0]
    if attention_mask is None:
        return states.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
