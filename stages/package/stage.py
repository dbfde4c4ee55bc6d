"""Lay out one target's deployable files: the model, its coverage, providers, signature, loader.

The output is what a device needs: ``model.onnx`` (+ ``model.onnx.data``), ``model.ort`` when
the target's runtime loads onnxruntime's ORT format (the mobile packages), ``coverage.json``
(which nodes the target's EPs take and which fall back to CPU), ``providers.json``,
``signature.json`` and ``load_model.py``, which uses only onnxruntime and numpy. Manifest,
checksums and the archive are added when the bundle is published.

Before writing, the model is made to fit ``targets.<t>.requires``: an opset or IR version out
of range fails (recipe error), opset imports no node uses are dropped, and dynamic dimensions
are fixed when the target needs static shapes. ``package.max_cpu_fallback_nodes`` gates on the
coverage.

model.onnx stays beside model.ort: it is the graph validation measured, model.ort is a
serialization of it after onnxruntime's basic optimizations, and tools (checker, viewers, the
loader's self-test on a workstation) read ONNX. A phone app ships model.ort alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.registry import StageContext, stage
from stages.common import fused_graphs
from stages.common.onnx_files import MODEL_FILE, copy_model
from stages.common.op_tables import stage_version
from stages.package import coverage, device_files
from stages.package import fit as compat
from stages.package.params import PackageParams

TEMPLATE = Path(__file__).resolve().parents[2] / "pipeline" / "bundle" / "device_loader.py"
CPU = "CPUExecutionProvider"
SIGNATURE_KEYS = ("inputs", "outputs", "opset", "ir_version")


# signing happens at publish time, so the signing keys stay out of this stage's key
@stage("package", params=PackageParams, section=True, inputs=("model",),
       optional_inputs=("report",), reads=("target", "model.name", "model.inputs"),
       per_target=True, publishes=True, publish_params=("signing",),
       tools=("onnx", "onnxruntime", "packaging", "numpy"), version=stage_version(4))
def package(ctx: StageContext) -> dict[str, Any]:
    """Fit the model to the target, report its coverage, write the bundle's files."""
    import onnx

    ctx, graph_choice = fused_graphs.resolve(ctx, "model")
    target = ctx.config.target
    model_path = copy_model(ctx.inputs["model"], ctx.out)
    prepared = _fit(model_path, target, ctx.target)
    # the graph is all the rest needs; the weights may be large
    model = onnx.load(str(model_path), load_external_data=False)
    ort_info, graph = None, model
    if target.requires.format == "ort":
        ctx.report("converting to ORT format")
        ort_info, graph = _ort_model(model_path, ctx.out, target, ctx.target)
    report = coverage.report(graph, target, ctx.target)
    report["model"] = ort_info["file"] if ort_info else MODEL_FILE
    _write_json(ctx.out / "coverage.json", report)
    coverage.gate(report, ctx.config.package.get("max_cpu_fallback_nodes"), ctx.target)
    signature = _signature(model, ctx.config.model)
    _write_json(ctx.out / "providers.json",
                _providers(target, ctx.target, report["model"], ort_info))
    _write_json(ctx.out / "signature.json", signature)
    shutil.copyfile(TEMPLATE, ctx.out / "load_model.py")
    pins = device_files.from_report(ctx.inputs.get("report"), ctx.out, ctx.target,
                                    OmegaConf.to_container(target, resolve=True))
    return {
        # what the publisher writes into the bundle's manifest.json for the device loader
        "manifest": {"signature": {k: signature[k] for k in SIGNATURE_KEYS}, **pins},
        "files": {f.name: f.stat().st_size for f in sorted(ctx.out.iterdir())},
        "model_file": report["model"],
        "opset": signature["opset"],
        "ir_version": signature["ir_version"],
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
        "coverage": {k: report.get(k) for k in ("first_choice", "nodes", "on_first_choice",
                                                  "cpu_fallback_nodes", "partitions")},
        **prepared,
        **({"ort_format": ort_info} if ort_info else {}),
        **graph_choice,
    }


def _fit(model_path: Path, target: Any, name: str | None) -> dict[str, Any]:
    """Check the model against ``requires`` and rewrite it to fit; returns what changed."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=True)
    compat.check_versions(model, target.requires, str(name))
    changes: dict[str, Any] = {"dropped_opset_imports": compat.drop_unused_opsets(model),
                               "sorted_nodes": compat.sort_nodes(model)}
    if target.requires.static_shapes:
        changes["fixed_dims"] = compat.fix_shapes(model, target.requires, str(name))
    if any(changes.values()):
        compat.save(model, model_path.parent)
    return changes


def _ort_model(model_path: Path, out: Path, target: Any, name: str | None) -> tuple[Any, Any]:
    """model.ort, checked to load here and on the target's runtime range."""
    import onnxruntime

    style = target.requires.ort_optimization_style
    ort_file, graph = compat.convert_to_ort(model_path, out, style)
    version = compat.ort_format_version(ort_file)
    info = {
        "file": ort_file.name,
        "format_version": version,
        "loads_from_onnxruntime": compat.check_ort_runtime(version, target.runtime, str(name)),
        "converted_with": f"onnxruntime {onnxruntime.__version__}",
        "optimization_style": style,
        "target_platform": compat.ORT_TARGET_PLATFORM,
        "inputs": compat.check_ort_loads(ort_file),
    }
    return info, graph


def _providers(target: Any, name: str | None, model_file: str,
               ort_info: dict[str, Any] | None) -> dict[str, Any]:
    providers = [{"name": ep.name, "options": OmegaConf.to_container(ep.options, resolve=True)}
                 for ep in target.execution_providers]
    session = OmegaConf.to_container(target.session, resolve=True)
    return {
        "target": name,
        "device": target.device,
        "precision": target.precision,
        "model": model_file,
        "runtime": OmegaConf.to_container(target.runtime, resolve=True),
        "providers": providers,
        # SessionOptions settings the EPs' docs ask for (graph_optimization_level,
        # intra_op_num_threads, add_session_config_entry); null = onnxruntime's default
        "session": session,
        # validate measured the model with CPU appended as last resort, so the loader does too
        "cpu_fallback": True,
        "cpu_fallback_policy": (
            "Providers are tried in the order listed and those the device lacks are skipped "
            "with a warning. CPUExecutionProvider is appended last when not listed, so nodes "
            "no listed provider supports, or a device without them, still run (slower). "
            "coverage.json lists the nodes expected to fall back."
        ),
        "explicit_cpu": CPU in [p["name"] for p in providers],
        **({"ort_format": ort_info} if ort_info else {}),
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
