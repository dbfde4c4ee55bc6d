"""Numbers the validate stage reports: agreement, accuracy, and the bundle's self-test samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import RecipeError

if TYPE_CHECKING:
    from pathlib import Path

    from stages.common.datasets.splits import Feed

# samples' outputs: stacked along axis 0, or one array per sample when their shapes differ
Outputs = np.ndarray | list[np.ndarray]
RTOL = 1e-3
# the smallest absolute tolerance, relative to the largest expected output value
ATOL_FLOOR = 1e-4
# stacked outputs of (batch, sequence, vocabulary) models: sample, batch of 1, position, token
SEQUENCE_LOGITS = 4
MASK = "attention_mask"


def first_outputs(arrays: dict[str, np.ndarray], role: str) -> Outputs:
    """Every sample's first output of ``role`` as the worker returns it (``ort_worker``): one
    array, axis 0 indexing the sample, or a list when their shapes differ."""
    if f"{role}|first" in arrays:
        return arrays[f"{role}|first"]
    prefix = f"{role}|first|"
    count = sum(key.startswith(prefix) for key in arrays)
    return [arrays[f"{prefix}{i}"] for i in range(count)]


def nonfinite(outputs: Outputs) -> list[int]:
    """Indices of the samples whose output holds a NaN or an infinite value."""
    return [i for i, sample in enumerate(outputs)
            if np.issubdtype(sample.dtype, np.inexact) and not np.isfinite(sample).all()]


def agreement(candidate: Outputs, reference: Outputs,
              mask: Outputs | None = None) -> dict[str, float]:
    """Top-1 agreement, mean and lowest per-sample cosine, max abs diff (axis 0 = sample).

    Outputs shaped (batch, sequence, vocabulary), a language model's logits, are compared per
    token position: top-1 is the next token's agreement and ``kl_divergence`` the mean over
    positions of KL(softmax FP32 || softmax candidate). ``mask`` (``token_mask``) leaves the
    padding positions out of both.
    """
    if isinstance(candidate, list) or isinstance(reference, list):
        return _agreement_per_sample(list(candidate), list(reference), mask)
    candidate, reference = candidate.astype(np.float64), reference.astype(np.float64)
    flat_c = candidate.reshape(len(candidate), -1)
    flat_r = reference.reshape(len(reference), -1)
    norms = np.linalg.norm(flat_c, axis=1) * np.linalg.norm(flat_r, axis=1)
    # two all-zero outputs agree perfectly; tiny() keeps one zero output from dividing by zero
    dots = np.einsum("ij,ij->i", flat_c, flat_r)
    cosine = np.where(norms == 0, np.all(flat_c == flat_r, axis=1), dots / np.maximum(
        norms, np.finfo(np.float64).tiny))
    hits = candidate.argmax(-1) == reference.argmax(-1)
    found = {
        "top1_agreement": float(np.mean(hits)),
        "mean_cosine": float(np.mean(cosine)),
        "min_sample_cosine": float(np.min(cosine)),
        "max_abs_diff": float(np.max(np.abs(candidate - reference))),
    }
    if candidate.ndim == SEQUENCE_LOGITS:
        weights = np.ones(hits.shape) if mask is None else np.asarray(mask, np.float64)
        counted = max(float(weights.sum()), 1.0)  # an all-padding batch counts nothing
        found["top1_agreement"] = float(np.sum(hits * weights) / counted)
        found["kl_divergence"] = float(np.sum(kl_divergence(reference, candidate) * weights)
                                       / counted)
    return found


def kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(candidate)) over the last axis, per position (float64,
    from log-softmax, so large logits neither overflow nor lose the tails)."""
    def log_softmax(logits: np.ndarray) -> np.ndarray:
        shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    return np.stack([  # one sample at a time: samples x positions x vocabulary is large
        np.sum(np.exp(p) * (p - q), axis=-1)
        for p, q in ((log_softmax(r), log_softmax(c)) for r, c in zip(reference, candidate,
                                                                        strict=True))])


def token_mask(feeds: list[Feed], outputs: Outputs) -> Outputs | None:
    """Each sample's ``attention_mask`` where it lines up with the outputs' token positions
    (language-model logits), else None: 1 counts a position, 0 (padding) leaves it out."""
    if not feeds or MASK not in feeds[0]:
        return None
    masks = [feed[MASK] for feed in feeds]
    if isinstance(outputs, list):
        fits = all(m.shape == o.shape[:-1] for m, o in zip(masks, outputs, strict=True))
        return masks if fits and outputs[0].ndim == SEQUENCE_LOGITS - 1 else None
    if len({m.shape for m in masks}) != 1 or outputs.ndim != SEQUENCE_LOGITS:
        return None
    stacked = np.stack(masks)
    return stacked if stacked.shape == outputs.shape[:-1] else None


def _agreement_per_sample(candidate: list[np.ndarray], reference: list[np.ndarray],
                          masks: list[np.ndarray] | None) -> dict[str, float]:
    """``agreement`` of outputs whose shapes differ by sample (sequences of different lengths):
    each sample alone, then combined as one stacked batch would be (top-1 over every row)."""
    masks = masks or [None] * len(candidate)
    rows = [agreement(c[None], r[None], None if m is None else m[None])
            for c, r, m in zip(candidate, reference, masks, strict=True)]
    # how many argmax rows (unmasked positions) each sample has
    positions = [c[..., 0].size if m is None else max(float(np.sum(m)), 1.0)
                 for c, m in zip(candidate, masks, strict=True)]
    found = {
        "top1_agreement": float(np.average([r["top1_agreement"] for r in rows],
                                           weights=positions)),
        "mean_cosine": float(np.mean([r["mean_cosine"] for r in rows])),
        "min_sample_cosine": min(r["min_sample_cosine"] for r in rows),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
    }
    if "kl_divergence" in rows[0]:
        found["kl_divergence"] = float(np.average([r["kl_divergence"] for r in rows],
                                                  weights=positions))
    return found


def accuracy(candidate: Outputs, reference: Outputs,
             labels: np.ndarray | None) -> dict[str, float | None]:
    if labels is None:
        return {"accuracy_fp32": None, "accuracy_candidate": None, "accuracy_drop": None}
    shapes = sorted({tuple(c.shape) for c in candidate})
    if len(shapes) > 1 or candidate[0].size != candidate[0].shape[-1]:
        raise RecipeError(
            f"the dataset has labels, so accuracy needs one score vector per sample, but the "
            f"model's first output has shape {' or '.join(str(list(s)) for s in shapes[:3])}."
        )
    candidate, reference = np.stack(list(candidate)), np.stack(list(reference))
    fp32 = float(np.mean(reference.reshape(len(labels), -1).argmax(-1) == labels))
    cand = float(np.mean(candidate.reshape(len(labels), -1).argmax(-1) == labels))
    return {"accuracy_fp32": fp32, "accuracy_candidate": cand, "accuracy_drop": fp32 - cand}


def speedup(latency: dict[str, Any]) -> float:
    return latency["reference"]["p50"] / max(latency["candidate"]["p50"], 1e-9)


def write_samples(path: Path, feeds: list[Feed], expected: list[dict[str, np.ndarray]],
                  tolerances: dict[str, Any]) -> dict[str, Any]:
    """Save inputs and expected outputs, axis 0 indexing the sample; returns the report entry.

    A value whose shape differs between samples (a sequence of another length) is kept as one
    array per sample, and the entry lists their keys in sample order.
    """
    arrays: dict[str, np.ndarray] = {}
    keys: dict[str, dict[str, str | list[str]]] = {"inputs": {}, "outputs": {}}
    for group, samples in (("input", feeds), ("output", expected)):
        for name in samples[0]:
            values = [sample[name] for sample in samples]
            if len({value.shape for value in values}) == 1:
                key: str | list[str] = f"{group}:{name}"
                arrays[key] = np.stack(values)
            else:
                key = [f"{group}:{name}|{i}" for i in range(len(values))]
                arrays |= dict(zip(key, values, strict=True))
            keys[f"{group}s"][name] = key
    np.savez(path, **arrays)
    layout = "axis 0 indexes the sample; each sample is one run's feed and outputs"
    if any(isinstance(key, list) for group in keys.values() for key in group.values()):
        layout += "; a list of keys holds one array per sample, for values whose shape varies"
    return {"file": path.name, "count": len(feeds), **keys, "layout": layout, **tolerances}


def tolerances(expected: list[dict[str, np.ndarray]],
               other_ep: list[dict[str, np.ndarray]] | None,
               fp32_gap: float | None) -> dict[str, Any]:
    """atol/rtol for a device's self-test against ``expected`` (float outputs only).

    atol is twice the largest difference seen between the EP that ran and onnxruntime's CPU
    EP on the same samples (``other_ep``), at least ATOL_FLOOR x the output scale; when the
    target's own EP could not run here, the candidate's distance from FP32 (``fp32_gap``)
    bounds how far a device's kernels may land, so atol covers it too.
    """
    floats = [name for name, value in expected[0].items() if np.issubdtype(value.dtype,
                                                                            np.floating)]
    scale = max((float(np.max(np.abs(s[n]))) for s in expected for n in floats), default=0.0)
    spread = 0.0
    if other_ep is not None:
        spread = max((float(np.max(np.abs(s[n].astype(np.float64) - o[n])))
                      for s, o in zip(expected, other_ep, strict=True) for n in floats),
                     default=0.0)
    atol = max(2.0 * spread, ATOL_FLOOR * max(scale, 1.0), fp32_gap or 0.0)
    basis = "2x the largest EP vs CPU EP difference on these samples, at least 1e-4 x scale"
    if fp32_gap is not None:
        basis += "; the target EP did not run here, so also the candidate's gap to FP32"
    return {"atol": atol, "rtol": RTOL, "observed_ep_vs_cpu_max_abs_diff": spread,
            "output_scale": scale, "tolerance_basis": basis}
