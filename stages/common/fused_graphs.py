"""Which graph a target gets when optimize fused transformer ops: the fused one or the unfused.

optimize at ``level: transformer`` saves the fused graph as the stage's model and the unfused
one beside it in ``portable/``. The per-target stages (quantize, validate, package) read the
fused graph only where the target's first execution provider has a kernel for every fused
``com.microsoft`` op in it, by the op tables of ``op_support/``: NNAPI and CoreML (whose
onnxruntime op lists hold only standard ONNX ops), QNN, OpenVINO and TensorRT take the
portable graph, instead of leaving attention to the CPU EP in one fallback partition per layer.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stages.common import onnx_files
from stages.common.op_tables import tables

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.registry import StageContext

log = logging.getLogger(__name__)
PORTABLE = "portable"
CONTRIB_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class GraphChoice:
    model: Path  # the model directory the target reads
    fused: bool
    reason: str  # why; "" when the stage's input had no portable twin

    def describe(self) -> dict[str, Any]:
        return {"fused": self.fused, "reason": self.reason}


def fuses(recipe: dict[str, Any]) -> bool:
    """Whether an optimize stage of the resolved ``recipe`` fuses transformer ops (level
    transformer, with the unfused twin kept), so per-target stages may read either graph."""
    sections = [recipe.get("optimize") or {}] + [
        entry.get("params") or {} for entry in (recipe.get("stages") or {}).values()
        if isinstance(entry, dict) and entry.get("kind") == "optimize"]
    return any(section.get("level") == "transformer" and section.get("portable", True)
               for section in sections if isinstance(section, dict))


def portable_dir(model_dir: Path) -> Path:
    return model_dir / PORTABLE


def fused_ops(model_dir: Path) -> list[str]:
    """The ``com.microsoft`` op types of the model in ``model_dir``, sorted."""
    import onnx

    model = onnx.load(str(onnx_files.model_file(model_dir)), load_external_data=False)
    return sorted({node.op_type for node in model.graph.node if node.domain == CONTRIB_DOMAIN})


def for_target(model_dir: Path, target: Any) -> GraphChoice:
    """The graph of ``model_dir`` that target section ``target`` should be built from."""
    portable = portable_dir(model_dir)
    if not portable.is_dir():
        return GraphChoice(model_dir, fused=False, reason="")
    provider = target.execution_providers[0].name
    table = tables().get(provider)
    ops = fused_ops(model_dir)
    if table is not None and table.all_ops:
        return GraphChoice(model_dir, fused=True, reason=f"{provider} runs every op")
    missing = [op for op in ops if table is None or table.entry(CONTRIB_DOMAIN, op) is None]
    if not missing:
        return GraphChoice(model_dir, fused=True,
                           reason=f"{provider}'s op table lists {', '.join(ops)}")
    where = f"{provider}'s op table" if table else f"an op table of {provider}"
    return GraphChoice(portable, fused=False,
                       reason=f"{', '.join(f'{CONTRIB_DOMAIN}:{op}' for op in missing)} not in "
                              f"{where}: built from the unfused graph")


def resolve(ctx: StageContext, *slots: str) -> tuple[StageContext, dict[str, Any]]:
    """``ctx`` with ``slots`` pointing at the graphs its target reads, and a summary entry
    ``{"graph": {slot: {fused, reason}}}`` (empty when no slot had a portable twin, and then
    the target section is not read)."""
    twinned = [slot for slot in slots
               if slot in ctx.inputs and portable_dir(ctx.inputs[slot]).is_dir()]
    if not twinned:
        return ctx, {}
    chosen = {slot: for_target(ctx.inputs[slot], ctx.config.target) for slot in twinned}
    for choice in chosen.values():
        if not choice.fused:
            log.info("target '%s': %s", ctx.target, choice.reason)
    inputs = ctx.inputs | {slot: choice.model for slot, choice in chosen.items()}
    return (dataclasses.replace(ctx, inputs=inputs),
            {"graph": {slot: choice.describe() for slot, choice in chosen.items()}})
