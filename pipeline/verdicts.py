"""One line per bundle for the end of a run: what shipped, how it compares with FP32, verdict.

The engine names no stage kind, so the figures are read by their metric names from the
summaries of the stages each bundle depends on (a validating kind reports ``mean_cosine``,
``latency_ms``... ; a quantizing kind ``mode`` and, when it shipped FP32 after all,
``quantization.fallback_reason``): a team's own kinds can fill them in too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from pipeline.executor import NodeResult
    from pipeline.plan import Plan

COLUMNS = ("bundle", "precision", "size/FP32", "p50 ms (FP32) on", "cos min/mean", "accuracy",
           "verdict")


def bundle_rows(plan: Plan, results: dict[str, NodeResult],
                names: dict[str, str]) -> list[dict[str, Any]]:
    """A row per publishing node (``names``: node -> bundle folder)."""
    return [_row(plan, results, node, bundle) for node, bundle in names.items()]


def _row(plan: Plan, results: dict[str, NodeResult], name: str, bundle: str) -> dict[str, Any]:
    chain = plan.chain(name)
    metrics: dict[str, Any] = {}
    for node in chain:  # later stages (validation) win over earlier ones
        entry = results[node].entry
        metrics |= entry.meta["summary"] if entry is not None else {}
    failed = [f"{n}: {results[n].error}" for n in chain if results[n].status == "failed"]
    skipped = [n for n in chain if results[n].status == "skipped"]
    verdict = ("published" if results[name].status in ("ran", "cached")
               else f"FAILED {failed[0]}" if failed else _not_built(results, skipped[0]))
    if verdict == "published" and (metrics.get("quantization") or {}).get("fallback_reason"):
        verdict = "published as FP32: no quantized candidate qualified"
    latency, size = metrics.get("latency_ms") or {}, metrics.get("size_bytes") or {}
    return {"bundle": bundle, "precision": metrics.get("mode"),
            "size": size.get("candidate"), "size_fp32": size.get("reference"),
            "p50_ms": (latency.get("candidate") or {}).get("p50"),
            "p50_ms_fp32": (latency.get("reference") or {}).get("p50"),
            "measured_on": latency.get("on"),
            "min_sample_cosine": metrics.get("min_sample_cosine"),
            "mean_cosine": metrics.get("mean_cosine"),
            "accuracy": metrics.get("accuracy_candidate"),
            "accuracy_fp32": metrics.get("accuracy_fp32"), "verdict": verdict}


def _not_built(results: dict[str, NodeResult], skipped: str) -> str:
    note = results[skipped].note  # why it was skipped, when it says (no device for it)
    return f"not built ({skipped} skipped{': ' + note if note else ''})"


def table(rows: list[dict[str, Any]], title: str) -> Table:
    view = Table(title=title)
    for column in COLUMNS:
        view.add_column(column)
    for row in rows:
        view.add_row(row["bundle"], str(row["precision"] or "-"),
                     _ratio(row["size"], row["size_fp32"], "{:.2f}x"),
                     _p50(row), _cosines(row), _accuracy(row), row["verdict"])
    return view


def _ratio(value: float | None, reference: float | None, form: str) -> str:
    return form.format(value / reference) if value and reference else "-"


def _p50(row: dict[str, Any]) -> str:
    if row["p50_ms"] is None or row["p50_ms_fp32"] is None:
        return "-"
    on = str(row["measured_on"] or "").removesuffix("ExecutionProvider")
    return f"{row['p50_ms']:.1f} ({row['p50_ms_fp32']:.1f}) {on}"


def _cosines(row: dict[str, Any]) -> str:
    if row["mean_cosine"] is None:
        return "-"
    return f"{row['min_sample_cosine']:.4f}/{row['mean_cosine']:.4f}"


def _accuracy(row: dict[str, Any]) -> str:
    if row["accuracy"] is None:
        return "-"
    return f"{row['accuracy']:.3f} ({row['accuracy_fp32']:.3f})"
