"""The ``export`` stage: a torch, TensorFlow, ONNX or Hugging Face model in, a checked
``model.onnx`` out.

The exported model must pass ``onnx.checker``, take exactly the recipe's inputs, and agree
with the source framework on seeded random samples within ``export.parity_atol/rtol``.
Frameworks (and onnx, numpy) are imported inside the functions, so importing the stage
registry stays fast.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem, RecipeError, StageError
from pipeline.registry import StageContext, stage
from stages.common.onnx_files import load_model, save_model
from stages.common.sample_inputs import make_samples
from stages.common.torch_models import model_factory
from stages.common.trust import check_factory
from stages.export.checks import (
    check_signature,
    describe,
    export_feeds,
    graph_inputs,
    parity,
)
from stages.export.from_huggingface import check_huggingface, derive_keys, export_huggingface
from stages.export.from_tensorflow import export_tensorflow
from stages.export.from_torch import TORCHSCRIPT_OPSETS, export_torch
from stages.export.params import ExportParams

if TYPE_CHECKING:

    import onnx

    from stages.common.datasets.splits import Feed
    from stages.export.from_torch import Reference

# modules each framework needs, and the extra of pyproject.toml that installs them
NEEDS = {"torch": (("torch", "onnxscript"), "torch"),
         "tensorflow": (("tensorflow", "tf2onnx"), "tf"),
         "huggingface": (("torch", "onnxscript", "transformers"), "huggingface")}


def check_recipe(config: dict[str, Any]) -> None:
    """At plan time: the model section names what its framework needs, and it is installed."""
    model = config["model"]
    framework = model["framework"]
    needs = {"torch": "factory", "tensorflow": None, "onnx": "path",
             "huggingface": None}[framework]
    if needs and not model[needs]:
        raise RecipeError(f"model.{needs}: required when model.framework={framework}.")
    if framework == "tensorflow" and not (model["path"] or model["factory"]):
        raise RecipeError("model.path or model.factory: one is required for tensorflow.")
    if model.get("factory"):  # refused before anything imports it
        check_factory(model["factory"], "model.factory", model.get("trusted_packages") or ())
    if framework == "huggingface":
        check_huggingface(model)
    check_exporter(framework, config["export"])
    require_framework(framework)


def check_exporter(framework: str, export: dict[str, Any]) -> None:
    """``export.exporter`` applies to torch models, and TorchScript has its own opset range."""
    exporter = getattr(export["exporter"], "value", export["exporter"])
    if exporter != "torchscript":
        return
    if framework not in ("torch", "huggingface"):
        raise RecipeError(f"export.exporter=torchscript: torch's exporters convert torch and "
                          f"huggingface models; model.framework={framework} has its own "
                          "converter. Leave export.exporter at dynamo.")
    opset = export["opset"]
    if opset not in TORCHSCRIPT_OPSETS:
        raise RecipeError(
            f"export.opset={opset} with export.exporter=torchscript: the TorchScript exporter "
            f"writes opsets {TORCHSCRIPT_OPSETS.start}-{TORCHSCRIPT_OPSETS.stop - 1}. Choose "
            "one of those, or export.exporter=dynamo for a newer opset.")


# alone: the exporters trace and check the model with torch or tensorflow on every core
@stage("export", params=ExportParams, section=True, reads=("model",), version=4,
       check=check_recipe, derive=derive_keys, exclusive=True,
       tools=("onnx", "onnxruntime", "torch", "onnxscript", "tensorflow-cpu", "tf2onnx",
              "transformers"),
       sources=("model.checkpoint", "model.path", "model.factory", "model.package"))
def export(ctx: StageContext) -> dict[str, Any]:
    """Export the recipe's model to ONNX in ``ctx.out`` and check it against the source."""
    import onnx

    model, settings = ctx.config.model, ctx.config.export
    # the exporters trace with one sample, so there is always at least one
    samples = make_samples(model.inputs, model.dynamic_size, max(settings.parity_samples, 1))
    feeds = export_feeds(model.inputs, samples, settings.parity_samples)
    ctx.report(f"exporting the {model.framework} model")
    proto, reference = _convert(model, settings, feeds.trace)
    for node in proto.graph.node:
        # the exporter's per-node stack traces hold this machine's paths and are 10% of a
        # small model; nothing downstream reads them
        del node.metadata_props[:]
    path = save_model(proto, ctx.out)
    del proto  # the weights of a large model should not stay in memory twice
    try:
        onnx.checker.check_model(str(path))  # by path, so external data is checked too
    except onnx.checker.ValidationError as exc:
        raise StageError(f"the ONNX model fails onnx.checker: {exc}") from exc
    header = onnx.load(str(path), load_external_data=False)
    check_signature(header.graph, model.inputs, list(model.outputs))
    ctx.report("comparing onnxruntime with the source model")
    summary = {
        "framework": model.framework,
        "opset": next(o.version for o in header.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": [describe(value) for value in graph_inputs(header.graph)],
        "outputs": [describe(value) for value in header.graph.output],
        "parity": parity(path, reference, feeds, settings),
        "nodes": len(header.graph.node),
    }
    (ctx.out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def require_framework(framework: str) -> None:
    """Fail with the install command when ``framework``'s exporter is not installed."""
    modules, extra = NEEDS.get(framework, ((), ""))
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise EnvironmentProblem(f"model.framework={framework} needs {module}: "
                                     f"pip install -e '.[{extra}]'")


def _convert(model: Any, settings: Any, sample: Feed) -> tuple[onnx.ModelProto, Reference | None]:
    """(ONNX model, reference that runs the source model); no reference for an ONNX source."""
    if model.framework == "onnx":
        if not model.path:
            raise RecipeError("model.framework=onnx needs model.path, an .onnx file.")
        return load_model(Path(model.path)), None
    require_framework(model.framework)
    if model.framework == "huggingface":
        return export_huggingface(model, settings, sample)
    make = model_factory(model) if model.factory else None
    if model.framework == "tensorflow":
        return export_tensorflow(make, model, settings, sample)
    if make is None:
        raise RecipeError("model.framework=torch needs model.factory ('package.module:callable' "
                          "returning the nn.Module).")
    return export_torch(make, model, settings, sample)
