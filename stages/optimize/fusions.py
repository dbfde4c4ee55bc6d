"""Transformer fusions: onnxscript's ORT fusions, in onnxscript's order, each one switchable.

``optimize_for_ort`` applies them all; a recipe may switch some off (``optimize.fusions``), so
the sequence of ``fuse_xformers`` is spelled out here with one recipe switch per family. A test
checks that everything on gives onnxscript's own counts, so an onnxscript upgrade that adds a
fusion shows up instead of being silently skipped. ORT's own transformers optimizer expects the
TorchScript exporter's graph shapes: on a dynamo-exported MiniLM it fused only 6 BiasGelu where
these fused 6 Attention, 12 SkipLayerNormalization and 6 BiasGelu (max output diff 7e-7).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from stages.common import onnx_files

if TYPE_CHECKING:
    from pathlib import Path

    from stages.optimize.params import FusionSwitches

# (onnxscript's count name, module under onnxscript.rewriter.ort_fusions, function, switch)
SEQUENCE = (
    ("erf_gelu", "erfgelu", "fuse_erfgelu", "gelu"),
    ("rms_normalization", "rms_normalization", "fuse_rms_normalization", "rms_norm"),
    ("skip_layer_normalization", "skip_normalization", "fuse_skip_layer_normalization",
     "skip_layer_norm"),
    ("skip_rms_normalization", "skip_normalization", "fuse_skip_rms_normalization",
     "skip_layer_norm"),
    ("rotary_embedding", "rotary_embedding", "fuse_rotary_embedding", "rotary_embedding"),
    ("cos_sin_cache", "cos_sin_cache", "fuse_cos_sin_cache", "rotary_embedding"),
    ("partial_rotary_embedding", "rotary_embedding", "fuse_partial_rotary_embedding",
     "rotary_embedding"),
    ("sdpa", "sdpa", "fuse_sdpa", "attention"),
    ("gqa", "gqa", "fuse_gqa", "attention"),
    ("packed_qkv_for_gqa", "gqa_packed_qkv", "fuse_qkv_gqa", "attention"),
    ("mha1", "mha", "fuse_mha1", "attention"),
    ("mha2", "mha", "fuse_mha2", "attention"),
    ("mha_scale", "mha_scale", "fuse_mha_scale", "attention"),
    ("mha_bias", "mha_bias", "fuse_mha_bias", "attention"),
    ("attention", "attention", "fuse_attention", "attention"),
    ("gelu", "gelu", "fuse_gelu", "gelu"),
    ("bias_gelu", "bias_gelu", "fuse_bias_gelu", "gelu"),
    ("sdpa_via_mha", "sdpa_via_mha", "replace_sdpa_by_mha", "attention"),
)
# fusions onnxscript runs with shape inference after them: they add nodes of new shapes
REINFER = {"sdpa"}
# onnxscript fuses MHA bias and the packed Attention only on top of an MHA fusion
NEEDS_MHA = {"mha_bias", "attention"}


def fuse(path: Path, directory: Path, switches: FusionSwitches) -> tuple[Path, dict[str, Any]]:
    """Fuse the model at ``path`` into ``directory/model.onnx``; the summary counts each fusion."""
    import onnx_ir as ir
    import onnxscript

    model = ir.load(path)
    counts = _fuse_all(model, switches)
    directory.mkdir(parents=True)
    target = onnx_files.model_file(directory)
    ir.save(model, target, external_data=onnx_files.WEIGHTS_FILE)
    from stages.optimize.params import FusionSwitches

    off = [f.name for f in dataclasses.fields(FusionSwitches) if not getattr(switches, f.name)]
    return target, {"tool": f"onnxscript {onnxscript.__version__} rewriter.ort_fusions",
                    "applied": {name: count for name, count in sorted(counts.items()) if count},
                    "switched_off": off}


def families(applied: dict[str, int]) -> list[str]:
    """The switches (``optimize.fusions`` keys) of the fusions counted in ``applied``."""
    return list(dict.fromkeys(switch for name, _, _, switch in SEQUENCE if applied.get(name)))


def without(switches: FusionSwitches, family: str) -> FusionSwitches:
    """``switches`` with ``family`` off."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(switches, {family: False})


def _fuse_all(model: Any, switches: FusionSwitches) -> dict[str, int]:
    """``optimize_for_ort``'s steps, with the switched-off fusions left out."""
    import importlib

    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import _core
    from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

    # _core holds optimize_for_ort's own pre-pass and rule list: used as they are, not copied
    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    _core._pre_optimize(model)
    counts: dict[str, int] = {}
    for name, module, function, switch in SEQUENCE:
        if name == "partial_rotary_embedding":
            common_passes.CommonSubexpressionEliminationPass()(model)  # as fuse_xformers does
        mha_missing = name in NEEDS_MHA and not (counts.get("mha1") or counts.get("mha2"))
        if not getattr(switches, switch) or mha_missing:
            counts[name] = 0
            continue
        fusion = getattr(importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module}"),
                         function)
        extra = {"apply_shape_inference": True} if name in REINFER else {}
        counts[name] = fusion(model, debug=False, **extra)
    optimize(model)
    rewrite(model, _core.ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
        common_passes.RemoveInitializersFromInputsPass(),
        common_passes.ShapeInferencePass())(model)
    return counts
