"""Compare a target's candidate model with the FP32 reference on the target's own runtime.

Each target's checks run with its onnxruntime distribution: in this process when that is the
host's, else in an isolated environment built once (``stages/common/runtime_env.py``) and
driven through ``stages/common/ort_worker.py`` in a subprocess. The report says which
EP really ran, where every node went and, plainly, when the target's first-choice EP could not
run here: numbers measured on CPU for a TensorRT target are a parity check, not a device
benchmark. The FP32 outputs everything is compared with always come from the host's CPU EP.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pipeline.errors import GateError, RecipeError
from pipeline.registry import StageContext, stage
from pipeline.schema import DATASET_SOURCES
from stages.common import fused_graphs
from stages.common.datasets.early import check_dataset
from stages.common.gates import GATES, passes
from stages.common.onnx_files import model_file, model_size, model_stats
from stages.validate.params import ValidateParams

if TYPE_CHECKING:
    import numpy as np

    from stages.common.runtime_env import TargetRuntime

log = logging.getLogger(__name__)
CPU = "CPUExecutionProvider"
DEFAULT_MIN_SPEEDUP = 1.0
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits")


@stage("validate", params=ValidateParams, section=True, inputs=("candidate", "reference"),
       reads=("dataset", "model.inputs", "target"), per_target=True,
       tools=("onnxruntime", "numpy", "scikit-learn"),
       sources=DATASET_SOURCES, check=check_dataset,
       exclusive=True, on_target=True, version=3)
def validate(ctx: StageContext) -> dict[str, Any]:
    """Measure agreement, accuracy, latency, placement and size; raise if a gate fails."""
    from stages.common import metrics
    from stages.common.datasets.splits import load_dataset
    from stages.common.runtime_env import TargetRuntime

    ctx, graph = fused_graphs.resolve(ctx, "candidate", "reference")
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
    report = _target_section(ctx.config.target, ctx.target)
    runtime = TargetRuntime.prepare(ctx.config.target, ctx.target, ctx.config.validate,
                                    ctx.report)
    start = time.perf_counter()
    ctx.report(f"comparing on {len(feeds)} samples ({runtime.info['pinned']})")
    measured = _measure(ctx, runtime, report, feeds)
    cand, ref = (metrics.first_outputs(measured, role) for role in ("candidate", "reference"))
    _check_finite(measured, cand, ref, split.ids, ctx.target)
    report |= {"evaluation_samples": len(feeds)}
    report |= metrics.agreement(cand, ref, metrics.token_mask(feeds, cand))
    report |= metrics.accuracy(cand, ref, labels)
    report["size_bytes"] = {"candidate": model_size(ctx.inputs["candidate"]),
                            "reference": model_size(ctx.inputs["reference"])}
    if not report["validated_on_target_ep"]:
        on = "cpu" if report["ran_on"][0] == CPU else report["ran_on"][0]
        report["static_checks"] = [f"{on}_agreement"] + ([] if labels is None else
                                                         [f"{on}_accuracy"])
    report["samples"] = _samples(ctx, report, feeds, measured)
    report["seconds"] = {"env_setup": runtime.info["env_setup_seconds"],
                         "validation": round(time.perf_counter() - start, 3)}
    report["gates"] = _check_gates(_gates(cfg.gates, report, ctx.inputs["candidate"]), report,
                                   ctx.target)
    report |= graph
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _check_finite(measured: dict[str, np.ndarray], cand: Any, ref: Any, ids: tuple[str, ...],
                  target: str | None) -> None:
    """A candidate with a NaN or infinite output fails, whatever the gates: every metric of
    it would be NaN, and NaN passes no comparison it should fail."""
    from stages.common.metrics import nonfinite

    bad = nonfinite(cand)
    others = sorted({key.split("|")[-1] for key, value in measured.items()
                     if key.startswith("candidate|") and not key.startswith("candidate|first")
                     and nonfinite([value])})
    if not bad and not others:
        return
    where = f"output(s) {others} of the samples kept for the bundle's self-test"
    if bad:
        fp32 = ("not finite there either" if nonfinite([ref[bad[0]]]) else "finite there")
        where = (f"its first output on {len(bad)} of {len(cand)} evaluation samples (first: "
                 f"sample {bad[0]}, {ids[bad[0]]}; the FP32 reference is {fp32})")
    raise GateError(f"target '{target}': the candidate's outputs hold NaN or infinite values: "
                    f"{where}. A model whose outputs overflow is never published; keep the "
                    "offending nodes in float (quantize.nodes_to_exclude) or check the model.")


def _target_section(target: Any, name: str | None) -> dict[str, Any]:
    providers = [{"name": ep.name, "options": OmegaConf.to_container(ep.options, resolve=True)}
                 for ep in target.execution_providers]
    return {"target": name, "device": target.device, "precision": target.precision,
            "requested_providers": [p["name"] for p in providers], "providers": providers}


def _measure(ctx: StageContext, runtime: TargetRuntime, report: dict[str, Any],
             feeds: list[Any]) -> dict[str, np.ndarray]:
    """Candidate and reference on the target's runtime; FP32 truth from the host's CPU EP."""
    from stages.common import metrics, runtime_env
    from stages.common import ort_worker as validate_worker

    cfg = ctx.config.validate
    keep = _keep(cfg, feeds)
    candidate, reference = (str(model_file(ctx.inputs[slot]).resolve())
                            for slot in ("candidate", "reference"))
    session = _session_settings(ctx.config.target)
    request = {"providers": report["providers"], "warmup_runs": cfg.warmup_runs,
               "latency_runs": cfg.latency_runs, "session": session,
               "disable_cpu_fallback": _forbids_fallback(cfg, session),
               "jobs": [{"role": "candidate", "path": candidate, "outputs": "all", "keep": keep,
                         "latency": True, "placement": "auto"},
                        {"role": "reference", "path": reference, "latency": True,
                         "outputs": "none" if runtime.python else "all"}]}
    result, arrays, stderr = runtime.run(request, feeds, ctx.target)
    _describe_run(report, runtime, result, stderr)
    _placement_verdict(report, ctx.target)
    jobs = result["jobs"]
    report["latency_ms"] = {"candidate": jobs["candidate"]["latency"],
                            "reference": jobs["reference"]["latency"], "batch": 1,
                            "runs": cfg.latency_runs, "warmup_runs": cfg.warmup_runs,
                            "on": report["ran_on"][0], "runtime": runtime.info["pinned"]}
    report["latency_ms"]["speedup"] = metrics.speedup(report["latency_ms"])
    report["speedup"] = report["latency_ms"]["speedup"]
    host_cpu = [{"name": CPU, "options": {}}]
    host_jobs = []
    if runtime.python or jobs["reference"]["ran_on"] != [CPU]:
        host_jobs.append({"role": "reference", "path": reference, "outputs": "all"})
    if runtime.python or report["ran_on"] != [CPU]:
        host_jobs.append({"role": "cpu_candidate", "path": candidate, "keep": keep})
    if host_jobs:
        arrays |= validate_worker.run_request({"providers": host_cpu, "jobs": host_jobs},
                                              feeds)[1]
    host, version = runtime_env.host_runtime()
    report["reference_outputs_on"] = f"{CPU} ({host}=={version}, this process)"
    return arrays


def _session_settings(target: Any) -> dict[str, Any]:
    session = target.get("session")
    return {} if session is None else OmegaConf.to_container(session, resolve=True)


def _forbids_fallback(cfg: Any, session: dict[str, Any]) -> bool:
    """The recipe forbids CPU fallback, or the target's own session settings do."""
    config = session.get("config") or {}
    return bool(cfg.get("forbid_cpu_fallback")) or \
        str(config.get("session.disable_cpu_ep_fallback", "0")) == "1"


def _keep(cfg: Any, feeds: list[Any]) -> int:
    """How many samples go into samples.npz for the bundle's self-test."""
    return min(max(cfg.get("bundle_samples", 4), 1), len(feeds))


def _describe_run(report: dict[str, Any], runtime: TargetRuntime, result: dict[str, Any],
                  stderr: str) -> None:
    """Which providers the runtime has and which really ran; the verdict on the target EP."""
    candidate = result["jobs"]["candidate"]
    first = report["requested_providers"][0]
    available = result["available_providers"]
    report |= {"runtime": runtime.info, "available_providers": available,
               "unavailable": [ep for ep in report["requested_providers"] if ep not in available],
               "providers": candidate["providers"], "ran_on": candidate["ran_on"],
               "placement": _fallback_only(candidate["placement"], first, candidate["ran_on"]),
               "cpu_fallback_disabled": candidate["cpu_fallback_disabled"]}
    if "refused" in candidate:
        report["refused"] = candidate["refused"]
    reason = None
    if first not in candidate["ran_on"]:
        reason = f"{first} not available: {_why_absent(first, runtime, available, stderr)}"
    elif first != CPU and not (report["placement"] or {}).get("per_ep", {}).get(first):
        reason = (f"{first} was registered but took none of the model's "
                  f"{report['placement']['total']} nodes; they all ran on {CPU}")
    report["validated_on_target_ep"] = reason is None
    report["static_checks"] = []
    report["not_validated_reason"] = reason
    if reason:
        reason += (f"; the numbers below were measured on {candidate['ran_on'][0]} "
                   f"({runtime.info['pinned']})")
        report["not_validated_reason"] = reason


def _fallback_only(placement: dict[str, Any] | None, first: str,
                   ran_on: list[str]) -> dict[str, Any] | None:
    """Placement listing the nodes the first EP left to CPU: none on a CPU target, and not
    measured (None) when the first EP did not run at all."""
    if placement is None:
        return None
    nodes = placement.pop("cpu_nodes")
    return placement | {"cpu_fallback": [] if first == CPU else nodes if first in ran_on
                        else None}


def _why_absent(ep: str, runtime: TargetRuntime, available: list[str], stderr: str) -> str:
    from stages.common.runtime_env import ep_blocker

    if ep in available:
        # onnxruntime logs why it dropped the EP: "...[E:onnxruntime...] ... [OpenVINO] why"
        errors = [re.sub(r"\x1b\[[0-9;]*m", "", line).rsplit("] ", 1)[-1].strip()
                  for line in stderr.splitlines() if "[E:" in line or "EP Error" in line]
        detail = f": {errors[-1][-300:]}" if errors else ""
        return (f"{runtime.info['pinned']} has it, but the session did not register it (its "
                f"provider options were rejected or its device is absent){detail}")
    blocker, fallback = ep_blocker(ep), runtime.info["fallback_reason"]
    if blocker and fallback:
        return f"{blocker} ({runtime.info['requirement']} not installed here)"
    return fallback or blocker or f"{runtime.info['pinned']} does not provide it"


def _placement_verdict(report: dict[str, Any], target: str | None) -> None:
    """Count the nodes the first-choice EP left to CPU; refuse them when CPU fallback is off."""
    first, placement = report["requested_providers"][0], report["placement"]
    report["cpu_fallback_nodes"] = None
    report["warnings"] = []
    refused = report.get("refused")
    if (not report["validated_on_target_ep"] or placement is None) and not refused:
        return
    nodes = placement["cpu_fallback"] or []
    report["cpu_fallback_nodes"] = len(nodes)
    if nodes:
        report["warnings"].append(
            f"{len(nodes)} of {placement['total']} {placement['unit']} fell back from {first} "
            f"to {CPU}: {_names(nodes)}")
        log.warning("target '%s': %s", target, report["warnings"][-1])
    if refused:
        raise GateError(
            f"target '{target}': CPU fallback is forbidden (validate.forbid_cpu_fallback, or "
            f"session.disable_cpu_ep_fallback in the target's session.config), but {first} "
            f"cannot take {len(nodes)} of the model's {placement['total']} {placement['unit']}:"
            f" {_names(nodes) or 'none listed'}. onnxruntime refused the session, as it would "
            f"on the device ({refused.splitlines()[0][:300]}). Change the model or the target, "
            "or allow fallback and cap it with validate.gates.max_cpu_fallback_nodes.")


def _names(nodes: list[dict[str, str]], limit: int = 12) -> str:
    shown = ", ".join(f"{n['name']} ({n['op_type']})" for n in nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _samples(ctx: StageContext, report: dict[str, Any], feeds: list[Any],
             measured: dict[str, np.ndarray]) -> dict[str, Any]:
    """samples.npz: a few inputs with the candidate's outputs on the EP that ran, + tolerances."""
    from stages.common import metrics

    keep = _keep(ctx.config.validate, feeds)
    expected = [_sample(measured, "candidate", i) for i in range(keep)]
    cpu = [_sample(measured, "cpu_candidate", i) for i in range(keep)]
    gap = None
    if not report["validated_on_target_ep"]:
        pairs = zip(*(metrics.first_outputs(measured, role)[:keep]
                      for role in ("candidate", "reference")), strict=True)
        gap = max(float(abs(c.astype("float64") - r).max()) for c, r in pairs)
    tolerances = metrics.tolerances(expected, cpu if any(cpu) else None, gap)
    entry = metrics.write_samples(ctx.out / "samples.npz", feeds[:keep], expected, tolerances)
    return entry | {"outputs_from": f"{report['ran_on'][0]} ({report['runtime']['pinned']})"}


def _sample(measured: dict[str, np.ndarray], role: str, index: int) -> dict[str, np.ndarray]:
    prefix = f"{role}|{index}|"
    return {key[len(prefix):]: value for key, value in measured.items()
            if key.startswith(prefix)}


def _gates(gates: Any, report: dict[str, Any], candidate: Any) -> dict[str, Any]:
    """The recipe's gates, plus min_speedup 1.0 for a quantized model measured on the CPU EP
    of a CPU target: a quantized bundle slower than FP32 is never published silently (ORT's
    INT8 kernels can be slower than FP32: resnet18 S8S8 29.6 ms against 25 ms). An explicit
    ``validate.gates.min_speedup`` (0 = off) replaces it."""
    chosen = OmegaConf.to_container(gates) if OmegaConf.is_config(gates) else dict(gates)
    cpu_target = report["requested_providers"][0] == CPU and report["validated_on_target_ep"]
    if chosen.get("min_speedup") is None and cpu_target and _quantized(candidate):
        chosen["min_speedup"] = DEFAULT_MIN_SPEEDUP
        report["default_gates"] = ["min_speedup"]
    return chosen


def _quantized(directory: Any) -> bool:
    ops = model_stats(directory)["ops"]
    return any(op.rsplit(":", 1)[-1] in QUANTIZED_OPS or "Integer" in op
               or op.rsplit(":", 1)[-1].startswith("QLinear") for op in ops)


def _check_gates(gates: Any, report: dict[str, Any], target: str | None) -> list[dict[str, Any]]:
    """Evaluate every gate that is set, so one failed build reports all its problems at once."""
    results = []
    for gate, (metric, is_max) in GATES.items():
        threshold = gates.get(gate)
        if threshold is None:
            continue
        measured = report.get(metric)
        if measured is None and metric == "kl_divergence":
            raise RecipeError(f"target '{target}': validate.gates.{gate} compares next-token "
                              "distributions, so the model's first output must be logits "
                              "shaped (batch, sequence, vocabulary); remove the gate for "
                              "this model.")
        if measured is None:  # only placement can be unmeasurable: the target EP did not run
            results.append({"gate": gate, "threshold": threshold, "measured": None,
                            "passed": None, "skipped": report["not_validated_reason"]})
            continue
        passed = passes(measured, threshold, is_max)
        results.append({"gate": gate, "threshold": threshold, "measured": measured,
                        "passed": passed})
    failed = [r for r in results if r["passed"] is False]
    if failed:
        raise GateError(f"target '{target}' failed {len(failed)} quality gate(s) "
                        f"(ran on {report['ran_on'][0]}, {report['runtime']['pinned']}): "
                        f"{'; '.join(_gate_line(r, report) for r in failed)}.")
    return results


def _gate_line(result: dict[str, Any], report: dict[str, Any]) -> str:
    line = (f"validate.gates.{result['gate']}: measured {result['measured']:.6g} "
            f"{'>' if GATES[result['gate']][1] else '<'} threshold {result['threshold']:.6g}")
    if result["gate"] in report.get("default_gates", ()):
        line += (" (the default for a quantized model on a CPU target: it is slower than FP32 "
                 "here; quantize.mode: auto would ship FP32, or set "
                 "validate.gates.min_speedup: 0 to publish it anyway)")
    if result["gate"] == "max_cpu_fallback_nodes":
        line += (f" ({report['placement']['unit']} {report['requested_providers'][0]} left to "
                 f"{CPU}: {_names(report['placement']['cpu_fallback'])})")
    return line
