"""The gates validate and quantize.mode=auto hold a model to: which metric each checks, and how."""

from __future__ import annotations

# gate name -> (metric it checks, True when the measured value must stay at or below it)
GATES = {
    "max_accuracy_drop": ("accuracy_drop", True),
    "min_top1_agreement": ("top1_agreement", False),
    "min_cosine": ("mean_cosine", False),
    "min_sample_cosine": ("min_sample_cosine", False),
    "min_speedup": ("speedup", False),
    "max_abs_diff": ("max_abs_diff", True),
    # language-model logits (batch, sequence, vocabulary) only: mean KL(FP32 || candidate)
    "max_kl_divergence": ("kl_divergence", True),
    "max_cpu_fallback_nodes": ("cpu_fallback_nodes", True),
}


def passes(measured: float, threshold: float, at_most: bool) -> bool:
    """Whether a gate holds; written as "passes when" so that a NaN measurement fails."""
    return bool(measured <= threshold) if at_most else bool(measured >= threshold)
