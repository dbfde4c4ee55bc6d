"""Stage ``quantize``: per-target precision reduction (dynamic/static INT8, A16W8, FP16, INT4
weight-only).

Static quantization calibrates activation ranges on the recipe's dataset; the samples come in
a fixed order from a seeded split, so the same recipe yields the same model bytes. With
``quantize.accuracy_budget`` the quantized model is scored on the evaluation split and, when
over budget, its most sensitive nodes stay in float until it is within (or the stage fails
with exit 4); ``quantize.search.candidates`` adds configurations to try, the fastest one within
budget winning. ``mode: auto`` is fanned out at plan time into one quantize node per candidate
(``stages/quantize/candidates.py``); the auto node itself only measures them and picks one
(``stages/quantize/auto.py``).

The stage runs alone (``exclusive``) when it times models (a latency measured beside another
busy stage lies) or runs models to calibrate or train: onnxruntime and torch already use every
core, and two such nodes side by side took longer than one after the other (issue 13).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from pipeline.registry import stage
from pipeline.schema import DATASET_SOURCES
from stages.common import fused_graphs, onnx_files
from stages.common.onnx_files import model_stats
from stages.quantize import candidates
from stages.quantize.params import QuantizeParams

if TYPE_CHECKING:
    from pipeline.registry import StageContext
    from stages.common.datasets.splits import Dataset
    from stages.quantize.ptq import Quantizer

log = logging.getLogger(__name__)

# summary keys that vary from run to run; they stay out of the stage's files
TIMINGS = ("calibration_seconds", "latency_ms", "train_seconds")


@dataclass
class Outcome:
    directory: Path  # the model to ship
    settings: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)  # extra summary keys
    report: dict[str, Any] | None = None  # quantize_report.json, when a budget is set
    rows: list[dict[str, Any]] = field(default_factory=list)  # search table, when searched


# modes that run the model on every core: calibration (static, GPTQ) and training (QAT)
_RUNS_MODELS = ("static", "qat")


def _uses_every_core(config: dict[str, Any]) -> bool:
    """Budgets, searches and auto time candidate models; calibration and training run them."""
    quantize = config["quantize"]
    budget = quantize["accuracy_budget"]
    return (quantize["mode"] in ("auto", *_RUNS_MODELS)
            or (quantize["mode"] == "int4" and quantize["int4"]["algorithm"] == "gptq")
            or bool(quantize["search"]["candidates"])
            or any(budget[key] is not None for key in ("max_accuracy_drop", "min_agreement",
                                                       "min_sample_cosine")))


# QAT rebuilds the torch model from the model section and its checkpoint, so those are read;
# mode=auto reads the target's providers: its candidates suit them, and it times on them
@stage("quantize", params=QuantizeParams, section=True, inputs=("model",),
       reads=("dataset", "model"), per_target=True, version=5,
       reads_with=candidates.reads_with, exclusive=_uses_every_core, variants=candidates.variants,
       sources=(*DATASET_SOURCES, "model.checkpoint", "model.factory"),
       tools=("onnx", "onnxruntime", "scikit-learn", "numpy", "matplotlib", "torch", "torchao",
              "onnxscript"))
def quantize(ctx: StageContext) -> dict[str, Any]:
    """Quantize the model of ``ctx.inputs["model"]`` at ``quantize.mode``.

    Returns:
        The settings used, sizes and node counts before/after, quantization op counts, the
        calibration sample count and, with a budget, scores, float nodes and CPU latencies.
    """
    ctx, graph = fused_graphs.resolve(ctx, "model")
    return _quantize(ctx) | graph


def _quantize(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config.quantize
    if cfg.mode == "auto":
        from stages.quantize.auto import choose

        return choose(ctx)
    if cfg.mode == "qat":
        from stages.quantize.qat import quantize_aware

        summary = quantize_aware(ctx.config, ctx.inputs["model"], ctx.out, ctx.report)
        _write_summary(ctx.out, {**summary, **_compare(ctx.inputs["model"], ctx.out)})
        return summary
    with tempfile.TemporaryDirectory(prefix="edgekiln-quantize-") as tmp:
        outcome = _ptq(ctx, Path(tmp))
        onnx_files.copy_model(outcome.directory, ctx.out)
    summary = {**outcome.settings, **outcome.summary, **_compare(ctx.inputs["model"], ctx.out)}
    _write_summary(ctx.out, summary)
    if outcome.report is not None:
        (ctx.out / "quantize_report.json").write_text(
            json.dumps(outcome.report, indent=2, sort_keys=True) + "\n")
    if outcome.rows:
        from stages.quantize import search

        search.write(ctx.out, outcome.rows, cfg.accuracy_budget)
    return summary


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    # timings stay out of the file: the output's bytes, and so its digest, must not vary by run
    written = {k: v for k, v in summary.items() if k not in TIMINGS}
    (out / "quantize.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _ptq(ctx: StageContext, work: Path) -> Outcome:
    from stages.quantize import budget, search
    from stages.quantize.ptq import Quantizer

    cfg = ctx.config.quantize
    variants = search.variants(cfg)  # every candidate checked before anything slow runs
    aware = budget.is_set(cfg.accuracy_budget)
    budget.check(cfg.accuracy_budget)
    if len(variants) > 1 and not aware:
        raise RecipeError("quantize.search.candidates: a search picks the fastest candidate "
                          "within quantize.accuracy_budget; set max_accuracy_drop or "
                          "min_agreement or min_sample_cosine.")
    static = any(s["mode"] == "static" for _, s, _ in variants)
    gptq = any(s.get("int4", {}).get("algorithm") == "gptq" for _, s, _ in variants)
    data = _dataset(ctx) if static or gptq or aware else None
    feeds = data.calibration.feeds if data else []
    if static and not feeds:
        raise RecipeError("quantize: static mode needs calibration samples; the dataset's "
                          "calibration split is empty.")
    quantizer = Quantizer(ctx.inputs["model"], feeds, work)
    variants = [(name, quantizer.resolve(_clamped(s, len(feeds), key), key), key)
                for name, s, key in variants]
    if not aware:
        settings = variants[0][1]
        if settings["mode"] == "static":
            ctx.report(f"calibrating on {settings['calibration_samples']} samples "
                       f"({settings['calibration_method']})")
        seconds = quantizer.build(settings, work / "model")
        timing = {"calibration_seconds": round(seconds, 3)} if settings["mode"] == "static" else {}
        if settings["mode"] == "int4":
            from stages.quantize import int4

            timing["int4_figures"] = int4.figures(ctx.inputs["model"], work / "model")
        return Outcome(work / "model", settings, timing)
    return _aware(ctx, quantizer, variants, data)


def _aware(ctx: StageContext, quantizer: Quantizer, variants: list[tuple[str, dict, str]],
           data: Dataset) -> Outcome:
    from stages.quantize import budget, search

    limits = ctx.config.quantize.accuracy_budget
    held = budget.heldout(data.evaluation, ctx.inputs["model"], limits, ctx.config.dataset.kind)
    report: dict[str, Any] = {"budget": budget.limits(limits),
                              "evaluation_samples": len(held.feeds)}
    if len(variants) > 1:
        ctx.report(f"searching {len(variants)} configurations")
        found = search.run(quantizer, variants, held, limits, data.calibration.feeds)
        winner, first, rows, latency = found.winner, found.quantized, found.rows, found.latency
        # which candidate won depends on timing; the table with it is in search.json
        report |= {"candidates": [r["name"] for r in rows[1:]], **found.repaired}
    else:
        name, settings, _ = variants[0]
        ctx.report(f"quantizing and scoring on {len(held.feeds)} held-out samples")
        first = winner = budget.evaluate(quantizer, name, settings, held, limits)
        if not first.within:
            ctx.report("over budget: ranking node sensitivity")
            winner, repaired = budget.repair(quantizer, first, held, limits,
                                             data.calibration.feeds)
            report |= repaired
        rows, latency = [], _latency(held, first, winner, limits)
    report |= {"quantized": first.row(), "shipped": winner.row()}
    summary = {"budget": budget.limits(limits), "scores": winner.scores,
               "float_nodes": winner.float_nodes, "size_all_quantized": first.size,
               "latency_ms": latency}
    return Outcome(winner.directory, winner.settings, summary, report, rows)


def _latency(held: Any, first: Any, winner: Any, limits: Any) -> dict[str, float]:
    """p50 of FP32, the fully quantized model and the shipped one, and what float nodes cost."""
    from stages.quantize import budget

    models = [held.fp32, first.directory] + ([winner.directory] if winner is not first else [])
    fp32, quantized, *shipped = budget.latency_p50(models, held.feeds[0], limits)
    shipped = shipped[0] if shipped else quantized
    return {"fp32_p50": fp32, "quantized_p50": quantized, "shipped_p50": shipped,
            "float_nodes_cost": round(shipped - quantized, 4)}


def _dataset(ctx: StageContext) -> Dataset:
    from stages.common.datasets.splits import load_dataset

    return load_dataset(ctx.config.dataset, ctx.config.model.inputs)


def _clamped(settings: dict[str, Any], available: int, key: str) -> dict[str, Any]:
    wanted = settings.get("calibration_samples")
    if wanted is None or wanted <= available:
        return settings
    log.warning("%s: calibrating on %d samples, the dataset's calibration split holds no "
                "more (calibration.samples=%d)", key, available, wanted)
    return {**settings, "calibration_samples": available}


def _compare(source: Path, out: Path) -> dict[str, Any]:
    """Size and node counts before/after, and how many quantization ops the output holds."""
    before, after = model_stats(source), model_stats(out)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "QLinear*": 0, "integer": 0}
    for op, count in after["ops"].items():
        name = op.rsplit(":", 1)[-1]
        if name in ("QuantizeLinear", "DequantizeLinear"):
            counts[name] += count
        elif name.startswith("QLinear"):
            counts["QLinear*"] += count
        elif "Integer" in name or name.startswith(("DynamicQuantize", "QGemm", "QAttention")):
            counts["integer"] += count
    return {"size_before": before["size"], "size_after": after["size"],
            "size_ratio": round(after["size"] / before["size"], 4),
            "nodes_before": before["nodes"], "nodes_after": after["nodes"],
            "quant_ops": counts}
