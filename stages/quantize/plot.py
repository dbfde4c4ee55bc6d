"""The search report as a markdown table and a scatter plot (accuracy vs latency, size as area).

matplotlib draws with its Agg backend (no display); the figure is closed after saving so a long
run of stages does not pile up figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def _score_name(budget: Any) -> str:
    """The score the budget limits: accuracy when it caps the drop, else agreement."""
    return "accuracy" if budget.max_accuracy_drop is not None else "agreement"


def _score(row: dict[str, Any], name: str) -> float:
    return row["accuracy_candidate"] if name == "accuracy" else row["agreement"]


def markdown(rows: list[dict[str, Any]], reference: dict[str, Any], limits: str) -> str:
    """One table row per candidate, the chosen one marked, FP32 first for scale."""
    lines = [f"# Quantization search\n\nBudget: {limits}. The fastest candidate within it wins; "
             "latency is the median of batch-1 CPU runs on the build machine.\n",
             "| candidate | accuracy | accuracy drop | agreement | latency p50 (ms) | size (KiB) "
             "| float nodes | within budget | chosen |",
             "|---|---:|---:|---:|---:|---:|---|:---:|:---:|"]
    lines.append(f"| FP32 reference | {_fmt(reference['accuracy'])} | | 1.0000 "
                 f"| {reference['latency_p50_ms']:.4g} | {reference['size_bytes'] / 1024:.1f} "
                 "| | | |")
    for row in rows:
        floats = ", ".join(row["float_nodes"]) or "-"
        lines.append(
            f"| {row['name']} | {_fmt(row['accuracy_candidate'])} "
            f"| {_fmt(row['accuracy_drop'])} | {row['agreement']:.4f} "
            f"| {row['latency_p50_ms']:.4g} | {row['size_bytes'] / 1024:.1f} | {floats} "
            f"| {'yes' if row['within_budget'] else 'no'} | {'**yes**' if row['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def scatter(path: Path, rows: list[dict[str, Any]], reference: dict[str, Any],
            budget: Any) -> None:
    """Accuracy (or agreement) against latency; marker area follows model size.

    Points carry numbers and a key beside the axes names them; points that (nearly) coincide
    share one label, since candidates often measure alike and full labels would overprint.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    name = _score_name(budget)
    fp32 = reference["accuracy"] if name == "accuracy" else 1.0
    points = [("FP32", reference["latency_p50_ms"], fp32, reference["size_bytes"], "lightgray")]
    points += [(str(i), r["latency_p50_ms"], _score(r, name), r["size_bytes"],
                "tab:green" if r["within_budget"] else "tab:red") for i, r in enumerate(rows, 1)]
    biggest = max(p[3] for p in points)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    points.sort(key=lambda p: p[1])
    for _, x, y, size, color in points:
        ax.scatter([x], [y], s=40 + 900 * size / biggest, c=color, alpha=0.55, zorder=3,
                   edgecolors="black", linewidths=0.8)
    chosen = next(r for r in rows if r["chosen"])
    ax.scatter([chosen["latency_p50_ms"]], [_score(chosen, name)], marker="*", s=260, c="gold",
               edgecolors="black", zorder=4)
    for n, (tags, x, y) in enumerate(_groups(points)):
        # neighbouring groups alternate above and below their points
        ax.annotate(",".join(tags), (x, y), textcoords="offset points", fontsize=9,
                    xytext=(9, 8) if n % 2 == 0 else (9, -18))
    floor = _floor(budget, name, fp32)
    if floor is not None:
        ax.axhline(floor, color="tab:red", linestyle="--", linewidth=1)
    _decorate(fig, ax, rows, name)
    # no timestamp in the PNG's metadata: same numbers, same bytes
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _groups(points: list[tuple]) -> list[tuple[list[str], float, float]]:
    """Tags of points (sorted by latency) that chain within 5% of the axis spans of each other,
    labelled once at the group's first point."""
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[tuple[list[str], float, float]] = []
    last: list[tuple[float, float]] = []  # the latest point of each group
    for tag, x, y, *_ in points:
        for n, (lx, ly) in enumerate(last):
            if abs(x - lx) < 0.05 * span_x and abs(y - ly) < 0.05 * span_y:
                groups[n][0].append(tag)
                last[n] = (x, y)
                break
        else:
            groups.append(([tag], x, y))
            last.append((x, y))
    return groups


def _decorate(fig: Any, ax: Any, rows: list[dict[str, Any]], name: str) -> None:
    from matplotlib.lines import Line2D

    key = [f"{i:>2}. {r['name']}" + ("  <- chosen" if r["chosen"] else "")
           for i, r in enumerate(rows, 1)]
    fig.text(0.69, 0.93, "\n".join(["candidates", *key]), va="top", fontsize=8,
             family="monospace")
    fig.legend(handles=[
        Line2D([], [], marker="o", ls="", color="tab:green", label="within budget"),
        Line2D([], [], marker="o", ls="", color="tab:red", label="over budget"),
        Line2D([], [], marker="o", ls="", color="lightgray", mec="black", label="FP32"),
        Line2D([], [], marker="*", ls="", color="gold", mec="black", ms=12, label="chosen"),
        Line2D([], [], ls="--", color="tab:red", label="budget limit")],
        loc="lower left", bbox_to_anchor=(0.69, 0.1), fontsize=8, frameon=False)
    ax.set_xlabel("latency p50, batch 1, CPU (ms)")
    ax.set_ylabel(f"top-1 {name}" + (" with FP32" if name == "agreement" else ""))
    ax.set_title("Quantization candidates (marker area = model size)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.1, top=0.93)


def _floor(budget: Any, name: str, fp32: float) -> float | None:
    if name == "accuracy" and budget.max_accuracy_drop is not None:
        return fp32 - budget.max_accuracy_drop
    if name == "agreement" and budget.min_agreement is not None:
        return budget.min_agreement
    return None
