"""Lay out one target's deployable files: the model, its providers, its signature, a loader.

The output is what a device needs and nothing more: ``model.onnx`` (+ ``model.onnx.data``),
``providers.json``, ``signature.json`` and ``load_model.py``, which uses only onnxruntime and
numpy. Manifest, checksums and the archive are added when the bundle is published.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stages.base import StageContext, stage
from stages.support.onnx_files import copy_model

TEMPLATE = Path(__file__).parent / "support" / "load_model_template.py"
CPU = "CPUExecutionProvider"


@stage("package", inputs={"model": "quantize"}, reads=("target", "model.name", "model.inputs",
       "package"), per_target=True, tools=("onnx", "onnxruntime"))
def package(ctx: StageContext) -> dict[str, Any]:
    """Copy the model and write providers.json, signature.json and load_model.py beside it."""
    import onnx

    model_path = copy_model(ctx.inputs["model"], ctx.out)
    # the graph is all the signature needs; the weights may be large
    model = onnx.load(str(model_path), load_external_data=False)
    signature = _signature(model, ctx.config.model)
    _write_json(ctx.out / "providers.json", _providers(ctx.config.target, ctx.target))
    _write_json(ctx.out / "signature.json", signature)
    shutil.copyfile(TEMPLATE, ctx.out / "load_model.py")
    return {
        "files": {f.name: f.stat().st_size for f in sorted(ctx.out.iterdir())},
        "opset": signature["opset"],
        "ir_version": signature["ir_version"],
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
    }


def _providers(target: Any, name: str | None) -> dict[str, Any]:
    providers = [{"name": ep.name, "options": OmegaConf.to_container(ep.options, resolve=True)}
                 for ep in target.execution_providers]
    return {
        "target": name,
        "device": target.device,
        "precision": target.precision,
        "providers": providers,
        # validate measured the model with CPU appended as last resort, so the loader does too
        "cpu_fallback": True,
        "cpu_fallback_policy": (
            "Providers are tried in the order listed and those the device lacks are skipped "
            "with a warning. CPUExecutionProvider is appended last when not listed, so nodes "
            "no listed provider supports, or a device without them, still run (slower)."
        ),
        "explicit_cpu": CPU in [p["name"] for p in providers],
    }


def _signature(model: Any, recipe_model: Any) -> dict[str, Any]:
    """Graph inputs and outputs as numpy-style dtypes, with dynamic dims kept as their names."""
    initializers = {t.name for t in model.graph.initializer}
    # older IRs list initializers among the inputs; a caller never feeds those
    inputs = [_value_info(v) for v in model.graph.input if v.name not in initializers]
    ranges = {spec.name: spec for spec in recipe_model.inputs}
    for entry in inputs:
        if entry["name"] in ranges:
            entry |= {"low": ranges[entry["name"]].low, "high": ranges[entry["name"]].high}
    opsets = [{"domain": o.domain or "ai.onnx", "version": o.version} for o in model.opset_import]
    return {
        "model": recipe_model.name,
        "inputs": inputs,
        "outputs": [_value_info(v) for v in model.graph.output],
        "opset": next((o["version"] for o in opsets if o["domain"] == "ai.onnx"), None),
        "opset_imports": opsets,
        "ir_version": model.ir_version,
    }


def _value_info(value: Any) -> dict[str, Any]:
    from onnx import helper

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        # sequences and maps have no single dtype or shape
        return {"name": value.name, "dtype": kind, "shape": None}
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in tensor.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    return {"name": value.name, "dtype": str(dtype), "shape": shape}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
