"""auto.md: every candidate of ``quantize.mode: auto`` beside FP32, and why it won or lost."""

from __future__ import annotations

from typing import Any


def markdown(summary: dict[str, Any]) -> str:
    """One table row per candidate, FP32 first for scale, then the verdict in words."""
    choice, latency = summary["quantization"], summary["latency_ms"]
    # language models' rows carry the next-token KL divergence too
    kl = any("kl_divergence" in row for row in summary["candidates"])
    lines = [f"# quantize.mode: auto\n\nTimed on {choice['timed_on']} ({choice['runtime']}); "
             "latency is the median over interleaved rounds of batch-1 runs.\n",
             "| candidate | min cosine | mean cosine | top-1 agreement " + (
                 "| KL divergence " if kl else "") + "| accuracy drop "
             "| p50 (ms) | speedup | size (KiB) | verdict |",
             "|---|---:|---:|---:|" + ("---:|" if kl else "") + "---:|---:|---:|---:|---|",
             f"| FP32 | 1 | 1 | 1 | {'0 | ' if kl else ''}| {latency['fp32_p50']:.4g} | 1.00x "
             f"| {summary['size_fp32'] / 1024:.1f} | {_fp32_verdict(choice)} |"]
    for row in summary["candidates"]:
        verdict = ("**chosen**" if row["name"] == choice["chosen"] else
                   "qualified, not chosen" if row["qualifies"] else
                   "lost: " + "; ".join(row["failed"]))
        if row["p50_ms"] is None:  # did not build
            lines.append(f"| {row['name']} | | | | {'| ' if kl else ''}| | | | {verdict} |")
            continue
        divergence = f"| {_fmt(row.get('kl_divergence'), '.4g')} " if kl else ""
        lines.append(f"| {row['name']} | {row['min_sample_cosine']:.4f} "
                     f"| {row['mean_cosine']:.4f} | {row['top1_agreement']:.4f} {divergence}"
                     f"| {_fmt(row['accuracy_drop'])} | {row['p50_ms']:.4g} "
                     f"| {row['speedup']:.2f}x | {row['size_bytes'] / 1024:.1f} | {verdict} |")
    if choice["note"]:
        lines.append(f"\nNote: {choice['note']}.")
    if choice["fallback_reason"]:
        lines.append(f"\nShipped FP32: {choice['fallback_reason']}.")
    return "\n".join(lines) + "\n"


def _fp32_verdict(choice: dict[str, Any]) -> str:
    return "**shipped** (fallback)" if choice["chosen"] == "fp32" else "reference"


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)
