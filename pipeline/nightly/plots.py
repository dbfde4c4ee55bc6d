"""Plots over time of one recipe x bundle: fidelity, latency, size; inline PNG for the report.

matplotlib's object API (``Figure``, no pyplot): no display, no global figure state, and the
Agg canvas is what ``savefig`` uses. Failed nights are drawn in red, so a dip reads at a glance.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.nightly.history import Case

GREEN, RED = "#2e7d32", "#c62828"


def history_png(cases: list[Case], title: str) -> str:
    """A base64 PNG with three panels over the nights of ``cases`` (oldest first)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.1), dpi=80, layout="constrained")
    fidelity, latency, size = fig.subplots(1, 3)
    fig.suptitle(title, fontsize=11)
    nights = [_label(case.night) for case in cases]
    colors = [GREEN if case.green else RED for case in cases]
    _series(fidelity, colors, cases, ("top1_agreement", "mean_cosine"))
    fidelity.set_title("fidelity vs FP32", fontsize=10)
    _latency(latency, colors, cases)
    _series(size, colors, cases, ("model_bytes", "bundle_bytes"), scale=1 / 1024)
    for ax in (fidelity, latency, size):
        _axes(ax, nights)
    size.set_title("size (KiB)", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(ax: Any, colors: list[str], cases: list[Case], metrics: tuple[str, ...],
            scale: float = 1.0) -> None:
    x = list(range(len(cases)))
    for metric in metrics:
        values = [_number(case.metrics.get(metric), scale) for case in cases]
        ax.plot(x, values, marker="", linewidth=1.2, label=metric)
        ax.scatter(x, values, c=colors, s=22, zorder=3)


def _latency(ax: Any, colors: list[str], cases: list[Case]) -> None:
    x = list(range(len(cases)))
    median = [_number(case.metrics.get("latency_median_ms")) for case in cases]
    spread = [_number(case.metrics.get("latency_spread_ms")) or 0.0 for case in cases]
    ax.errorbar(x, median, yerr=spread, linewidth=1.2, capsize=3, label="nightly timing median")
    ax.scatter(x, median, c=colors, s=22, zorder=3)
    p50 = [_number(case.metrics.get("latency_candidate_p50_ms")) for case in cases]
    ax.plot(x, p50, linestyle="--", linewidth=1, label="validate p50")
    ax.set_title("latency, batch 1 (ms)", fontsize=10)


def _axes(ax: Any, nights: list[str]) -> None:
    ax.set_xticks(list(range(len(nights))), nights, rotation=30, fontsize=7, ha="right")
    ax.tick_params(axis="y", labelsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)  # 0.99996, not 1e-5 + 9.9999e-1
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if len(nights) == 1:
        ax.set_xlim(-1, 1)


def _number(value: Any, scale: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")  # a gap in the line: that night did not measure it
    return value * scale


def _label(night: str | None) -> str:
    """``20261201T221112Z`` -> ``12-01 22:11``."""
    if not night or len(night) < 13:
        return night or "?"
    return f"{night[4:6]}-{night[6:8]} {night[9:11]}:{night[11:13]}{night[16:]}"
