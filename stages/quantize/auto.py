"""``quantize.mode: auto``: ship the fastest candidate that keeps fidelity and beats FP32.

The plan has already built each candidate as a quantize node of its own
(``stages.quantize.candidates``); they arrive here in the slots ``variant.<name>``, with the
FP32 model in ``model``. Each is scored on the evaluation split with validate's metrics and
timed on the target's runtime (``stages.quantize.measure``). A candidate qualifies when it
passes ``quantize.auto.gates`` and, where the target's own EP ran it, is at least
``quantize.auto.min_speedup`` times faster than FP32; the fastest qualifying one wins (within
5% counts as a tie: the smaller, then the earlier one wins). Where the target's EP cannot run
here (TensorRT, QNN...), speed on this CPU says nothing about the device, so the first
candidate that keeps fidelity wins, and the report says so. When none qualifies, the FP32
model ships with ``quantization.fallback_reason`` (or, with ``auto.require``, the build fails).
A candidate whose build failed (``ctx.lost``, kept apart by the executor) loses with its error.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pipeline.errors import GateError
from stages.common import gates, onnx_files
from stages.common.onnx_files import model_size
from stages.quantize.measure import FP32, run_models

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.registry import StageContext

log = logging.getLogger(__name__)
VARIANT = "variant."
TIE = 0.05



def choose(ctx: StageContext) -> dict[str, Any]:
    """Measure the candidates, copy the winner (or FP32) into ``ctx.out``; the summary."""
    from stages.common import metrics
    from stages.common.datasets.splits import load_dataset

    params = ctx.params.auto
    models = {FP32: ctx.inputs["model"]} | {
        slot.removeprefix(VARIANT): path for slot, path in ctx.inputs.items()
        if slot.startswith(VARIANT)}
    split = load_dataset(ctx.config.dataset, ctx.config.model.inputs).evaluation
    feeds = split.feeds[:max(params.samples, 1)]
    labels = None if split.labels is None else split.labels[:len(feeds)]
    ctx.report(f"scoring {len(models) - 1} candidates on {len(feeds)} samples")
    runs = run_models(ctx, models, feeds)
    mask = metrics.token_mask(feeds, runs.outputs[FP32])
    rows = [_row(name, models[name], runs, _fidelity(runs, name, labels, mask), params)
            for name in models if name != FP32]
    rows += [_lost(slot.removeprefix(VARIANT), why) for slot, why in ctx.lost.items()]
    winner = _winner(rows, runs.on_target_ep)
    fallback = None if winner else _fallback_reason(rows, params, runs)
    if fallback and params.require:
        raise GateError(f"target '{ctx.target}': quantize.auto.require is set and {fallback}")
    if fallback:
        log.warning("target '%s': shipping FP32: %s", ctx.target, fallback)
        ctx.report(f"shipping FP32: {fallback}")
    chosen = winner["name"] if winner else FP32
    onnx_files.copy_model(models[chosen], ctx.out)
    summary = _summary(chosen, rows, runs, fallback, models)
    _write(ctx.out, summary)
    return summary


def _fidelity(runs: Any, name: str, labels: Any, mask: Any) -> dict[str, Any]:
    """Validate's metrics of candidate ``name`` against FP32 (padding left out by ``mask``)."""
    from stages.common import metrics

    candidate, reference = runs.outputs[name], runs.outputs[FP32]
    return metrics.agreement(candidate, reference, mask) | metrics.accuracy(
        candidate, reference, labels)


def _row(name: str, directory: Path, runs: Any, fidelity: dict[str, Any],
         params: Any) -> dict[str, Any]:
    failed = [_gate_line(gate, fidelity, params.gates) for gate in params.gates
              if _fails(gate, fidelity, params.gates)]
    speedup = runs.p50_ms[FP32] / max(runs.p50_ms[name], 1e-9)
    saving = runs.p50_ms[FP32] - runs.p50_ms[name]
    if runs.on_target_ep and speedup < params.min_speedup:
        failed.append(f"speedup {speedup:.2f}x < quantize.auto.min_speedup "
                      f"{params.min_speedup:g}x")
    elif runs.on_target_ep and saving < params.min_saving_ms:
        failed.append(f"saves {saving:.4f} ms < quantize.auto.min_saving_ms "
                      f"{params.min_saving_ms:g}")
    settings = json.loads((directory / "quantize.json").read_text())
    return {"name": name, "settings": {k: v for k, v in settings.items()
                                       if k not in ("quant_ops", "size_before", "nodes_before")},
            "p50_ms": round(runs.p50_ms[name], 4), "speedup": round(speedup, 4),
            "size_bytes": model_size(directory), **fidelity, "qualifies": not failed,
            "failed": failed}


def _lost(name: str, why: str) -> dict[str, Any]:
    """A candidate that did not build: it loses, and the report says why."""
    return {"name": name, "settings": {}, "p50_ms": None, "speedup": None, "size_bytes": None,
            "min_sample_cosine": None, "mean_cosine": None, "top1_agreement": None,
            "accuracy_drop": None, "qualifies": False,
            "failed": [f"did not build: {' '.join(why.split())[:300]}"]}


def _fails(gate: str, fidelity: dict[str, Any], thresholds: Any) -> bool:
    threshold, (metric, is_max) = thresholds.get(gate), gates.GATES[gate]
    if threshold is None or fidelity.get(metric) is None:
        return False
    return not gates.passes(fidelity[metric], threshold, is_max)


def _gate_line(gate: str, fidelity: dict[str, Any], thresholds: Any) -> str:
    metric, is_max = gates.GATES[gate]
    return (f"{metric} {fidelity[metric]:.4g} {'>' if is_max else '<'} quantize.auto.gates."
            f"{gate} {thresholds[gate]:g}")


def _winner(rows: list[dict[str, Any]], timed: bool) -> dict[str, Any] | None:
    qualifying = [row for row in rows if row["qualifies"]]
    if not qualifying or not timed:
        return qualifying[0] if qualifying else None
    fastest = min(row["p50_ms"] for row in qualifying)  # lost candidates never qualify
    ties = [row for row in qualifying if row["p50_ms"] <= fastest * (1 + TIE)]
    return min(ties, key=lambda row: (row["size_bytes"], rows.index(row)))


def _fallback_reason(rows: list[dict[str, Any]], params: Any, runs: Any) -> str:
    lost = "; ".join(f"{row['name']}: {', '.join(row['failed'])}" for row in rows)
    return (f"no candidate kept fidelity (quantize.auto.gates) and beat FP32 by "
            f"{params.min_speedup:g}x and {params.min_saving_ms:g} ms on {runs.ran_on} "
            f"({runs.runtime}): {lost}")


def _summary(chosen: str, rows: list[dict[str, Any]], runs: Any, fallback: str | None,
             models: dict[str, Path]) -> dict[str, Any]:
    settings = next((row["settings"] for row in rows if row["name"] == chosen), {"mode": "none"})
    note = None if runs.on_target_ep else (
        f"candidates timed on {runs.ran_on}, not on the target's EP: chosen on fidelity, in "
        "candidate order")
    return {**settings, "mode": f"auto: {chosen}",
            "quantization": {"chosen": chosen, "fallback_reason": fallback,
                             "timed_on": runs.ran_on, "runtime": runs.runtime,
                             "on_target_ep": runs.on_target_ep, "note": note},
            "candidates": rows,
            "latency_ms": {"fp32_p50": round(runs.p50_ms[FP32], 4),
                           "shipped_p50": round(runs.p50_ms[chosen], 4)},
            "size_fp32": model_size(models[FP32])}


def _write(out: Path, summary: dict[str, Any]) -> None:
    """quantize.json (the choice) and auto.md (every candidate and why it won or lost)."""
    from stages.quantize import auto_report

    (out / "quantize.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "auto.md").write_text(auto_report.markdown(summary))
