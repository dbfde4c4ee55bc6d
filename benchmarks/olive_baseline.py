"""handwritten.py's work for one recipe, built as a Microsoft Olive workflow (the Olive baseline).

Run with the Python of a venv that has olive-ai (docs/benchmarks.md sets one up):
``/work/olive-venv/bin/python benchmarks/olive_baseline.py --recipe resnet_cpu --out DIR``.
Passes: OnnxConversion (dynamo exporter, opset 18, dynamic batch) -> OrtTransformersOptimization
reduced to ORT's basic offline graph optimization (only_onnxruntime, opt_level 1; its transformer
fusions do not apply to these CNNs) -> OnnxStaticQuantization (quant_preprocess, QDQ, per-channel,
uint8 activations, int8 symmetric weights, MinMax, handwritten's calibration samples). Olive's
evaluator then scores the output model (not the input model: Olive feeds a PyTorch model the
samples as keyword arguments, and these modules' forward takes ``x``): accuracy on handwritten's
evaluation samples (for resnet_cpu, whose dataset has no labels, the labels are the eager
model's top-1, so accuracy reads as top-1 agreement) and latency (3 warm-up, 30 timed runs).
Cache, outputs and temp files all go under DIR: a fresh DIR is a cold build, the same DIR again
is Olive's cached rerun. Writes ``DIR/timings.json`` with the total seconds and the model path.

This file is also the workflow's user_script: Olive imports it again to find the model loader,
the dummy inputs and the data components registered below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import handwritten

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # Olive's documented opt-out: no run events
from olive.data.registry import Registry  # after the opt-out: importing Olive reads it

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # recipes.zoo and the digits loader, from this checkout
TORCH_RECIPES = ("digits_torch", "resnet_cpu")
NUM_CLASSES = {"digits_torch": 10, "resnet_cpu": 1000}
FORWARD_ARGUMENT = {"digits_torch": "input", "resnet_cpu": "x"}  # nn.Sequential, torchvision


def build_module(name: str, checkpoint: str | None = None) -> Any:
    """The recipe's torch module in eval mode, with handwritten's factory and checkpoint."""
    import importlib

    import torch

    recipe = handwritten.RECIPES[name]
    module_name, _, attribute = recipe["factory"].partition(":")
    module = getattr(importlib.import_module(module_name), attribute)(**recipe.get("kwargs", {}))
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    return module.eval()


def load_digits_torch(model_path: str | None) -> Any:
    return build_module("digits_torch", model_path)


def load_resnet_cpu(model_path: str | None) -> Any:
    return build_module("resnet_cpu", model_path)


def dummy_inputs(model: Any) -> dict[str, Any]:
    """A zero batch of the io_config's shape, keyed by the forward's argument (as its
    dynamic_shapes are: Olive's dynamo path with transformers 5 takes only a dict there)."""
    import torch

    (argument,) = model.io_config["dynamic_shapes"]
    return {argument: torch.zeros(model.io_config["input_shapes"][0], dtype=torch.float32)}


@Registry.register_dataset("edgekiln_samples")
def edgekiln_samples(recipe: str, split: str, count: int) -> list[tuple[dict, Any]]:
    """The first ``count`` samples of handwritten's split as (feed without batch axis, label)."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from stages.common.datasets.splits import load_dataset

    settings = handwritten.RECIPES[recipe]
    name = settings["input"]
    inputs = [{"name": name, "dtype": "float32", "shape": ["batch", *settings["shape"]]}]
    data = getattr(load_dataset(OmegaConf.create(settings["dataset"]), OmegaConf.create(inputs)),
                   split)
    images = torch.from_numpy(np.concatenate([feed[name] for feed in data.feeds[:count]]))
    if data.labels is not None:
        labels = torch.as_tensor(data.labels[:count], dtype=torch.int64)
    else:  # no labels: the eager FP32 model's top-1, so accuracy is top-1 agreement
        with torch.no_grad():
            labels = build_module(recipe, settings.get("checkpoint"))(images).argmax(-1)
    return [({name: image}, label) for image, label in zip(images, labels, strict=True)]


@Registry.register_post_process("edgekiln_top1")
def edgekiln_top1(output: Any, **_: Any) -> Any:
    """Logits -> class index, as Olive's accuracy_score compares integer predictions."""
    import torch

    logits = next(iter(output.values())) if isinstance(output, dict) else output
    return torch.as_tensor(logits).argmax(-1)


def data_config(name: str, recipe: str, split: str, count: int) -> dict[str, Any]:
    return {"name": name, "type": "DataContainer",
            "user_script": __file__, "script_dir": str(ROOT),
            "load_dataset_config": {"type": "edgekiln_samples",
                                    "params": {"recipe": recipe, "split": split, "count": count}},
            "post_process_data_config": {"type": "edgekiln_top1"},
            "dataloader_config": {"batch_size": 1}}


def input_model(recipe: str) -> dict[str, Any]:
    settings = handwritten.RECIPES[recipe]
    model: dict[str, Any] = {
        "type": "PyTorchModel", "model_script": __file__, "script_dir": str(ROOT),
        "model_loader": f"load_{recipe}", "dummy_inputs_func": "dummy_inputs",
        "io_config": {"input_names": [settings["input"]], "output_names": ["logits"],
                      "input_shapes": [[handwritten.PARITY_BATCH, *settings["shape"]]],
                      "dynamic_shapes": {FORWARD_ARGUMENT[recipe]: {"0": "batch"}},
                      "dynamic_axes": {settings["input"]: {"0": "batch"}}}}
    if "checkpoint" in settings:
        model["model_path"] = str(ROOT / settings["checkpoint"])
    return model


def evaluator(recipe: str) -> dict[str, Any]:
    accuracy = {"name": "accuracy", "type": "accuracy", "data_config": "evaluation",
                "sub_types": [{"name": "accuracy_score", "priority": 1,
                               "metric_config": {"task": "multiclass",
                                                 "num_classes": NUM_CLASSES[recipe]}}]}
    runs = {"warmup_num": handwritten.WARMUP_RUNS, "repeat_test_num": handwritten.LATENCY_RUNS,
            "sleep_num": 0}
    latency = {"name": "latency", "type": "latency", "data_config": "evaluation",
               "sub_types": [{"name": "p50", "priority": 2, "metric_config": runs},
                             {"name": "p90", "metric_config": runs}]}
    return {"metrics": [accuracy, latency]}


def passes() -> dict[str, Any]:
    return {
        "conversion": {"type": "OnnxConversion", "target_opset": handwritten.OPSET,
                       "use_dynamo_exporter": True, "dynamic": True},
        "optimize": {"type": "OrtTransformersOptimization", "model_type": "bert",
                     "only_onnxruntime": True, "opt_level": 1},
        "quantize": {"type": "OnnxStaticQuantization", "data_config": "calibration",
                     "quant_format": "QDQ", "prepare_qdq_config": False,
                     "quant_preprocess": True, "per_channel": True, "reduce_range": False,
                     "precision": "int8", "activation_type": "uint8",
                     "weight_symmetric": True, "activation_symmetric": False,
                     "calibrate_method": "MinMax"},
    }


def workflow(recipe: str, out: Path) -> dict[str, Any]:
    """The whole Olive run config, as its JSON schema spells it."""
    settings = handwritten.RECIPES[recipe]
    cpu = {"type": "LocalSystem", "accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}
    return {
        "workflow_id": f"edgekiln_{recipe}",
        "input_model": input_model(recipe),
        "systems": {"local_system": cpu},
        "data_configs": [
            data_config("calibration", recipe, "calibration", handwritten.CALIBRATION_SAMPLES),
            data_config("evaluation", recipe, "evaluation", settings["samples"])],
        "evaluators": {"common_evaluator": evaluator(recipe)},
        "passes": passes(),
        "host": "local_system", "target": "local_system", "evaluator": "common_evaluator",
        "evaluate_input_model": False, "log_severity_level": 3,
        "cache_dir": str(out / "cache"), "output_dir": str(out / "output"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=TORCH_RECIPES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    from olive.workflows import run as olive_run

    out = args.out.resolve()
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    config = workflow(args.recipe, out)
    (out / "workflow.json").write_text(json.dumps(config, indent=2) + "\n")
    result = olive_run(config, tempdir=str(out / "tmp"))
    best = result.get_best_candidate() if result is not None else None
    if best is None:
        raise SystemExit(f"Olive produced no output model for {args.recipe}; see {out}")
    timings = {"total": round(time.perf_counter() - started, 3), "model": best.model_path,
               "metrics": best.metrics_value}
    (out / "timings.json").write_text(json.dumps(timings, indent=2, default=str) + "\n")
    print(json.dumps(timings, default=str))
    drop_pending_telemetry()


def drop_pending_telemetry() -> None:
    """Olive 0.13 queues a heartbeat at import, before it reads OLIVE_DISABLE_TELEMETRY, and at
    exit waits up to 10 s for its upload; offline that upload never succeeds. Shutting the
    exporter down ends the wait, so the timings are Olive's build and not that timeout."""
    with contextlib.suppress(ImportError, AttributeError):
        from olive.telemetry.library.telemetry_logger import TelemetryLogger

        exporter = TelemetryLogger()._logger_exporter
        if exporter is not None:
            exporter.shutdown()


if __name__ == "__main__":
    main()
