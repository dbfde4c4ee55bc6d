"""Run FP32 and each auto candidate the way validate runs a bundle: on the target's runtime.

The candidates' outputs and latencies come from the target's onnxruntime and execution
providers (``stages.common.runtime_env``, ``stages.common.ort_worker``, the code validate
uses); the FP32 outputs they are compared with come from the host's CPU EP, as in validate.
Latency is measured in rounds, each timing every model once in a rotated order, and a model's
figure is the median of its rounds: on a shared machine a burst of load then slows one round
of every model instead of one model's only measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from stages.common import metrics
from stages.common.onnx_files import model_file

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from pipeline.registry import StageContext
    from stages.common.datasets.splits import Feed

CPU = "CPUExecutionProvider"
FP32 = "fp32"


@dataclass
class Runs:
    outputs: dict[str, Any]  # model -> every sample's first output (metrics.first_outputs)
    p50_ms: dict[str, float]  # model -> median over rounds of its batch-1 p50
    rounds_ms: dict[str, list[float]]
    ran_on: str  # the EP that ran the candidates
    on_target_ep: bool  # the target's first-choice EP ran them (latency means something)
    runtime: str  # "onnxruntime==1.32.0"


def run_models(ctx: StageContext, models: dict[str, Path], feeds: list[Feed]) -> Runs:
    """Outputs on ``feeds`` and latency rounds of ``models`` (FP32 under ``"fp32"``) on the
    target of ``ctx``, timed as ``ctx.params.auto`` says."""
    from stages.common.runtime_env import TargetRuntime

    target, name, params, report = ctx.config.target, ctx.target, ctx.params.auto, ctx.report
    runtime = TargetRuntime.prepare(target, name, {"isolated_runtime": True}, report)
    providers = OmegaConf.to_container(target.execution_providers, resolve=True)
    session = target.get("session")
    base = {"providers": providers, "warmup_runs": params.warmup_runs,
            "latency_runs": params.latency_runs,
            "session": {} if session is None else OmegaConf.to_container(session, resolve=True)}
    paths = {model: str(model_file(directory).resolve()) for model, directory in models.items()}
    order, rounds = list(paths), {model: [] for model in paths}
    outputs: dict[str, np.ndarray] = {}
    for index in range(max(params.rounds, 1)):
        report(f"timing round {index + 1}/{params.rounds} of {len(order)} models")
        shift = index % len(order)
        jobs = [{"role": model, "path": paths[model], "latency": True,
                 "outputs": "all" if index == 0 else "none"}
                for model in order[shift:] + order[:shift]]
        result, arrays, _ = runtime.run(base | {"jobs": jobs}, feeds[:1] if index else feeds,
                                        name)
        for model in order:
            rounds[model].append(result["jobs"][model]["latency"]["p50"])
        if index == 0:
            outputs = {model: metrics.first_outputs(arrays, model) for model in order}
            ran_on = result["jobs"][order[-1]]["ran_on"][0]
    if runtime.python is not None or ran_on != CPU:
        outputs[FP32] = _host_reference(paths[FP32], feeds)
    return Runs(outputs, {m: statistics.median(r) for m, r in rounds.items()}, rounds, ran_on,
                ran_on == providers[0]["name"], runtime.info["pinned"])


def _host_reference(path: str, feeds: list[Feed]) -> Any:
    from stages.common import ort_worker

    request = {"providers": [{"name": CPU, "options": {}}],
               "jobs": [{"role": FP32, "path": path, "outputs": "all"}]}
    return metrics.first_outputs(ort_worker.run_request(request, feeds)[1], FP32)
