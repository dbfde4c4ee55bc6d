"""Compare a target's candidate model with the FP32 reference, time both, and apply the gates.

Runs on the target's execution providers that this machine has, with CPU as last resort, and
says plainly whether the target's first-choice provider really ran: numbers measured on CPU for
a TensorRT target are a parity check, not a device benchmark.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.errors import GateError, RecipeError
from stages.base import StageContext, stage
from stages.support.onnx_files import model_file, model_size

if TYPE_CHECKING:
    from pathlib import Path

CPU = "CPUExecutionProvider"
# gate name -> (metric it checks, True when the measured value must stay at or below it)
GATES = {
    "max_accuracy_drop": ("accuracy_drop", True),
    "min_top1_agreement": ("top1_agreement", False),
    "min_cosine": ("mean_cosine", False),
    "max_abs_diff": ("max_abs_diff", True),
}
@stage("validate", inputs={"model": "quantize", "reference": "optimize"},
       reads=("validate", "dataset", "model.inputs", "target"), per_target=True,
       tools=("onnxruntime", "numpy", "scikit-learn"), sources=("dataset.path",),
       exclusive=True)
def validate(ctx: StageContext) -> dict[str, Any]:
    """Measure agreement, accuracy, latency and size of the candidate; raise if a gate fails."""
    from stages.support import metrics
    from stages.support.datasets import load_dataset

    cfg = ctx.config.validate
    split = load_dataset(ctx.config.dataset, ctx.config.model.inputs).evaluation
    if split.labels is None and cfg.gates.max_accuracy_drop is not None:
        raise RecipeError(
            f"target '{ctx.target}': validate.gates.max_accuracy_drop needs labels, but dataset "
            f"kind '{ctx.config.dataset.kind}' has none; remove the gate or use a labelled "
            "dataset (digits, or npz with a 'labels' array)."
        )
    feeds = split.feeds[:max(cfg.samples, 1)]
    labels = None if split.labels is None else split.labels[:len(feeds)]
    report = _providers(ctx.config.target, ctx.target)
    candidate = _session(model_file(ctx.inputs["model"]), report["providers"])
    reference = _session(model_file(ctx.inputs["reference"]), report["providers"])
    report["ran_on"] = candidate.get_providers()
    report["validated_on_target_ep"] = report["ran_on"][0] == report["requested_providers"][0]
    ctx.report(f"comparing on {len(feeds)} samples ({report['ran_on'][0]})")
    # an accelerator EP may run the reference in reduced precision (TensorRT fp16), so the
    # FP32 outputs everything is compared against always come from CPU
    exact = reference if reference.get_providers() == [CPU] else _session(
        model_file(ctx.inputs["reference"]), [{"name": CPU, "options": {}}])
    cand_out, ref_out = metrics.first_outputs(candidate, feeds), metrics.first_outputs(exact, feeds)
    report |= {"samples": len(feeds), "output": candidate.get_outputs()[0].name,
               "reference_outputs_on": CPU}
    report |= metrics.agreement(cand_out, ref_out) | metrics.accuracy(cand_out, ref_out, labels)
    ctx.report("timing candidate and reference")
    report["latency_ms"] = metrics.latencies(candidate, reference, feeds[0], cfg)
    report["size_bytes"] = {"candidate": model_size(ctx.inputs["model"]),
                            "reference": model_size(ctx.inputs["reference"])}
    report["gates"] = _check_gates(cfg.gates, report, ctx.target)
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _providers(target: Any, name: str | None) -> dict[str, Any]:
    """The target's providers this machine has, in the target's order, CPU always last resort."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    requested = [ep.name for ep in target.execution_providers]
    chosen = [(ep.name, OmegaConf.to_container(ep.options, resolve=True))
              for ep in target.execution_providers if ep.name in available]
    if CPU not in [ep for ep, _ in chosen]:
        chosen.append((CPU, {}))
    return {
        "target": name,
        "device": target.device,
        "precision": target.precision,
        "requested_providers": requested,
        "available_providers": available,
        "unavailable": [ep for ep in requested if ep not in available],
        "providers": [{"name": ep, "options": options} for ep, options in chosen],
    }


def _session(path: Path, providers: list[dict[str, Any]]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=[p["name"] for p in providers],
                                provider_options=[p["options"] for p in providers])


def _check_gates(gates: Any, report: dict[str, Any], target: str | None) -> list[dict[str, Any]]:
    """Evaluate every gate that is set, so one failed build reports all its problems at once."""
    results = []
    for gate, (metric, is_max) in GATES.items():
        threshold = gates[gate]
        if threshold is None:
            continue
        measured = report[metric]
        # written as "passes when" so that a NaN measurement fails the gate
        passed = bool(measured <= threshold) if is_max else bool(measured >= threshold)
        results.append({"gate": gate, "threshold": threshold, "measured": measured,
                        "passed": passed})
    failed = [r for r in results if not r["passed"]]
    if failed:
        lines = "; ".join(
            f"validate.gates.{r['gate']}: measured {r['measured']:.6g} "
            f"{'>' if GATES[r['gate']][1] else '<'} threshold {r['threshold']:.6g}"
            for r in failed)
        raise GateError(f"target '{target}' failed {len(failed)} quality gate(s) "
                        f"(ran on {report['ran_on'][0]}): {lines}.")
    return results
