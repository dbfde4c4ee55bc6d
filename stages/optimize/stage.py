"""Stage ``optimize``: ONNX shape inference, then ONNX Runtime's offline graph optimizations.

The optimized graph is saved once here, so every target's session later starts from the same
rewritten model instead of each one redoing (and perhaps disagreeing on) the rewrites.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.registry import stage
from stages.common import fused_graphs, onnx_files
from stages.optimize.fusion_check import disagreement
from stages.optimize.fusions import families, fuse, without
from stages.optimize.params import OptimizeParams

if TYPE_CHECKING:
    from pipeline.registry import StageContext

log = logging.getLogger(__name__)

# "all" is left out on purpose: its layout rewrites (NCHWc) tie a saved model to one CPU.
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}
# initializers at least this large go to the external data file when the model has one
EXTERNAL_MIN_BYTES = 1024


@stage("optimize", params=OptimizeParams, section=True, inputs=("model",), version=3,
       tools=("onnx", "onnxruntime", "onnxscript", "onnx-ir"))
def optimize(ctx: StageContext) -> dict[str, Any]:
    """Infer shapes and apply ORT graph optimizations at ``optimize.level``.

    Args:
        ctx: stage context; ``ctx.inputs["model"]`` holds the exported model directory.

    Returns:
        Node counts and sizes before and after, and the op-type histogram after.
    """
    cfg = ctx.config.optimize
    source = ctx.inputs["model"]
    if cfg.level == "extended":
        log.warning("optimize.level=extended may fuse nodes into com.microsoft contrib ops "
                    "(FusedConv, FusedGemm, ...) that only some execution providers run and "
                    "that static quantization leaves in float; 'basic' is portable")
    if cfg.level == "transformer":
        log.warning("optimize.level=transformer fuses attention into com.microsoft contrib ops "
                    "(Attention, SkipLayerNormalization, BiasGelu) that the CPU and CUDA EPs "
                    "run; targets whose first EP lacks one get the unfused graph")
    before = onnx_files.model_stats(source)
    with tempfile.TemporaryDirectory(prefix="edgekiln-optimize-") as tmp:
        # shape inference rewrites its file in place, so it works on a copy
        current = onnx_files.copy_model(source, Path(tmp) / "input")
        if cfg.shape_inference:
            ctx.report("shape inference")
            _infer_shapes(current)
        fusions = None
        if cfg.level == "transformer":
            current, fusions = _transformer(ctx, current, Path(tmp))
        elif cfg.level != "none":
            ctx.report(f"ORT graph optimization ({cfg.level})")
            current = _ort_optimize(current, Path(tmp) / "optimized", cfg.level)
        _save(current, ctx.out)
    after = onnx_files.model_stats(ctx.out)
    summary = {
        "level": cfg.level,
        "shape_inference": bool(cfg.shape_inference),
        "nodes_before": before["nodes"],
        "nodes_after": after["nodes"],
        "size_before": before["size"],
        "size_after": after["size"],
        "ops_after": after["ops"],
    }
    if fusions is not None:
        summary["fusions"] = fusions | {
            "fused_ops": fused_graphs.fused_ops(ctx.out),
            "portable": fused_graphs.portable_dir(ctx.out).is_dir()}
    (ctx.out / "optimize.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _transformer(ctx: StageContext, source: Path, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The fused graph (after ORT's basic level) if it still computes the model, and the
    unfused one in portable/. When the fusions break the model, each fused family is switched
    off in turn; if none of those gives a sound graph, the unfused graph ships."""
    cfg = ctx.config.optimize
    ctx.report("ORT graph optimization (basic)")
    unfused = _ort_optimize(source, tmp / "unfused", "basic")
    attempts, rejected = [cfg.fusions], []
    for number, switches in enumerate(attempts):
        ctx.report(f"transformer fusions (onnxscript ort_fusions), attempt {number + 1}")
        fused, fusions = fuse(source, tmp / f"fused{number}", switches)
        if not fusions["applied"]:
            break
        fused = _ort_optimize(fused, tmp / f"optimized{number}", "basic")
        reason = disagreement(fused, unfused)
        if reason is None:
            if cfg.portable:
                _save(unfused, fused_graphs.portable_dir(ctx.out))
            return fused, fusions | {"rejected": rejected}
        log.warning("optimize.level=transformer: %s (fusions %s)", reason, fusions["applied"])
        rejected.append({"applied": fusions["applied"], "reason": reason})
        if number == 0:  # then each family that fused, switched off alone
            attempts += [without(switches, family) for family in families(fusions["applied"])]
    return unfused, {"tool": fusions["tool"], "applied": {}, "rejected": rejected,
                     "switched_off": fusions["switched_off"]}


def _save(path: Path, directory: Path) -> None:
    """Re-save through onnx so the external data file is written the way every stage expects."""
    onnx_files.save_model(onnx_files.load_model(path), directory)


def _infer_shapes(path: Path) -> None:
    """Annotate value_info in place; the path-based API also works past protobuf's 2 GB cap."""
    import onnx

    # data_prop lets Shape -> Gather -> Reshape chains resolve to static shapes
    onnx.shape_inference.infer_shapes_path(str(path), str(path), data_prop=True)


def _ort_optimize(path: Path, directory: Path, level: str) -> Path:
    """Let ORT rewrite the graph and save the result as ``directory/model.onnx``."""
    import onnxruntime as ort

    directory.mkdir(parents=True)
    target = onnx_files.model_file(directory)
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    options.optimized_model_filepath = str(target)
    if onnx_files.external_data_files(path):
        # ORT otherwise writes every weight inline and fails past protobuf's 2 GB limit
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", onnx_files.WEIGHTS_FILE)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(EXTERNAL_MIN_BYTES))
    # the CPU EP only decides which fusions apply; basic-level rewrites are EP-independent
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return target
