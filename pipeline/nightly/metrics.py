"""A case's metrics, read by name from the summaries of the stages its bundle depends on.

The engine names no stage kind (see ``pipeline.nightly``): whichever stage of the bundle's chain
reports ``top1_agreement``, ``latency_ms`` or ``size_bytes`` provides it, later stages winning.
The rest comes from the executor: each stage's status and time, the cache hit rate, the tool
versions that entered the keys, and the bundle's size on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.hashing import digest_json

if TYPE_CHECKING:
    from pipeline.executor import NodeResult
    from pipeline.plan import Plan

# summary keys copied as they are
SCALARS = ("top1_agreement", "mean_cosine", "max_abs_diff", "accuracy_fp32",
           "accuracy_candidate", "accuracy_drop", "cpu_fallback_nodes", "validated_on_target_ep",
           "not_validated_reason", "mode")


def case_metrics(plan: Plan, results: dict[str, NodeResult], name: str) -> dict[str, Any]:
    """Everything the history keeps about the bundle of publishing node ``name`` tonight."""
    nodes = plan.chain(name)
    merged: dict[str, Any] = {}
    for node in nodes:
        entry = results[node].entry
        merged |= entry.meta["summary"] if entry is not None else {}
    metrics = {key: merged[key] for key in SCALARS if key in merged}
    metrics |= _latency(merged.get("latency_ms")) | _sizes(merged.get("size_bytes"))
    metrics["gates"] = merged.get("gates") or []
    built = [results[n] for n in nodes if results[n].status in ("ran", "cached")]
    metrics["cache_hit_rate"] = (sum(r.status == "cached" for r in built) / len(built)
                                 if built else None)
    metrics["stages"] = {n: {"status": results[n].status, "seconds": round(results[n].seconds, 3),
                             "key": results[n].key} for n in nodes}
    metrics["tools"] = {tool: version for r in built if r.entry is not None
                        for tool, version in r.entry.meta["payload"]["tools"].items()}
    metrics["recipe_digest"] = recipe_digest(plan)
    package = results[name].entry
    if package is not None:
        metrics["bundle_key"] = package.key
        metrics["bundle_bytes"] = sum((package.out / f).stat().st_size
                                      for f in package.meta["files"])
    return metrics


def recipe_digest(plan: Plan) -> str:
    """Digest of the resolved recipe without its ``run`` section (where and how, not what)."""
    return digest_json({k: v for k, v in plan.resolved.items() if k != "run"})


def _latency(latency: Any) -> dict[str, Any]:
    if not isinstance(latency, dict):
        return {}
    found = {}
    for role in ("candidate", "reference"):
        for quantile in ("p50", "p90"):
            value = (latency.get(role) or {}).get(quantile)
            if value is not None:
                found[f"latency_{role}_{quantile}_ms"] = value
    if latency.get("on"):
        found["latency_measured_on"] = latency["on"]
    return found


def _sizes(size: Any) -> dict[str, Any]:
    if isinstance(size, dict):
        return {k: v for k, v in (("model_bytes", size.get("candidate")),
                                  ("reference_bytes", size.get("reference"))) if v is not None}
    return {"model_bytes": size} if isinstance(size, int | float) else {}
