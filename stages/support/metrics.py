"""Numbers the validate stage reports: agreement, accuracy and latency of ONNX Runtime sessions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import RecipeError

if TYPE_CHECKING:
    from stages.support.datasets import Feed

# ONNX Runtime type strings of inputs whose dtype can differ from the recipe's (fp16 models)
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64}



def feed_for(session: Any, feed: Feed) -> Feed:
    """Cast float inputs to the session's own type: an fp16 candidate takes float16 feeds."""
    types = {i.name: ORT_DTYPES.get(i.type) for i in session.get_inputs()}
    return {name: a if types.get(name) is None else a.astype(types[name])
            for name, a in feed.items()}


def first_outputs(session: Any, feeds: list[Feed]) -> np.ndarray:
    """First output of every sample, stacked along a new leading axis, as float64."""
    name = session.get_outputs()[0].name
    runs = [session.run([name], feed_for(session, feed))[0] for feed in feeds]
    return np.stack(runs).astype(np.float64)


def agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    flat_c = candidate.reshape(len(candidate), -1)
    flat_r = reference.reshape(len(reference), -1)
    norms = np.linalg.norm(flat_c, axis=1) * np.linalg.norm(flat_r, axis=1)
    # two all-zero outputs agree perfectly; tiny() keeps one zero output from dividing by zero
    dots = np.einsum("ij,ij->i", flat_c, flat_r)
    cosine = np.where(norms == 0, np.all(flat_c == flat_r, axis=1), dots / np.maximum(
        norms, np.finfo(np.float64).tiny))
    return {
        "top1_agreement": float(np.mean(candidate.argmax(-1) == reference.argmax(-1))),
        "mean_cosine": float(np.mean(cosine)),
        "max_abs_diff": float(np.max(np.abs(candidate - reference))),
    }


def accuracy(candidate: np.ndarray, reference: np.ndarray,
              labels: np.ndarray | None) -> dict[str, float | None]:
    if labels is None:
        return {"accuracy_fp32": None, "accuracy_candidate": None, "accuracy_drop": None}
    if candidate[0].size != candidate.shape[-1]:
        raise RecipeError(
            f"the dataset has labels, so accuracy needs one score vector per sample, but the "
            f"model's first output has shape {list(candidate.shape[1:])}."
        )
    fp32 = float(np.mean(reference.reshape(len(labels), -1).argmax(-1) == labels))
    cand = float(np.mean(candidate.reshape(len(labels), -1).argmax(-1) == labels))
    return {"accuracy_fp32": fp32, "accuracy_candidate": cand, "accuracy_drop": fp32 - cand}


def latencies(candidate: Any, reference: Any, feed: Feed, cfg: Any) -> dict[str, Any]:
    timings = {"candidate": latency(candidate, feed, cfg),
               "reference": latency(reference, feed, cfg)}
    speedup = timings["reference"]["p50"] / max(timings["candidate"]["p50"], 1e-9)
    return timings | {"speedup": speedup, "batch": 1, "runs": cfg.latency_runs,
                      "warmup_runs": cfg.warmup_runs}


def latency(session: Any, feed: Feed, cfg: Any) -> dict[str, float]:
    """p50/p90 wall time in ms of one batch-1 run, after warmup (first runs allocate memory)."""
    feed = feed_for(session, feed)
    for _ in range(cfg.warmup_runs):
        session.run(None, feed)
    times = []
    for _ in range(max(cfg.latency_runs, 1)):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}
